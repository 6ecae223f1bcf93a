"""Run an app over in-memory site tables, without processes or files: for tests and notebooks.

``simulate`` is the real run minus the processes: the coordinator and its round driver talk to a
real node agent per site through ``MemoryConnector``, so every message crosses the wire codec and
every site checks its columns and ``min_count`` exactly as it would on a remote machine.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedflow.apps.base import App, Done, Table
from fedflow.connectors.memory import MemoryConnector
from fedflow.node.agent import NodeAgent
from fedflow.node.data import FileFingerprint, LoadedData
from fedflow.runtime.coordinator import Coordinator

__all__ = ["Simulation", "in_memory", "simulate"]


@dataclass
class Simulation:
    """What ``simulate`` returns: the final step, the parameters used, the rounds, the notes."""

    done: Done
    params: Any
    rounds: int
    notes: list[str]
    site_outputs: dict[str, dict[str, bytes]]
    metrics: dict[str, Any]

    @property
    def result(self) -> dict[str, Any]:
        """The app's result dict."""
        return self.done.result


def in_memory(table: Table, name: str = "memory") -> LoadedData:
    """Return ``table`` as a site's loaded data (NaN in a float column counts as missing)."""
    missing = {
        column: np.isnan(table[column])
        for column in table.columns
        if table[column].dtype.kind == "f" and np.isnan(table[column]).any()
    }
    digest = hashlib.sha256(repr(table).encode()).hexdigest()
    return LoadedData(
        table,
        [FileFingerprint(name, digest, 0, table.n_rows)],
        np.zeros(table.n_rows, dtype=np.int64),
        missing,
    )


def simulate(
    app: App[Any] | str,
    params: Mapping[str, Any] | None,
    sites: Mapping[str, Table],
    *,
    seed: int | None = None,
    min_count: int = 5,
    dropna: bool = False,
    max_rounds: int = 10_000,
    secure: bool = False,
    secure_threshold: int | None = None,
) -> Simulation:
    """Run ``app`` on ``sites`` (name → Table) through the coordinator; return the outcome.
    ``secure``: aggregate every summed phase securely (as a study's ``secure = true``).

    Raises what a run raises (AppError, DataError naming the site, SiteError, …).
    """
    agents = {name: NodeAgent(name, preloaded=in_memory(t, name)) for name, t in sites.items()}
    coordinator = Coordinator(
        app,
        params,
        {name: MemoryConnector(name, handler=agent.handle) for name, agent in agents.items()},
        seed=seed,
        min_count=min_count,
        dropna=dropna,
        max_rounds=max_rounds,
        secure=secure,
        secure_threshold=secure_threshold,
    )
    outcome = _run_sync(coordinator)
    return Simulation(
        done=outcome.done,
        params=outcome.params,
        rounds=outcome.rounds,
        notes=outcome.notes,
        site_outputs={name: a.outputs for name, a in agents.items() if a.outputs},
        metrics=coordinator.metrics,
    )


def _run_sync(coordinator: Coordinator) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coordinator.run())
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # inside a notebook's loop
        return pool.submit(asyncio.run, coordinator.run()).result()
