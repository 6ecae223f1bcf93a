"""Plug-in apps for the streaming tests: the same per-column sum, read through ``batches``
(streaming) and through whole columns (not streaming)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedflow.apps.base import (
    App,
    ColumnKind,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Table,
)


class SumParams(Params, frozen=True):
    columns: list[str]


class Sums(Payload, frozen=True):
    total: float
    rows: int


class BatchSums(App[SumParams]):
    """The sum of the columns' values, batch by batch."""

    name = "batch-sums"
    Params = SumParams
    reference = "numpy sum"
    phases = {"sums": Phase(Empty, Sums, summed=True)}
    streaming = True

    def columns(self, params: SumParams) -> dict[str, ColumnKind]:
        return dict.fromkeys(params.columns, "numeric")

    def local_sums(self, data: Table, params: SumParams, request: Empty, ctx: SiteContext) -> Sums:
        total = 0.0
        for batch in data.batches(params.columns, rows=13):
            total += float(batch.matrix(params.columns).sum())
        return Sums(total=total, rows=data.n_rows)

    def aggregate_sums(
        self, replies: Mapping[str, Sums], params: SumParams, ctx: CoordinatorContext
    ) -> Done:
        return Done({"total": sum(r.total for r in replies.values())})

    def centralized(self, pooled: Any, params: SumParams) -> dict[str, Any]:
        return {"total": float(np.sum(pooled[params.columns].to_numpy()))}


class WholeSums(BatchSums):
    """The same sum over whole columns: the site must hold them."""

    name = "whole-sums"
    streaming = False

    def local_sums(self, data: Table, params: SumParams, request: Empty, ctx: SiteContext) -> Sums:
        return Sums(total=float(data.matrix(params.columns).sum()), rows=data.n_rows)
