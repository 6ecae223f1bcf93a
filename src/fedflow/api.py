"""The Python API: ``fedflow.run(study, **overrides)`` for scripts and notebooks.

>>> import fedflow
>>> run = fedflow.run("examples/quickstart/study.toml", compare=True)
>>> run.result["coefficients"]["intercept"]
>>> run.dir, run.metrics["rounds"], run.matches
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedflow.results.run import Run
from fedflow.runtime.run import run_study
from fedflow.study import Study, load_study, study_from_dict

__all__ = ["Run", "run"]

_RUN_OPTIONS = ("out", "force", "compare", "connectors", "observer")


def run(study: str | Path | Study, **overrides: Any) -> Run:
    """Run a study given as a path or a ``Study`` and return the finished ``Run``.

    Keyword arguments ``out``, ``force``, ``compare``, ``connectors`` and ``observer`` steer the run;
    any other keyword replaces that top-level study key (``params={...}``, ``seed=1``,
    ``outdir="/tmp/runs"``). Raises the FedflowError that ended a failed run (its directory is
    still written; the exception's ``run_dir`` names it).
    """
    options = {k: overrides.pop(k) for k in _RUN_OPTIONS if k in overrides}
    if isinstance(study, Study):
        if overrides:
            data = study.model_dump(exclude={"source", "source_text"})
            data.update(overrides)
            study = study_from_dict(data, source=study.source, text=study.source_text)
    else:
        study = load_study(study, **overrides)
    return run_study(study, command=["fedflow.run", str(study.source or study.name)], **options)
