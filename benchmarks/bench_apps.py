"""Apps used only by the benchmarks (loaded as ``bench_apps:Echo`` with benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedflow.apps import App, Continue, Done, Params, Table


class EchoParams(Params, frozen=True):
    rounds: int = 200
    size: int = 8


class Echo(App[EchoParams]):
    """Each round every site returns a small vector (its row count repeated): pure overhead."""

    name = "bench_apps:Echo"
    Params = EchoParams

    def start(self, params: EchoParams, ctx: Any) -> Continue:
        return Continue({"v": np.zeros(params.size)})

    def local(
        self, data: Table, params: EchoParams, payload: dict[str, Any], ctx: Any
    ) -> dict[str, Any]:
        return {"v": np.full(params.size, float(data.n_rows))}

    def aggregate(self, replies: Mapping[str, Any], params: EchoParams, ctx: Any) -> Any:
        total = sum(np.asarray(r["v"]) for r in replies.values())
        if ctx.round < params.rounds:
            return Continue({"v": total})
        return Done({"rounds": ctx.round, "total": float(total[0])})

    def centralized(self, pooled: Any, params: EchoParams) -> dict[str, Any]:
        return {"rounds": params.rounds}
