"""Plug-in apps used by the tests (loaded as ``tests.plugins:Class``, also inside site processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedflow.apps import App, Continue, Done, Empty, Params, Payload, Phase, Table
from fedflow.apps.linear import Factor, LinearRegression


class FaultParams(Params, frozen=True):
    site: str = "vienna"
    round: int = 2
    mode: str = "crash"  # crash | hang | raise
    rounds: int = 3


class Count(Payload, frozen=True):
    n: int


class Faulty(App[FaultParams]):
    """Counts rows for a few rounds; one site crashes, hangs or raises in a chosen round."""

    name = "faulty"  # its own name: the sites still load it by the study's reference
    Params = FaultParams
    phases = {"count": Phase(Empty, Count)}

    def columns(self, params: FaultParams) -> dict[str, Any]:
        return {}

    def local_count(self, data: Table, params: FaultParams, request: Empty, ctx: Any) -> Count:
        if ctx.site == params.site and ctx.round == params.round:
            if params.mode == "crash":
                os._exit(17)
            if params.mode == "hang":
                time.sleep(60)
            raise ValueError("boom at the site")
        return Count(n=data.n_rows)

    def aggregate_count(self, replies: Mapping[str, Count], params: FaultParams, ctx: Any) -> Any:
        if ctx.round < params.rounds:
            return Continue("count", Empty())
        return Done({"n": sum(r.n for r in replies.values())})

    def centralized(self, pooled: Any, params: FaultParams) -> dict[str, Any]:
        return {"n": len(pooled)}


class SeedParams(Params, frozen=True):
    pass


class Seed(Payload, frozen=True):
    seed: int | None
    min_count: int


class SeedEcho(App[SeedParams]):
    """Reports the seed and min_count each site was given (the study's, through the driver)."""

    name = "seed-echo"
    Params = SeedParams
    phases = {"echo": Phase(Empty, Seed)}

    def columns(self, params: SeedParams) -> dict[str, Any]:
        return {}

    def local_echo(self, data: Table, params: SeedParams, request: Empty, ctx: Any) -> Seed:
        return Seed(seed=ctx.seed, min_count=ctx.min_count)

    def aggregate_echo(self, replies: Mapping[str, Seed], params: SeedParams, ctx: Any) -> Done:
        return Done(
            {name: {"seed": r.seed, "min_count": r.min_count} for name, r in replies.items()}
        )

    def centralized(self, pooled: Any, params: SeedParams) -> dict[str, Any]:
        return {}


class InflatedLinear(LinearRegression):
    """A subclass of a built-in that keeps the built-in's name but changes the site step: each
    site adds 1 to the residual cell of its R factor, so the residual sum of squares grows. The
    sites must run this class, not the built-in."""

    def local_factor(self, data: Table, params: Any, request: Empty, ctx: Any) -> Factor:
        reply = super().local_factor(data, params, request, ctx)
        r = np.array(reply.r, copy=True)
        r[-1, -1] += 1.0
        return Factor(r=r, n=reply.n, y_mean=reply.y_mean, y_m2=reply.y_m2)
