"""Plug-in apps used by the tests (loaded as ``tests.plugins:Class``, also inside site processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from fedflow.apps import App, Continue, Done, Params, Table


class FaultParams(Params, frozen=True):
    site: str = "vienna"
    round: int = 2
    mode: str = "crash"  # crash | hang | raise
    rounds: int = 3


class Faulty(App[FaultParams]):
    """Counts rows for a few rounds; one site crashes, hangs or raises in a chosen round."""

    name = "tests.plugins:Faulty"
    Params = FaultParams

    def start(self, params: FaultParams, ctx: Any) -> Continue:
        return Continue({"round": 1})

    def local(
        self, data: Table, params: FaultParams, payload: dict[str, Any], ctx: Any
    ) -> dict[str, Any]:
        if ctx.site == params.site and ctx.round == params.round:
            if params.mode == "crash":
                os._exit(17)
            if params.mode == "hang":
                time.sleep(60)
            raise ValueError("boom at the site")
        return {"n": data.n_rows}

    def aggregate(self, replies: Mapping[str, Any], params: FaultParams, ctx: Any) -> Any:
        if ctx.round < params.rounds:
            return Continue({"round": ctx.round + 1})
        return Done({"n": sum(r["n"] for r in replies.values())})

    def centralized(self, pooled: Any, params: FaultParams) -> dict[str, Any]:
        return {"n": len(pooled)}
