"""The coordinator side: rounds, concurrency, timeouts, and the run as a whole."""

from __future__ import annotations

from fedflow.runtime.coordinator import Coordinator, Outcome
from fedflow.runtime.observer import Observer
from fedflow.runtime.run import arun_study, check_study, run_study

__all__ = [
    "Coordinator",
    "Observer",
    "Outcome",
    "arun_study",
    "check_study",
    "run_study",
]
