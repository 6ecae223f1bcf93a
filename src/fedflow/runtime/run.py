"""One run of a study: make the run directory, drive the platform, record everything.

``run_study`` is what ``fedflow run`` and ``fedflow.run()`` call. Whatever happens, the run
directory ends with a manifest whose status is ``completed``, ``failed`` (with the error) or
``interrupted`` (SIGINT or SIGTERM), the metrics gathered so far, and each site's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedflow._version import __version__
from fedflow.apps import get_app
from fedflow.apps.base import App
from fedflow.connectors import ForkServer, connector_for
from fedflow.connectors.base import Connector
from fedflow.connectors.forkserver import forkserver_wanted, site_imports
from fedflow.errors import AppError, StudyError
from fedflow.results.run import Run
from fedflow.results.rundir import RunDirectory, json_ready, utc_now, write_toml
from fedflow.results.trace import TRACE_FILE, TraceWriter
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.observer import Observer
from fedflow.study import Study

__all__ = [
    "RunInterrupted",
    "arun_study",
    "check_study",
    "resolved_study",
    "run_study",
    "study_warnings",
]


class RunInterrupted(KeyboardInterrupt):
    """A run ended by SIGINT (Ctrl-C) or SIGTERM; its manifest says ``interrupted``.

    ``signal`` is the signal's number, ``exit_code`` 128 + that number (130 or 143), ``run_dir``
    the run directory. A KeyboardInterrupt, so that ``except Exception`` never swallows it.
    """

    def __init__(self, signum: int) -> None:
        self.signal = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def check_study(
    study: Study, *, compare: bool = False, importable: Callable[[str], bool] | None = None
) -> App[Any] | None:
    """Validate what can be checked before any site starts: clients present, the app exists and
    accepts its parameters, and with ``compare`` the pooled reference can be computed here (every
    site's data on this machine, the reference libraries importable; ``importable`` decides the
    latter, default: the module can be found). Returns the app (None for a non-native platform).
    Raises StudyError or AppError."""
    if not study.clients:
        raise StudyError(
            f"{study.source or 'study'}: no [[clients]] given: a study needs at least one site"
        )
    if study.platform != "native":
        return None
    assert study.app is not None
    app = get_app(study.app)
    params = app.parse_params(study.params)
    if study.secure and type(app).secure is not True:
        raise AppError(f"app '{app.name}' cannot run with secure = true: {type(app).secure}")
    refusal = getattr(app, "secure_refusal", None)  # parameters that cannot run securely
    if study.secure and refusal is not None and (reason := refusal(params)):
        raise AppError(reason)
    if compare:
        remote = [c.name for c in study.clients if not c.is_local and study.skip_data_transfer]
        if remote:
            raise StudyError(
                f"--compare needs every site's data on this machine; the data of {', '.join(remote)} "
                "stays at the site (skip_data_transfer = true)"
            )
        from fedflow.results.pool import missing_reference_libraries

        missing = missing_reference_libraries(app, importable=importable)
        if missing:
            raise StudyError(
                f"--compare for '{app.name}' needs {', '.join(missing)}, which cannot be imported: "
                "pip install 'fedflow-studies[compare]'"
            )
    return app


def study_warnings(study: Study) -> list[str]:
    """Return what is allowed but probably not meant (one line each), e.g. a single site."""
    warnings = []
    if len(study.clients) == 1:
        warnings.append(
            f"a federation of one is no federation: the study has one site "
            f"('{study.clients[0].name}'), so the result is that site's own analysis"
        )
    return warnings


def resolved_study(study: Study) -> str:
    """Return the study as run, as TOML: overrides applied, every local path absolute, so that
    ``fedflow run RUN_DIR/study.toml`` repeats the run from any folder."""
    data = study.model_dump(exclude={"source", "source_text"})
    data["outdir"] = str(study.resolve(study.outdir))
    if study.provision_script:
        data["provision_script"] = str(study.resolve(study.provision_script))
    for client, raw in zip(study.clients, data["clients"], strict=True):
        if client.sshkey and not Path(client.sshkey).expanduser().is_absolute():
            candidate = study.resolve(client.sshkey)
            if candidate.is_file():  # else the SSH connector looks in the home folder too
                raw["sshkey"] = str(candidate)
    header = (
        f"The study as run by fedflow {__version__}: overrides applied, local paths absolute.\n"
        + (
            f"Original file: {study.source} (copied as study.original.toml)."
            if study.source_text is not None
            else "Built in Python (no study file)."
        )
    )
    return write_toml(data, header=header)


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
    trace: bool = False,
    resume: Path | None = None,
    forkserver: ForkServer | None = None,
) -> Run:
    """Run ``study`` and return the Run. Raises the run's error after writing its directory
    (the exception carries ``run_dir``). ``trace`` writes ``trace.jsonl``: every message the
    coordinator receives, decoded, in order, with its site, round and phase. ``forkserver``:
    a fork server already launched (``ForkServer.launch()``) for the local sites; the run
    owns it and stops it when it ends, used or not."""
    try:
        return await _arun_study(
            study,
            out=out,
            force=force,
            compare=compare,
            connectors=connectors,
            observer=observer,
            command=command,
            trace=trace,
            resume=resume,
            forkserver=forkserver,
        )
    finally:
        if forkserver is not None:
            await forkserver.close()


async def _arun_study(
    study: Study,
    *,
    out: Path | None,
    force: bool,
    compare: bool,
    connectors: Mapping[str, Connector] | None,
    observer: Observer | None,
    command: list[str] | None,
    trace: bool,
    resume: Path | None,
    forkserver: ForkServer | None,
) -> Run:
    observer = observer or Observer()
    forks = (
        connectors is None
        and study.platform != "featurecloud"
        and any(c.is_local for c in study.clients)
        and forkserver_wanted()
    )
    if forkserver is not None and not forks:
        await forkserver.close()  # launched before the study was read; no site is forked
        forkserver = None
    resumed = None
    if study.app == "train" and study.platform == "native":
        study, resumed = _training(study, resume)
        out, force = (resume, True) if resume is not None else (out, force)
    app = check_study(study, compare=compare)
    started = time.perf_counter()
    rd = RunDirectory.create(study.resolve(study.outdir), study.name, out=out, force=force)
    if resumed is not None:  # the local sites' own state (set aside with the attempt)
        from fedflow.training.checkpoint import restore_site_state

        restore_site_state(rd.path)
    if study.source_text is not None:
        (rd.path / "study.original.toml").write_text(study.source_text, encoding="utf-8")
    (rd.path / "study.toml").write_text(resolved_study(study), encoding="utf-8")
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
        "secure": study.secure,
        "sites": {},
        "started": utc_now(),
        "finished": None,
        "status": "running",
        "error": None,
    }
    rd.write_json("manifest.json", manifest)
    run = Run(rd.path, "running", study.app, dict(study.params), {}, rd.metrics, manifest)
    run.notes = study_warnings(study)
    coordinator: Coordinator | None = None
    checkpointer: Any = None
    signals: list[int] = []
    restore_signals = _cancel_on_signals(signals)
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
            if forks:
                forkserver = forkserver or ForkServer.launch()
                forkserver.preload = list(site_imports(study))  # torch once
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
            assert study.app is not None
            checkpointer = _checkpointer(study, rd, observer)
            coordinator = Coordinator(
                study.app,  # the sites load the app by the study's own reference
                study.params,
                conns,
                {c.name: c.data for c in study.clients},
                rd,
                setup={
                    c.name: {
                        **c.reading(),
                        "dataset": c.dataset,
                        "study": study.name,
                        "study_sha256": manifest["study"]["sha256"],
                    }
                    for c in study.clients
                },
                observer=observer,
                timeout=study.timeout,
                min_count=study.min_count,
                seed=study.seed,
                dropna=study.dropna,
                trace=TraceWriter(rd.path / TRACE_FILE) if trace else None,
                after_round=checkpointer,
                round_exchange=_round_exchange(study),
                warm=_training_imports(study, compare=compare),
                secure=study.secure,
                secure_threshold=study.secure_threshold,
            )
            if resumed is not None:
                coordinator.driver.restore(*resumed)
            outcome = await coordinator.run()
            if checkpointer is not None:
                checkpointer.close()  # the last round's checkpoint on disk, or its error
            run.params = app.params_to_dict(outcome.params)
            run.result = json_ready(outcome.done.result)
            run.notes += list(outcome.notes)
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
                manifest["artifacts"] = [Path(n).name for n in outcome.done.artifacts]
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
                        reading={c.name: c.reading() for c in study.clients},
                        seed=study.seed,
                    )
                run.comparison = comparison.to_dict()
                rd.write_json("comparison.json", run.comparison)
                manifest["comparison"] = {
                    "status": comparison.status,
                    "max_rel_diff": comparison.max_rel_diff,
                }
        run.status = manifest["status"] = "completed"
    except BaseException as exc:
        interrupted = bool(signals) or isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
        run.status = manifest["status"] = "interrupted" if interrupted else "failed"
        error: BaseException = RunInterrupted(signals[0]) if signals else exc
        manifest["error"] = {
            "type": type(error).__name__,
            "message": str(error) or type(error).__name__,
            "site": getattr(error, "site", None),
        }
        error.run_dir = rd.path  # type: ignore[attr-defined]
        if error is not exc:
            raise error from None
        raise
    finally:
        restore_signals()
        if checkpointer is not None:  # a run that fails keeps its last checkpoint too
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                checkpointer.close()
        if forkserver is not None:
            await forkserver.close()  # before the manifest: its sites are gone
        if coordinator is not None:
            manifest["sites"] = {n: s.manifest() for n, s in coordinator.sites.items()}
            manifest["rounds"] = coordinator.rounds
            if coordinator.code_sha256 is not None:
                manifest["code_sha256"] = coordinator.code_sha256
        manifest["finished"] = utc_now()
        manifest["duration_seconds"] = round(time.perf_counter() - started, 6)
        rd.write_json("manifest.json", manifest)
        rd.write_metrics()
    return run


def _training(study: Study, resume: Path | None) -> tuple[Study, Any]:
    """A training study: its plan's path and hash in the parameters; with ``resume`` (a run
    directory) the checkpoint to continue from, the interrupted attempt's files set aside."""
    from fedflow.training.checkpoint import load_checkpoint, set_aside_attempt
    from fedflow.training.study import prepare_training

    study = prepare_training(study)
    if resume is None:
        return study, None
    saved = load_checkpoint(resume)
    set_aside_attempt(resume)
    return study, saved


def _checkpointer(study: Study, rd: RunDirectory, observer: Observer) -> Any:
    """The after-round hook of a training run (checkpoint and progress line), else None."""
    if study.app != "train":
        return None
    from fedflow.training.checkpoint import BACKGROUND_BYTES, Checkpointer

    return Checkpointer(rd, observer.message, background=BACKGROUND_BYTES)


def _training_imports(study: Study, *, compare: bool = False) -> Callable[[], None] | None:
    """For a training study whose plan imports torch: import it at the coordinator, with fedflow's
    deterministic settings (2.2 s of imports), while the sites start, instead of in the first
    round after them; with ``compare`` also what the centralized training's optimiser imports
    (1.8 s more). A failure is left to the round that needs torch to report."""
    modules = site_imports(study)
    if not any(m.split(".")[0] == "torch" for m in modules):
        return None

    def warm() -> None:
        try:
            from fedflow.training.engine import deterministic, ready_to_train

            for name in modules:
                importlib.import_module(name)
            if compare:
                ready_to_train()
            else:
                deterministic()
        except Exception:  # noqa: S110 - the first round imports it again and says why
            pass

    return warm


def _round_exchange(study: Study) -> Any:
    """A training run's round: round_timeout, retries and the min_sites quorum; else None."""
    if study.app != "train":
        return None
    from fedflow.training.resilience import resilient_exchange

    return resilient_exchange


def _cancel_on_signals(received: list[int]) -> Callable[[], None]:
    """Make SIGINT and SIGTERM cancel the current task (once; the signal lands in ``received``)
    so that a run ends the same way for both: sites closed, manifest ``interrupted``. Only in the
    main thread; returns the function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    previous = {}

    def on_signal(signum: int) -> None:
        if not received and task is not None:
            received.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.getsignal(signum)
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals in this loop
            previous.pop(signum, None)

    def restore() -> None:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)

    return restore


def run_study(study: Study, **kwargs: Any) -> Run:
    """Run ``study`` synchronously (also from inside a running event loop, e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    if not in_loop:  # outside the except block: a failed run's traceback starts with its error
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
