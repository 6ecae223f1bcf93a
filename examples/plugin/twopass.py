"""A two-phase fedflow app: the variance of one column, computed in two passes over the sites.

Phase ``sums``: each site returns its row count and the sum of the column; the coordinator
forms the pooled mean. Phase ``spread``: each site returns the sum of squared deviations from
that mean; the coordinator forms the sample variance. The twin is numpy on the pooled column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedflow.apps import (
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Table,
    check_min_count,
)


class VarianceParams(Params, frozen=True):
    column: str


class Sums(Payload, frozen=True):
    n: int
    total: float


class Mean(Payload, frozen=True):
    mean: float


class Spread(Payload, frozen=True):
    m2: float


class TwoPassVariance(App[VarianceParams]):
    """Sample variance of one column, in two passes."""

    name = "two-pass-variance"
    Params = VarianceParams
    reference = "numpy var"
    phases = {"sums": Phase(Empty, Sums), "spread": Phase(Mean, Spread)}

    def columns(self, params: VarianceParams) -> dict[str, ColumnKind]:
        return {params.column: "numeric"}

    # phase 1: counts and sums
    def local_sums(
        self, data: Table, params: VarianceParams, request: Empty, ctx: SiteContext
    ) -> Sums:
        x = np.asarray(data[params.column], dtype=np.float64)
        check_min_count(len(x), ctx.min_count, "the site's rows")
        return Sums(n=len(x), total=float(x.sum()))

    def aggregate_sums(
        self, replies: Mapping[str, Sums], params: VarianceParams, ctx: CoordinatorContext
    ) -> Continue:
        n = sum(r.n for r in replies.values())
        mean = sum(r.total for r in replies.values()) / n
        ctx.state["n"] = n
        return Continue("spread", Mean(mean=mean))

    # phase 2: squared deviations from the pooled mean
    def local_spread(
        self, data: Table, params: VarianceParams, request: Mean, ctx: SiteContext
    ) -> Spread:
        x = np.asarray(data[params.column], dtype=np.float64)
        return Spread(m2=float(((x - request.mean) ** 2).sum()))

    def aggregate_spread(
        self, replies: Mapping[str, Spread], params: VarianceParams, ctx: CoordinatorContext
    ) -> Done:
        n = ctx.state["n"]
        m2 = sum(r.m2 for r in replies.values())
        return Done({"n": n, "variance": m2 / (n - 1)})

    # the centralized twin, on the pooled data
    def centralized(self, pooled: Any, params: VarianceParams) -> dict[str, Any]:
        x = pooled[params.column].to_numpy(dtype=np.float64)
        return {"n": len(x), "variance": float(np.var(x, ddof=1))}
