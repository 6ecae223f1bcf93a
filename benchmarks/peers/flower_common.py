"""What the Flower benchmarks share: telemetry off, and a Grid that counts bytes per node.

Imported first by benchmarks/peers/flower_*.py (Flower's virtual environment only).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray's workers import this folder's modules (the plan, the data split) by name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p
)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def backend_config(cpus: int) -> dict[str, Any]:
    """Ray backend settings: ``cpus`` CPUs, one per client actor, no GPU, quiet."""
    import logging

    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": logging.ERROR},
    }


class MeteredGrid:
    """A Grid that adds up the protobuf bytes of every message to and from each node, per round.

    Sizes are ``message_to_proto(msg).ByteSize()``: what the deployment engine's gRPC would
    carry for the message, without gRPC's framing. ``round`` is set by the caller."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.round = 0
        # round -> node id -> [bytes to the node, bytes from the node]
        self.bytes: dict[int, dict[int, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0])
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        from flwr.common.serde import message_to_proto

        messages = list(messages)
        for msg in messages:
            self.bytes[self.round][msg.metadata.dst_node_id][0] += message_to_proto(msg).ByteSize()
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        for msg in replies:
            self.bytes[self.round][msg.metadata.src_node_id][1] += message_to_proto(msg).ByteSize()
        return replies

    def per_site(self, rounds: Iterable[int]) -> tuple[list[int], list[int]]:
        """Return the bytes to and from each site in each of ``rounds`` (one entry per site-round)."""
        to_site, from_site = [], []
        for r in rounds:
            for sent, received in self.bytes[r].values():
                to_site.append(sent)
                from_site.append(received)
        return to_site, from_site
