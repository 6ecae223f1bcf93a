"""The client of a site's local FeatureCloud controller (default http://localhost:8000).

The controller holds the site's data and results; the web platform never sees them. This client
uploads data files for a project, finalizes the contribution, lists a project's runs and downloads
every log and result step of the most recent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from fedflow.errors import DataError, PlatformError
from fedflow.featurecloud._http import Policy, PoliteClient
from fedflow.featurecloud.ratelimit import RateLimiter

__all__ = ["DEFAULT_CONTROLLER", "ControllerClient"]

DEFAULT_CONTROLLER = "http://localhost:8000"


class ControllerClient:
    """One site's controller, reached over HTTP."""

    def __init__(
        self,
        url: str = DEFAULT_CONTROLLER,
        *,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.http = PoliteClient(
            self.url,
            what=f"the controller at {self.url}",
            transport=transport,
            limiter=limiter,
            policy=policy,
        )

    def __repr__(self) -> str:
        return f"ControllerClient({self.url!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        """True when the controller answers ``/ping/`` with 200."""
        try:
            self.http.send("GET", "/ping/")
        except PlatformError:
            return False
        return True

    def require_running(self) -> None:
        """Raise PlatformError when the controller does not answer."""
        if not self.ping():
            raise PlatformError(
                f"no FeatureCloud controller answers at {self.url}; start it first "
                "(featurecloud controller start --data-dir DIR)"
            )

    def upload(self, project_id: int, path: str | Path) -> str:
        """Upload one file for this participant; return the controller's answer text.

        Raises DataError when the file cannot be read, PlatformError when the controller refuses.
        """
        source = Path(path)
        try:
            content = source.read_bytes()
        except OSError as exc:
            raise DataError(
                f"{source}: cannot read the file to contribute ({exc.strerror})", file=str(source)
            ) from None
        params = {
            "projectId": str(int(project_id)),
            "fileName": source.name,
            "finalize": "",
            "consent": "",
        }
        response = self.http.send("POST", "/file-upload/", params=params, content=content)
        return response.text

    def finalize(self, project_id: int) -> str:
        """Finalize this participant's contribution (the run starts when every participant has)."""
        params = {
            "projectId": str(int(project_id)),
            "fileName": "",
            "finalize": "true",
            "consent": "",
        }
        response = self.http.send("POST", "/file-upload/", params=params, content=b"")
        return response.text

    def contribute(self, project_id: int, paths: list[str] | list[Path]) -> list[str]:
        """Upload every file, then finalize; return the uploaded file names."""
        names = []
        for path in paths:
            self.upload(project_id, path)
            names.append(Path(path).name)
        self.finalize(project_id)
        return names

    def runs(self, project_id: int) -> list[dict[str, Any]]:
        """Return the project's runs at this site, most recent first."""
        response = self.http.send(
            "GET", "/project-runs/", params={"projectId": str(int(project_id))}
        )
        try:
            data = response.json()
        except ValueError:
            raise PlatformError(
                f"the controller at {self.url}: /project-runs/ did not answer JSON"
            ) from None
        if not isinstance(data, list) or not all(
            isinstance(r, dict) and "runNr" in r for r in data
        ):
            raise PlatformError(
                f"the controller at {self.url}: /project-runs/ answered an unexpected shape"
            )
        return data

    def log(self, project_id: int, run: int, step: int) -> bytes:
        """Return one step's log."""
        params = {"projectId": str(int(project_id)), "run": str(run), "step": str(step)}
        return self.http.send("GET", "/logs-download/", params=params).content

    def result(self, project_id: int, run: int, step: int) -> bytes:
        """Return one step's results as zip bytes."""
        params = {"projectId": str(int(project_id)), "run": str(run), "step": str(step)}
        return self.http.send("GET", "/file-download/", params=params).content

    def download_latest(self, project_id: int, out_dir: str | Path) -> dict[str, Any]:
        """Download every log and result step of the most recent run into ``out_dir``.

        Files are named ``p<project>_r<run>_s<step>.log`` / ``.zip``. Raises PlatformError when
        the project has no run at this controller.
        """
        runs = self.runs(project_id)
        if not runs:
            raise PlatformError(f"the controller at {self.url} has no run of project {project_id}")
        latest = max(runs, key=lambda r: int(r["runNr"]))
        run = int(latest["runNr"])
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        got: dict[str, Any] = dict(
            run=run,
            status=latest.get("status"),
            startedOn=latest.get("startedOn"),
            logs=[],
            results=[],
        )
        for step in latest.get("logSteps") or []:
            target = out / f"p{int(project_id)}_r{run}_s{int(step)}.log"
            target.write_bytes(self.log(project_id, run, int(step)))
            got["logs"].append(target)
        for step in latest.get("resultSteps") or []:
            target = out / f"p{int(project_id)}_r{run}_s{int(step)}.zip"
            target.write_bytes(self.result(project_id, run, int(step)))
            got["results"].append(target)
        return got
