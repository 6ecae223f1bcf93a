"""One run of a study: make the run directory, drive the platform, record everything.

``run_study`` is what ``fedflow run`` and ``fedflow.run()`` call. Whatever happens, the run
directory ends with a manifest whose status is ``completed`` or ``failed`` (with the error), the
metrics gathered so far, and each site's log.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedflow._version import __version__
from fedflow.apps import get_app
from fedflow.apps.base import App
from fedflow.connectors import ForkServer, connector_for
from fedflow.connectors.base import Connector
from fedflow.errors import FedflowError, StudyError
from fedflow.results.run import Run
from fedflow.results.rundir import RunDirectory, json_ready, utc_now
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.observer import Observer
from fedflow.study import Study

__all__ = ["arun_study", "check_study", "run_study"]


def _use_forkserver() -> bool:
    """Fork local sites from one pre-imported process unless FEDFLOW_FORKSERVER=0."""
    return os.environ.get("FEDFLOW_FORKSERVER", "1") != "0"


def check_study(study: Study) -> App[Any] | None:
    """Validate what can be checked before any site starts: clients present, the app exists and
    accepts its parameters. Returns the app (None for a non-native platform)."""
    if not study.clients:
        raise StudyError(
            f"{study.source or 'study'}: no [[clients]] given: a study needs at least one site"
        )
    if study.platform != "native":
        return None
    assert study.app is not None
    app = get_app(study.app)
    app.parse_params(study.params)
    return app


def _study_manifest(study: Study) -> dict[str, Any]:
    text = study.source_text
    return {
        "name": study.name,
        "file": str(study.source) if study.source else None,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None,
    }


async def arun_study(
    study: Study,
    *,
    out: Path | None = None,
    force: bool = False,
    compare: bool = False,
    connectors: Mapping[str, Connector] | None = None,
    observer: Observer | None = None,
    command: list[str] | None = None,
) -> Run:
    """Run ``study`` and return the Run. Raises the run's error after writing its directory
    (the exception carries ``run_dir``)."""
    observer = observer or Observer()
    app = check_study(study)
    if compare and app is not None:
        remote = [c.name for c in study.clients if not c.is_local and study.skip_data_transfer]
        if remote:
            raise StudyError(
                f"--compare needs every site's data on this machine; the data of {', '.join(remote)} "
                "stays at the site (skip_data_transfer = true)"
            )
    started = time.perf_counter()
    rd = RunDirectory.create(study.resolve(study.outdir), study.name, out=out, force=force)
    if study.source_text is not None:
        (rd.path / "study.toml").write_text(study.source_text, encoding="utf-8")
    manifest: dict[str, Any] = {
        "fedflow": __version__,
        "python": platform.python_version(),
        "platform": study.platform,
        "host": platform.node(),
        "command": command if command is not None else sys.argv,
        "study": _study_manifest(study),
        "app": study.app,
        "params": dict(study.params),
        "seed": study.seed,
        "min_count": study.min_count,
        "dropna": study.dropna,
        "timeout": study.timeout,
        "sites": {},
        "started": utc_now(),
        "finished": None,
        "status": "running",
        "error": None,
    }
    rd.write_json("manifest.json", manifest)
    run = Run(rd.path, "running", study.app, dict(study.params), {}, rd.metrics, manifest)
    coordinator: Coordinator | None = None
    forkserver: ForkServer | None = None
    try:
        if study.platform == "featurecloud":
            from fedflow.featurecloud.workflow import run_featurecloud

            with rd.phase("featurecloud"):
                run.result = await run_featurecloud(study, rd, observer=observer)
            rd.write_json(
                "result.json",
                {"platform": "featurecloud", "tool": study.tool, "result": run.result},
            )
        else:
            assert app is not None
            if connectors is None and any(c.is_local for c in study.clients) and _use_forkserver():
                forkserver = ForkServer()
            conns = (
                dict(connectors)
                if connectors is not None
                else {
                    c.name: connector_for(
                        c,
                        study,
                        log_path=rd.log_path(c.name),
                        output_dir=rd.sites_dir / c.name,
                        forkserver=forkserver,
                        progress=observer.transfer,
                    )
                    for c in study.clients
                }
            )
            coordinator = Coordinator(
                app,
                study.params,
                conns,
                {c.name: c.data for c in study.clients},
                rd,
                observer=observer,
                timeout=study.timeout,
                min_count=study.min_count,
                seed=study.seed,
                dropna=study.dropna,
            )
            outcome = await coordinator.run()
            run.params = app.params_to_dict(outcome.params)
            run.result = json_ready(outcome.done.result)
            run.notes = list(outcome.notes)
            manifest["params"] = run.params
            with rd.phase("write results"):
                rd.write_json(
                    "result.json",
                    {
                        "app": app.name,
                        "params": run.params,
                        "result": run.result,
                        "notes": run.notes,
                        "rounds": outcome.rounds,
                    },
                )
                for name, content in outcome.done.artifacts.items():
                    rd.write_bytes(name, content)
            if compare:
                observer.phase("comparing with the pooled analysis")
                from fedflow.results.pool import compare_with_pooled

                with rd.phase("compare"):
                    comparison, _ = compare_with_pooled(
                        app,
                        outcome.params,
                        outcome.done.result,
                        {c.name: c.data for c in study.clients},
                        dropna=study.dropna,
                    )
                run.comparison = comparison.to_dict()
                rd.write_json("comparison.json", run.comparison)
                manifest["comparison"] = {
                    "status": comparison.status,
                    "max_rel_diff": comparison.max_rel_diff,
                }
        run.status = manifest["status"] = "completed"
    except BaseException as exc:
        run.status = manifest["status"] = "failed"
        manifest["error"] = {
            "type": type(exc).__name__,
            "message": str(exc) or type(exc).__name__,
            "site": getattr(exc, "site", None),
        }
        if isinstance(exc, (FedflowError, Exception)):
            exc.run_dir = rd.path  # type: ignore[attr-defined]
        raise
    finally:
        if forkserver is not None:
            await forkserver.close()
        if coordinator is not None:
            manifest["sites"] = {n: s.manifest() for n, s in coordinator.sites.items()}
            manifest["rounds"] = coordinator.rounds
        manifest["finished"] = utc_now()
        manifest["duration_seconds"] = round(time.perf_counter() - started, 6)
        rd.write_json("manifest.json", manifest)
        rd.write_metrics()
    return run


def run_study(study: Study, **kwargs: Any) -> Run:
    """Run ``study`` synchronously (also from inside a running event loop, e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_study(study, **kwargs))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["run"] = asyncio.run(arun_study(study, **kwargs))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="fedflow-run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["run"]  # type: ignore[no-any-return]
