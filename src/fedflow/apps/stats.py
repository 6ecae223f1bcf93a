"""``stats``: count, mean, variance and standard deviation per numeric column.

Each site sends, per column, its count, mean and sum of squared deviations from its mean (the
information of a count, a sum and a sum of squares, nothing more). The coordinator merges them with
Chan's pairwise formula, which stays exact where the textbook Σx² − n·mean² loses every digit.
Variance and standard deviation are the sample ones (ddof = 1), as pandas and R report them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._merge import combine_moments
from fedflow.apps.base import (
    App,
    ColumnKind,
    CoordinatorContext,
    Done,
    Params,
    Payload,
    SiteContext,
    Table,
    check_min_count,
)
from fedflow.errors import AppError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Stats", "StatsParams"]


class StatsParams(Params):
    """``columns``: the numeric columns to describe (default: every numeric column)."""

    columns: list[str] | None = None


class Stats(App[StatsParams]):
    """Descriptive statistics per column, merged exactly across sites."""

    name = "stats"
    Params = StatsParams
    reference = "numpy"

    def resolve(self, params: StatsParams, columns: Mapping[str, str]) -> StatsParams:
        if params.columns is not None:
            if not params.columns:
                raise AppError("app 'stats': params.columns is empty")
            return params
        numeric = [c for c, kind in columns.items() if kind in ("int", "float")]
        if not numeric:
            raise AppError("app 'stats': the sites' data has no numeric column")
        return StatsParams(columns=numeric)

    def columns(self, params: StatsParams) -> dict[str, ColumnKind]:
        return {c: "numeric" for c in params.columns or []}

    def local(
        self, data: Table, params: StatsParams, payload: Payload, ctx: SiteContext
    ) -> Payload:
        out: dict[str, Any] = {}
        for column in params.columns or []:
            x = np.asarray(data[column], dtype=np.float64)
            check_min_count(len(x), ctx.min_count, f"column '{column}'")
            mean = float(x.mean())
            out[column] = {"n": len(x), "mean": mean, "m2": float(((x - mean) ** 2).sum())}
        return out

    def aggregate(
        self, replies: Mapping[str, Payload], params: StatsParams, ctx: CoordinatorContext
    ) -> Done:
        result: dict[str, Any] = {}
        for column in params.columns or []:
            n, mean, m2 = combine_moments(
                [
                    (float(r[column]["n"]), float(r[column]["mean"]), float(r[column]["m2"]))
                    for r in replies.values()
                ]
            )
            variance = m2 / (n - 1) if n > 1 else float("nan")
            result[column] = {
                "count": int(n),
                "mean": mean,
                "variance": variance,
                "std": float(np.sqrt(variance)),
            }
        return Done(result)

    def centralized(self, pooled: pd.DataFrame, params: StatsParams) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for column in params.columns or []:
            x = pooled[column].to_numpy(dtype=np.float64)
            result[column] = {
                "count": int(x.size),
                "mean": float(np.mean(x)),
                "variance": float(np.var(x, ddof=1)),
                "std": float(np.std(x, ddof=1)),
            }
        return result
