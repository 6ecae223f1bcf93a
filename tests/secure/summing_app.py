"""A tiny summed app for the secure-aggregation tests: every kind of summable field.

Phase ``moments`` (summed): per site the row count (int), the sum of ``x`` (float), exact sums of
``x`` and ``x·y`` (Exact), per-column sums of ``x`` and ``y`` (float array) and a histogram of ``k``
(int array). Phase ``check`` (summed) runs a second round with a request depending on the first.
The result is the sums as they arrive, so a test can compare them value for value.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Exact,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
    sum_replies,
)


class SumParams(Params, frozen=True):
    bins: int = 4
    rounds: int = 2


class Moments(Payload, frozen=True):
    n: int
    total: float
    exact: Exact
    columns: np.ndarray
    histogram: np.ndarray


class Shift(Payload, frozen=True):
    shift: float


class Centred(Payload, frozen=True):
    squares: float
    n: int


def moments(data: Table, bins: int) -> Moments:
    x = np.asarray(data["x"], dtype=np.float64)
    y = np.asarray(data["y"], dtype=np.float64)
    k = np.asarray(data["k"], dtype=np.int64)
    exact = (
        sum((Fraction(float(v)) for v in x), Fraction(0)),
        sum(
            (Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y, strict=True)),
            Fraction(0),
        ),
    )
    return Moments(
        n=int(data.n_rows),
        total=float(np.sum(x)),
        exact=exact,
        columns=np.array([np.sum(x), np.sum(y)]),
        histogram=np.bincount(np.clip(k, 0, bins - 1), minlength=bins).astype(np.int64),
    )


class SummingApp(App[SumParams]):
    """Sums of every summable kind, for the secure-aggregation tests."""

    name = "summing"
    Params = SumParams
    reference = "numpy sums"
    secure: ClassVar[bool | str] = True
    phases: ClassVar[Mapping[str, Phase]] = {
        "moments": Phase(Empty, Moments, summed=True),
        "check": Phase(Shift, Centred, summed=True),
    }

    def columns(self, params: SumParams) -> dict[str, ColumnKind]:
        return {"x": "numeric", "y": "numeric", "k": "numeric"}

    def local_moments(
        self, data: Table, params: SumParams, request: Empty, ctx: SiteContext
    ) -> Moments:
        check_min_count(data.n_rows, ctx.min_count, "the site's rows")
        return moments(data, params.bins)

    def aggregate_moments(
        self, replies: Mapping[str, Moments], params: SumParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, Moments)
        ctx.state["moments"] = total
        mean = total.exact[0] / total.n
        return Continue("check", Shift(shift=float(mean)))

    def local_check(
        self, data: Table, params: SumParams, request: Shift, ctx: SiteContext
    ) -> Centred:
        x = np.asarray(data["x"], dtype=np.float64)
        return Centred(squares=float(np.sum((x - request.shift) ** 2)), n=int(data.n_rows))

    def aggregate_check(
        self, replies: Mapping[str, Centred], params: SumParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, Centred)
        m: Moments = ctx.state["moments"]
        return Done(
            {
                "n": m.n,
                "total": m.total,
                "exact": [str(v) for v in m.exact],
                "columns": m.columns.tolist(),
                "histogram": m.histogram.tolist(),
                "squares": total.squares,
                "n_check": total.n,
            }
        )

    def centralized(self, pooled: pd.DataFrame, params: SumParams) -> dict[str, Any]:
        raise NotImplementedError


def site_tables(sizes: tuple[int, ...] = (40, 25, 31), seed: int = 7) -> dict[str, Table]:
    """Site tables whose values span many magnitudes (exact sums need a wide ring)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        x = rng.normal(1e3, 300.0, n) * np.exp(rng.normal(0, 3, n))
        y = rng.standard_normal(n) / 7.0
        k = rng.integers(0, 6, n)
        out[f"site-{i + 1}"] = Table({"x": x, "y": y, "k": k})
    return out


class Unsummed(SummingApp):
    """Claims secure support, then steps to a phase that is not summed."""

    phases: ClassVar[Mapping[str, Phase]] = {
        "moments": Phase(Empty, Moments, summed=True),
        "check": Phase(Shift, Centred, summed=False),
    }


class Ragged(SummingApp):
    """The site named ``site-2`` sends a histogram one bin longer than the others."""

    def local_moments(
        self, data: Table, params: SumParams, request: Empty, ctx: SiteContext
    ) -> Moments:
        return moments(data, params.bins + (ctx.site == "site-2"))
