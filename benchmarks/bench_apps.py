"""Apps used only by the benchmarks (loaded as ``bench_apps:Echo`` with benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedflow.apps import App, Continue, Done, Params, Payload, Phase, Table


class EchoParams(Params, frozen=True):
    rounds: int = 200
    size: int = 8


class Vector(Payload, frozen=True):
    v: np.ndarray


class Echo(App[EchoParams]):
    """Each round every site returns a small vector (its row count repeated): pure overhead."""

    name = "echo"
    Params = EchoParams
    phases = {"echo": Phase(Vector, Vector)}

    def columns(self, params: EchoParams) -> dict[str, Any]:
        return {}

    def start(self, params: EchoParams, ctx: Any) -> Continue:
        return Continue("echo", Vector(v=np.zeros(params.size)))

    def local_echo(self, data: Table, params: EchoParams, request: Vector, ctx: Any) -> Vector:
        return Vector(v=np.full(params.size, float(data.n_rows)))

    def aggregate_echo(self, replies: Mapping[str, Vector], params: EchoParams, ctx: Any) -> Any:
        total = sum(r.v for r in replies.values())
        if ctx.round < params.rounds:
            return Continue("echo", Vector(v=np.asarray(total)))
        return Done({"rounds": ctx.round, "total": float(np.asarray(total)[0])})

    def centralized(self, pooled: Any, params: EchoParams) -> dict[str, Any]:
        return {"rounds": params.rounds}
