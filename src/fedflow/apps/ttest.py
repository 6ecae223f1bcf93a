"""``t-test``: Welch's two-sample t-test of a numeric column between two groups.

Phase ``levels`` (only when ``groups`` is not given; request ``Empty``, reply ``Levels``): each
site sends the labels of the groups it holds (no counts); if the pooled data holds exactly two,
they are compared in their string order, otherwise the app stops with an error listing the
levels. Phase ``moments`` (request ``Groups``: the two labels, in the order compared; reply
``GroupMoments``): each site sends, for each of the two groups, its count, mean and sum of
squared deviations from its mean; the coordinator merges them exactly (Chan's formula) and
computes

    t = (mean_a − mean_b) / √(s²_a/n_a + s²_b/n_b)
    dof = (s²_a/n_a + s²_b/n_b)² / ((s²_a/n_a)²/(n_a − 1) + (s²_b/n_b)²/(n_b − 1))
    p = 2 · P(T_dof > |t|)                     (Welch–Satterthwaite degrees of freedom)

as ``scipy.stats.ttest_ind(a, b, equal_var=False)`` does on the pooled data (to 1e-8).
``mean_difference`` is mean_a − mean_b. Group labels compare as strings (see
``fedflow.apps._labels``, shared with crosstab: the number 1 and the text "1" are the same group).

What a site reveals: the labels of its groups (round 1, only without ``groups``) and the count,
mean and spread of the column in each of the two groups. min_count covers each group: a site
whose group holds between 1 and ``min_count`` − 1 records refuses; a site without records of a
group sends zeros for it. A site with fewer than ``min_count`` records never answers.

Streaming: both phases read the rows batch by batch (``Table.batches``), merging each group's
moments with Chan's update.

Secure aggregation (``secure = true``): phase ``sums`` (request ``Groups``, reply ``GroupSums``)
replaces ``moments``: per group the count and the exact Σx and Σx² (no rounding at the site);
the coordinator gets only their sum over sites and forms means and variances in exact rationals,
each rounded once. ``groups`` must be given: the ``levels`` round would show each site's labels.
The coordinator learns the pooled count, sum and sum of squares per group, no site's.

Tolerance against the twin (``--compare``): 1e-8 relative (1e-12 absolute) on every value; the
group counts are integers and agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._labels import category_labels, value_label
from fedflow.apps._merge import (
    combine_moments,
    combine_moments4,
    exact_moments,
    exact_power_sums,
    exact_to_float,
)
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
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GroupMoments",
    "GroupSums",
    "Groups",
    "Levels",
    "Moments",
    "TTest",
    "TTestParams",
    "welch_test",
]


class TTestParams(Params, frozen=True):
    """``column`` (numeric), ``group`` (any kind), ``groups``: the two values to compare."""

    column: str
    group: str
    groups: list[str | int | float] | None = None

    def __post_init__(self) -> None:
        if self.column == self.group:
            raise ValueError(f"column and group are both '{self.column}'")
        if self.groups is not None:
            labels = [value_label(g) for g in self.groups]
            if len(labels) != 2:
                raise ValueError(f"groups must name two groups, not {len(labels)}")
            if labels[0] == labels[1]:
                raise ValueError(f"groups names the group '{labels[0]}' twice")

    @property
    def labels(self) -> list[str] | None:
        """The two group labels as strings (None until known)."""
        return None if self.groups is None else [value_label(g) for g in self.groups]


def welch_test(
    a: tuple[float, float, float], b: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Return Welch's (t, dof, two-sided p value) from (count, mean, variance) of two groups.

    Raises AppError when a group has fewer than two records or both have zero variance.
    """
    from scipy import stats as sps

    (n_a, mean_a, var_a), (n_b, mean_b, var_b) = a, b
    if n_a < 2 or n_b < 2:
        raise AppError("t-test: each group needs at least two records")
    se_a, se_b = var_a / n_a, var_b / n_b
    se2 = se_a + se_b
    if se2 == 0.0:
        raise AppError("t-test: the column is constant within both groups (zero variance)")
    t = (mean_a - mean_b) / math.sqrt(se2)
    dof = se2 * se2 / (se_a * se_a / (n_a - 1) + se_b * se_b / (n_b - 1))
    return t, dof, float(2.0 * sps.t.sf(abs(t), dof))


# -- phase payloads -----------------------------------------------------------------------------
class Levels(Payload, frozen=True):
    """The group labels a site holds, sorted (phase ``levels``; no counts)."""

    levels: list[str]


class Groups(Payload, frozen=True):
    """The two group labels to compare, in the order compared (phase ``moments``)."""

    groups: tuple[str, str]


class Moments(Payload, frozen=True):
    """A site's count, mean and sum of squared deviations of the column in one group (zeros
    when the site holds no record of it)."""

    n: int
    mean: float
    m2: float


class GroupMoments(Payload, frozen=True):
    """A site's ``Moments`` of the two groups, in the order of the request (phase ``moments``)."""

    a: Moments
    b: Moments


class GroupSums(Payload, frozen=True):
    """A site's sums in the two groups (phase ``sums``, ``secure = true``): the counts and the
    exact (Σx, Σx²) of group a then group b; the coordinator needs only their sum over sites."""

    n_a: int
    n_b: int
    sums: Exact


class TTest(App[TTestParams]):
    """Welch's two-sample t-test: t, dof, p value, mean difference and per-group summaries."""

    name = "t-test"
    reference = "scipy ttest_ind"
    Params = TTestParams
    phases = {
        "levels": Phase(Empty, Levels),
        "moments": Phase(Groups, GroupMoments),
        "sums": Phase(Groups, GroupSums, summed=True),
    }
    secure = True
    streaming = True

    def resolve(self, params: TTestParams, columns: Mapping[str, str]) -> TTestParams:
        kind = columns.get(params.column)
        if kind is not None and kind not in ("int", "float"):
            raise AppError(f"app 't-test': params.column '{params.column}' is not numeric")
        return params

    def columns(self, params: TTestParams) -> dict[str, ColumnKind]:
        return {params.column: "numeric", params.group: "any"}

    # -- site -------------------------------------------------------------------------------------
    def local_levels(
        self, data: Table, params: TTestParams, request: Empty, ctx: SiteContext
    ) -> Levels:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        levels: set[str] = set()
        for batch in data.batches([params.group]):
            levels.update(np.unique(category_labels(batch[params.group])).tolist())
        return Levels(levels=sorted(levels))

    def local_moments(
        self, data: Table, params: TTestParams, request: Groups, ctx: SiteContext
    ) -> GroupMoments:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        parts: list[tuple[float, ...]] = [(0, 0.0, 0.0, 0.0, 0.0)] * 2
        for x, labels in _batches(data, params):
            for k, g in enumerate(request.groups):
                values = x[labels == g]
                if values.size:
                    mean = float(values.mean())
                    m2 = float(((values - mean) ** 2).sum())
                    parts[k] = combine_moments4(
                        parts[k],  # type: ignore[arg-type]
                        (float(values.size), mean, m2, 0.0, 0.0),
                    )
        a, b = (
            _moments(part, params.group, g, ctx.min_count)
            for part, g in zip(parts, request.groups, strict=True)
        )
        return GroupMoments(a=a, b=b)

    def local_sums(
        self, data: Table, params: TTestParams, request: Groups, ctx: SiteContext
    ) -> GroupSums:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        counts = [0, 0]
        sums = [Fraction(0)] * 4
        for x, labels in _batches(data, params):
            for k, g in enumerate(request.groups):
                values = x[labels == g]
                counts[k] += int(values.size)
                s1, s2 = exact_power_sums(values, 2)
                sums[2 * k] += s1
                sums[2 * k + 1] += s2
        for count, g in zip(counts, request.groups, strict=True):
            if count:
                check_min_count(count, ctx.min_count, f"group {params.group} = '{g}'")
        return GroupSums(n_a=counts[0], n_b=counts[1], sums=tuple(sums))

    # -- coordinator --------------------------------------------------------------------------
    def start(self, params: TTestParams, ctx: CoordinatorContext) -> Step:
        if params.labels is None:
            if ctx.secure:
                raise AppError(
                    "app 't-test': with secure = true give params.groups (the two groups to "
                    "compare); finding them would reveal each site's group labels"
                )
            return Continue("levels", Empty())
        return _moments_round(params.labels, ctx)

    def aggregate_levels(
        self, replies: Mapping[str, Levels], params: TTestParams, ctx: CoordinatorContext
    ) -> Step:
        levels = sorted({v for r in replies.values() for v in r.levels})
        if len(levels) != 2:
            shown = ", ".join(f"'{v}'" for v in levels[:20])
            more = f" and {len(levels) - 20} more" if len(levels) > 20 else ""
            raise AppError(
                f"app 't-test': column '{params.group}' has {len(levels)} "
                f"level{'' if len(levels) == 1 else 's'} "
                f"({shown}{more}); choose two with params.groups"
            )
        return _moments_round(levels, ctx)

    def aggregate_moments(
        self, replies: Mapping[str, GroupMoments], params: TTestParams, ctx: CoordinatorContext
    ) -> Done:
        groups: list[str] = ctx.state["groups"]
        ordered = list(replies.values())
        summaries = []
        for label, parts in zip(
            groups, ([r.a for r in ordered], [r.b for r in ordered]), strict=True
        ):
            n, mean, m2 = combine_moments([(float(m.n), m.mean, m.m2) for m in parts])
            _check_group(n, label, params)
            summaries.append((n, mean, m2 / (n - 1)))
        t, dof, p_value = welch_test(summaries[0], summaries[1])
        return Done(_result(groups, summaries, t, dof, p_value))

    def aggregate_sums(
        self, replies: Mapping[str, GroupSums], params: TTestParams, ctx: CoordinatorContext
    ) -> Done:
        groups: list[str] = ctx.state["groups"]
        if ctx.secure:
            if set(replies) != {SUM}:
                raise AppError("app 't-test': phase 'sums' expects only the sum over sites")
            total = replies[SUM]
        else:
            total = sum_replies(replies, GroupSums)
        if len(total.sums) != 4:
            raise AppError(f"app 't-test': the summed sums hold {len(total.sums)} values, not 4")
        summaries = []
        for k, (label, n) in enumerate(zip(groups, (total.n_a, total.n_b), strict=True)):
            _check_group(n, label, params)
            mean, m2 = exact_moments(n, list(total.sums[2 * k : 2 * k + 2]))
            summaries.append((float(n), exact_to_float(mean), exact_to_float(m2 / (n - 1))))
        t, dof, p_value = welch_test(summaries[0], summaries[1])
        return Done(_result(groups, summaries, t, dof, p_value))

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: TTestParams) -> dict[str, Any]:
        from scipy.stats import ttest_ind

        labels = pooled[params.group].map(value_label)
        groups = params.labels or sorted(labels.unique())
        samples = [
            pooled.loc[labels == g, params.column].to_numpy(dtype=np.float64) for g in groups
        ]
        test = ttest_ind(samples[0], samples[1], equal_var=False)
        summaries = [(float(s.size), float(np.mean(s)), float(np.var(s, ddof=1))) for s in samples]
        return _result(
            list(groups), summaries, float(test.statistic), float(test.df), float(test.pvalue)
        )


def _moments_round(groups: list[str], ctx: CoordinatorContext) -> Continue:
    """Ask the sites for the moments of ``groups`` (kept in the state for the aggregation); for
    their exact sums under ``secure = true``."""
    a, b = groups
    ctx.state["groups"] = [a, b]
    return Continue("sums" if ctx.secure else "moments", Groups(groups=(a, b)))


def _batches(data: Table, params: TTestParams) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (the column as float64, the group labels) batch by batch; refuse missing values."""
    for batch in data.batches([params.column, params.group]):
        x = np.asarray(batch[params.column], dtype=np.float64)
        if np.isnan(x).any():
            raise DataError(f"column '{params.column}' has missing values", column=params.column)
        yield x, category_labels(batch[params.group])


def _moments(part: tuple[float, ...], group: str, label: str, min_count: int) -> Moments:
    """Return one group's merged (n, mean, M2) at a site (zeros for none; refuse a small one)."""
    n = int(part[0])
    if n == 0:
        return Moments(n=0, mean=0.0, m2=0.0)
    check_min_count(n, min_count, f"group {group} = '{label}'")
    return Moments(n=n, mean=part[1], m2=part[2])


def _check_group(n: float, label: str, params: TTestParams) -> None:
    """Refuse a group no site holds, or one with a single record."""
    if n == 0:
        raise AppError(f"app 't-test': no site holds records with {params.group} = '{label}'")
    if n < 2:
        raise AppError(
            f"app 't-test': {params.group} = '{label}' has a single record; "
            "a t-test needs at least two per group"
        )


def _result(
    groups: list[str],
    summaries: list[tuple[float, float, float]],
    t: float,
    dof: float,
    p_value: float,
) -> dict[str, Any]:
    return {
        "t": t,
        "dof": dof,
        "p_value": p_value,
        "mean_difference": summaries[0][1] - summaries[1][1],
        "groups": {
            g: {"count": int(n), "mean": mean, "variance": var, "std": math.sqrt(var)}
            for g, (n, mean, var) in zip(groups, summaries, strict=True)
        },
    }
