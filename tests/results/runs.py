"""Real run directories for the report and compare tests: the examples run in this process
(sites as in-memory node agents, so a run takes milliseconds) or through the real CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fedflow
from fedflow.connectors.memory import MemoryConnector
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"


def memory_run(example: str, out: Path, **overrides: Any) -> fedflow.Run:
    """Run ``examples/<example>/study.toml`` into ``out`` with in-memory sites; return the Run.
    ``overrides`` are fedflow.run's keywords (``compare=True``, ``params={...}``, ``seed=1``)."""
    study = fedflow.load_study(EXAMPLES / example / "study.toml")
    connectors = {c.name: MemoryConnector(c.name) for c in study.clients}
    params = overrides.pop("params", None)
    if params is not None:
        overrides["params"] = {**study.params, **params}
    return fedflow.run(study, connectors=connectors, out=out, **overrides)
