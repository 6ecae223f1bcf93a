"""Injected faults: a site that dies or hangs in a round is restarted and asked again
(``retries``), a late one is cut off (``round_timeout``) and the round aggregates those who
answered when they reach ``min_sites``; below the quorum the run fails naming the round."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from fedflow.apps.base import Table  # noqa: E402
from fedflow.connectors.memory import MemoryConnector  # noqa: E402
from fedflow.errors import AppError  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.runtime.coordinator import Coordinator  # noqa: E402
from fedflow.runtime.simulate import in_memory  # noqa: E402
from fedflow.training.resilience import resilient_exchange  # noqa: E402
from fedflow.wire import Task  # noqa: E402

from .helpers import MLP_PLAN, blobs, mlp_params, write_plan  # noqa: E402


class FlakySite(MemoryConnector):
    """An in-process site whose agent can be restarted; ``faults`` maps (round, start number)
    to "die" (the agent exits) or "hang" (it never answers)."""

    def __init__(self, name: str, table: Table, faults: dict[tuple[int, int], str]) -> None:
        super().__init__(name)
        self.table, self.faults, self.starts = table, faults, 0

    async def start(self) -> None:
        self.starts += 1
        agent = NodeAgent(self.site, preloaded=in_memory(self.table, self.site))
        start = self.starts

        def handle(message: Any) -> Any:
            if isinstance(message, Task):
                fault = self.faults.get((message.round, start))
                if fault == "die":
                    raise RuntimeError("killed")
                if fault == "hang":
                    return None
            return agent.handle(message)

        self.handler = handle
        self._replies = asyncio.Queue()
        self.started, self.closed = True, False


def _run(plan: Path, faults: dict[str, dict[tuple[int, int], str]], **extra: Any) -> Any:
    sites = blobs([50, 40, 60])
    connectors = {n: FlakySite(n, t, faults.get(n, {})) for n, t in sites.items()}
    coordinator = Coordinator(
        "train",
        mlp_params(plan, **extra),
        connectors,
        seed=4,
        round_exchange=resilient_exchange,
    )
    outcome = asyncio.run(coordinator.run())
    return outcome, coordinator, connectors


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path, MLP_PLAN)


def test_a_site_that_dies_is_restarted_and_the_run_ends_as_without_the_fault(plan: Path) -> None:
    clean, _, _ = _run(plan, {})
    outcome, coordinator, connectors = _run(plan, {"site1": {(2, 1): "die"}}, retries=1)
    assert connectors["site1"].starts == 2
    events = coordinator.metrics["round_events"]
    assert [(e["round"], e["site"], e["event"]) for e in events] == [
        (2, "site1", "failed"),
        (2, "site1", "restarted"),
    ]
    assert (
        outcome.done.artifacts["model-last.safetensors"]
        == clean.done.artifacts["model-last.safetensors"]
    )


def test_a_hanging_site_is_cut_off_and_the_round_aggregates_the_others(plan: Path) -> None:
    clean, _, _ = _run(plan, {})
    outcome, coordinator, connectors = _run(
        plan, {"site2": {(2, 1): "hang"}}, round_timeout=3.0, min_sites=2
    )
    history = outcome.done.result["history"]
    assert history[2]["answered"] == ["site0", "site1"]
    assert set(history[2]["sites"]) == {"site0", "site1"}
    assert any("aggregated without site2" in note for note in outcome.notes)
    events = [(e["round"], e["site"], e["event"]) for e in coordinator.metrics["round_events"]]
    assert events[:2] == [(2, "site2", "timed out"), (2, "site2", "left out")]
    assert (3, "site2", "restarted") in events  # back for the next round
    assert history[3]["answered"] == ["site0", "site1", "site2"]
    assert (
        outcome.done.artifacts["model-last.safetensors"]
        != clean.done.artifacts["model-last.safetensors"]
    )


def test_below_the_quorum_the_run_fails_naming_the_round(plan: Path) -> None:
    faults = {"site1": {(1, 1): "die"}, "site2": {(1, 1): "die"}}
    with pytest.raises(
        AppError, match=r"round 1: 1 of the 3 sampled sites answered .*min_sites = 2"
    ):
        _run(plan, faults, min_sites=2)


def test_when_no_site_answers_the_run_fails_with_a_sites_own_reason(plan: Path) -> None:
    from fedflow.errors import SiteError

    faults = {n: {(1, 1): "die", (1, 2): "die"} for n in ("site0", "site1", "site2")}
    with pytest.raises(SiteError, match="node agent exited") as caught:
        _run(plan, faults, retries=1)
    assert caught.value.site == "site0"
