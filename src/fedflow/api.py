"""The Python API: ``fedflow.run(study, **overrides)`` for scripts and notebooks.

>>> import fedflow
>>> run = fedflow.run("examples/quickstart/study.toml", compare=True)
>>> run.result["coefficients"]["intercept"]
>>> run.dir, run.metrics["rounds"], run.matches
"""

from __future__ import annotations

import difflib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from fedflow.errors import StudyError
from fedflow.results.run import Run
from fedflow.runtime.run import run_study, study_warnings
from fedflow.study import Study, load_study, study_from_dict

__all__ = ["Run", "run"]

_RUN_OPTIONS = ("out", "force", "compare", "connectors", "observer", "trace")


def run(study: str | Path | Study, *, progress: bool | None = None, **overrides: Any) -> Run:
    """Run a study given as a path or a ``Study`` and return the finished ``Run``.

    Keyword arguments ``out``, ``force``, ``compare``, ``trace`` (write ``trace.jsonl``: every
    message the coordinator receives), ``connectors`` and ``observer`` steer the run;
    any other keyword replaces that top-level study key (``params={...}``, ``seed=1``,
    ``outdir="/tmp/runs"``) and is recorded in the manifest's ``command``. ``progress`` shows the
    sites and rounds on stderr (default: only when stderr is a terminal). A study with one site
    warns (``UserWarning``). Raises the FedflowError that ended a failed run (its directory is
    still written; the exception's ``run_dir`` names it), or ``RunInterrupted`` (a
    KeyboardInterrupt) on Ctrl-C or SIGTERM.
    """
    options = {k: overrides.pop(k) for k in _RUN_OPTIONS if k in overrides}
    _check_keywords(overrides)
    if isinstance(study, Study):
        if overrides:
            data = study.model_dump(exclude={"source", "source_text"})
            data.update(overrides)
            study = study_from_dict(data, source=study.source, text=study.source_text)
    else:
        from fedflow.cli import study_file

        study = load_study(study_file(Path(study)), **overrides)
    command = ["fedflow.run", str(study.source or study.name)]
    command += [f"{key}={_shown(value)}" for key, value in overrides.items()]
    command += [
        f"{key}={_shown(options[key])}"
        for key in ("out", "force", "compare", "trace")
        if key in options
    ]
    for note in study_warnings(study):
        warnings.warn(note, UserWarning, stacklevel=2)
    if progress is None:
        progress = sys.stderr.isatty()
    observer = options.pop("observer", None)
    if observer is None and progress:
        from rich.console import Console

        from fedflow.cli import progress_observer

        observer = progress_observer(Console(stderr=True), quiet=False)
        try:
            return run_study(study, command=command, observer=observer, **options)
        finally:
            observer.stop()
    return run_study(study, command=command, observer=observer, **options)


def _shown(value: Any) -> str:
    """Return ``value`` as JSON when it is JSON (``seed=1``, ``params={"target": "y"}``)."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _check_keywords(overrides: dict[str, Any]) -> None:
    """Refuse a keyword that is neither a run option nor a study key, suggesting the closest."""
    keys = [k for k, f in Study.model_fields.items() if not f.exclude]
    for key in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, [*_RUN_OPTIONS, "progress", *keys], n=1)
            hint = f" (did you mean {close[0]}=…?)" if close else ""
            raise StudyError(
                f"fedflow.run(): unknown keyword {key}={_shown(overrides[key])}{hint}; run options "
                f"are {', '.join(_RUN_OPTIONS)}, progress; other keywords replace study keys"
            )
