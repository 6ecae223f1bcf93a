"""The fake local controller of one site, and site operations that start one per site in tests.

It keeps uploads under ``<data_dir>/uploads`` and writes each run's log and result zip under
``<data_dir>/workflows`` as the real controller does; it learns the project's state from the web
API's fake-only endpoints, authenticated by the ``controllerKey`` in ``site_info.json``.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from fedflow.featurecloud.fake.server import FakeServer, HTTPFail, Request, Response, json_response
from fedflow.featurecloud.fake.state import SITE_KEY_HEADER

__all__ = ["FakeController", "FakeSiteOps", "parse_numbers"]


_SPLIT = re.compile(r"[\s,;]+")


def parse_numbers(text: str, name: str = "file") -> list[float]:
    """Return the numbers in ``text`` (separated by commas, semicolons or whitespace).

    A first line without any number is a header and skipped. Raises ValueError naming the file,
    line and token when something else is not a number.
    """
    numbers: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = [t for t in _SPLIT.split(line.strip()) if t]
        values = []
        for token in tokens:
            try:
                value = float(token)
            except ValueError:
                value = None
            values.append((token, value))
        if number == 1 and values and all(v is None for _, v in values):
            continue
        for token, value in values:
            if value is None or not math.isfinite(value):
                raise ValueError(f"{name}, line {number}: {token!r} is not a number")
            numbers.append(value)
    return numbers


class FakeController(FakeServer):
    """A fake local controller for one site. ``data_dir`` must hold the site's ``site_info.json``."""

    name = "fake FeatureCloud controller"

    def __init__(
        self,
        web_url: str,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        web_transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(host, port)
        self.web_url = web_url.rstrip("/")
        self.data_dir = Path(data_dir)
        self._web = httpx.Client(base_url=self.web_url, transport=web_transport, timeout=30)
        self._lock = threading.Lock()
        r = self.route
        r("GET", r"/ping/", lambda req, m: json_response({"status": "running"}))
        r("POST", r"/file-upload/", self._upload)
        r("GET", r"/project-runs/", self._runs)
        r("GET", r"/logs-download/", self._log)
        r("GET", r"/file-download/", self._result)

    def stop(self) -> None:
        super().stop()
        self._web.close()

    def _key(self) -> str:
        info = self.data_dir / "site_info.json"
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HTTPFail(
                400, f"no site_info.json in {self.data_dir}: save GET /api/site/ there first"
            ) from None
        except ValueError:
            raise HTTPFail(400, f"{info} is not JSON") from None
        if not isinstance(data, dict) or "controllerKey" not in data:
            raise HTTPFail(400, f"{info} is not a FeatureCloud site info")
        return str(data["controllerKey"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._web.request(
                method, path, json=body, headers={SITE_KEY_HEADER: self._key()}
            )
        except httpx.HTTPError as exc:
            raise HTTPFail(
                502,
                f"the controller cannot reach FeatureCloud at {self.web_url} ({type(exc).__name__})",
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise HTTPFail(response.status_code, str(detail))
        return response.json()

    @staticmethod
    def _pid(req: Request) -> int:
        raw = req.query.get("projectId")
        if raw is None or not raw.isdigit():
            raise HTTPFail(400, "query parameter projectId must be a project number")
        return int(raw)

    def _pending(self, pid: int) -> Path:
        return self.data_dir / "uploads" / f"Project_{pid}" / "pending"

    def _upload(self, req: Request, m: re.Match[str]) -> Response:
        expected = {"projectId", "fileName", "finalize", "consent"}
        if set(req.query) != expected:
            raise HTTPFail(
                400, f"file-upload needs exactly the query parameters {', '.join(sorted(expected))}"
            )
        pid = self._pid(req)
        finalize = req.query["finalize"]
        if finalize not in ("", "true"):
            raise HTTPFail(400, f"finalize must be '' or 'true' (got {finalize!r})")
        with self._lock:
            state = self._call("GET", f"/api/fake/controller/project/{pid}/")
            if state["status"] != "prepare":
                raise HTTPFail(
                    400,
                    f"project {pid} is '{state['status']}'; data can be contributed only in 'prepare'",
                )
            if state["finalized"]:
                raise HTTPFail(
                    400, f"this site has already finalized its contribution to project {pid}"
                )
            pending = self._pending(pid)
            if finalize == "true":
                if req.query["fileName"] or req.body:
                    raise HTTPFail(
                        400, "a finalize request has an empty fileName and an empty body"
                    )
                return self._finalize(pid, state, pending)
            name = req.query["fileName"]
            if not name or name != Path(name).name or name in (".", ".."):
                raise HTTPFail(400, f"fileName must be a plain file name (got {name!r})")
            pending.mkdir(parents=True, exist_ok=True)
            (pending / name).write_bytes(req.body)
            return json_response({"fileName": name, "size": len(req.body)})

    def _finalize(self, pid: int, state: dict[str, Any], pending: Path) -> Response:
        files = sorted(pending.iterdir()) if pending.is_dir() else []
        if not files:
            raise HTTPFail(
                400, f"nothing uploaded for project {pid}; upload files before finalizing"
            )
        summary: dict[str, Any]
        if state["app"] == "mean-app":
            try:
                numbers = [
                    x for f in files for x in parse_numbers(f.read_text(encoding="utf-8"), f.name)
                ]
                summary = {"sum": math.fsum(numbers), "count": len(numbers)}
            except (ValueError, UnicodeDecodeError) as exc:
                summary = {"error": str(exc)}
        else:
            summary = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
        answer = self._call(
            "POST",
            f"/api/fake/controller/finalize/{pid}/",
            {"files": [f.name for f in files], "summary": summary},
        )
        done = pending.parent / f"contribution_{time.time_ns()}"
        pending.rename(done)
        return json_response(answer)

    def _run_dir(self, pid: int, run: int) -> Path:
        return self.data_dir / "workflows" / f"Project_{pid}" / f"Run_{run}"

    def _runs(self, req: Request, m: re.Match[str]) -> Response:
        if set(req.query) != {"projectId"}:
            raise HTTPFail(400, "project-runs needs exactly the query parameter projectId")
        pid = self._pid(req)
        with self._lock:
            runs = self._call("GET", f"/api/fake/controller/runs/{pid}/")
            out = []
            for run in runs:
                nr = int(run["runNr"])
                folder = self._run_dir(pid, nr)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"logs_pr{pid}_run{nr}_step1.txt").write_text(
                    "\n".join(run["log"]) + "\n", encoding="utf-8"
                )
                zip_path = folder / f"results_pr{pid}_run{nr}_step1.zip"
                if run["result"] is not None and not zip_path.exists():
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w") as archive:
                        archive.writestr("result.json", json.dumps(run["result"], indent=2) + "\n")
                        archive.writestr("mean.txt", f"{run['result']['mean']!r}\n")
                    zip_path.write_bytes(buffer.getvalue())
                out.append(
                    {
                        "runNr": nr,
                        "startedOn": run["startedOn"],
                        "status": run["status"],
                        "logSteps": [1],
                        "resultSteps": [1] if zip_path.exists() else [],
                    }
                )
            return json_response(out)

    def _step_file(self, req: Request, kind: str) -> Path:
        if set(req.query) != {"projectId", "run", "step"}:
            raise HTTPFail(400, "needs exactly the query parameters projectId, run, step")
        pid = self._pid(req)
        run, step = req.query["run"], req.query["step"]
        if not run.isdigit() or not step.isdigit():
            raise HTTPFail(400, "run and step must be numbers")
        name = (
            f"logs_pr{pid}_run{run}_step{step}.txt"
            if kind == "log"
            else f"results_pr{pid}_run{run}_step{step}.zip"
        )
        path = self._run_dir(pid, int(run)) / name
        if not path.is_file():
            raise HTTPFail(404, f"no {kind} for project {pid}, run {run}, step {step}")
        return path

    def _log(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, self._step_file(req, "log").read_bytes(), "text/plain; charset=utf-8")

    def _result(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, self._step_file(req, "result").read_bytes(), "application/zip")


class FakeSiteOps:
    """Site operations for tests: each site gets its own fake controller on a loopback port."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.controllers: dict[str, FakeController] = {}
        self.stopped: list[str] = []

    def start(self, site: Any, data_dir: Path) -> str:
        """Start a fake controller for ``site`` on ``data_dir``; return its URL."""
        controller = FakeController(self.web_url, data_dir)
        self.controllers[site.name] = controller
        return controller.start()

    def stop(self, site: Any) -> None:
        """Stop the site's fake controller."""
        controller = self.controllers.pop(site.name, None)
        if controller is not None:
            controller.stop()
            self.stopped.append(site.name)
