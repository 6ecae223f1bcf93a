"""Run an app as ``simulate`` does and keep what crossed the wire: every task's phase and every
site's reply payload, as the coordinator received them (decoded wire maps, before the app's
reply type is applied). For tests that check what a site reveals."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedflow.apps.base import Table
from fedflow.connectors.memory import MemoryConnector
from fedflow.node.agent import NodeAgent
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.driver import Outcome
from fedflow.runtime.simulate import in_memory
from fedflow.wire import Message, Reply, Task

__all__ = ["Exchange", "Spied", "run_spied"]


@dataclass(frozen=True)
class Exchange:
    """One site's answer to one task: the site, the round, the phase, the reply's payload."""

    site: str
    round: int
    phase: str
    task: dict[str, Any]
    reply: dict[str, Any]


@dataclass
class Spied:
    """The outcome of a spied run, its exchanges in order, and what each site wrote at home."""

    outcome: Outcome
    exchanges: list[Exchange] = field(default_factory=list)
    site_outputs: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def result(self) -> dict[str, Any]:
        return self.outcome.done.result

    def replies(self, phase: str) -> list[dict[str, Any]]:
        """Every reply payload to ``phase``, in the order sent."""
        return [e.reply for e in self.exchanges if e.phase == phase]


def run_spied(
    app: str, params: Mapping[str, Any], sites: Mapping[str, Table], *, min_count: int = 5
) -> Spied:
    """Run ``app`` over ``sites`` through the real coordinator and node agents; record replies."""
    agents = {name: NodeAgent(name, preloaded=in_memory(t, name)) for name, t in sites.items()}
    exchanges: list[Exchange] = []

    def spying(site: str, agent: NodeAgent) -> Any:
        def handle(message: Message) -> Message | None:
            reply = agent.handle(message)
            if isinstance(message, Task) and isinstance(reply, Reply):
                exchanges.append(
                    Exchange(site, message.round, message.phase, message.payload, reply.payload)
                )
            return reply

        return handle

    connectors = {
        name: MemoryConnector(name, handler=spying(name, agent)) for name, agent in agents.items()
    }
    coordinator = Coordinator(app, params, connectors, min_count=min_count)
    outcome = asyncio.run(coordinator.run())
    outputs = {name: a.outputs for name, a in agents.items() if a.outputs}
    return Spied(outcome, exchanges, outputs)
