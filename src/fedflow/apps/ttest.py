"""``t-test``: Welch's two-sample t-test of a numeric column between two groups.

Round 1 (only when ``groups`` is not given): each site sends the labels of the groups it holds
(no counts); if the pooled data holds exactly two, they are compared in their string order,
otherwise the app stops with an error listing the levels. Then each site sends, for each of the
two groups, its count, mean and sum of squared deviations from its mean; the coordinator merges
them exactly (Chan's formula) and computes

    t = (mean_a − mean_b) / √(s²_a/n_a + s²_b/n_b)
    dof = (s²_a/n_a + s²_b/n_b)² / ((s²_a/n_a)²/(n_a − 1) + (s²_b/n_b)²/(n_b − 1))
    p = 2 · P(T_dof > |t|)                     (Welch–Satterthwaite degrees of freedom)

as ``scipy.stats.ttest_ind(a, b, equal_var=False)`` does on the pooled data (to 1e-8).
``mean_difference`` is mean_a − mean_b. Group labels compare as strings (see
``fedflow.apps.crosstab.category_labels``: the number 1 and the text "1" are the same group).

What a site reveals: the labels of its groups (round 1, only without ``groups``) and the count,
mean and spread of the column in each of the two groups. min_count covers each group: a site
whose group holds between 1 and ``min_count`` − 1 records refuses; a site without records of a
group sends zeros for it. A site with fewer than ``min_count`` records never answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._labels import value_label
from fedflow.apps._merge import combine_moments
from fedflow.apps.base import (
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Params,
    Payload,
    SiteContext,
    Step,
    Table,
    check_min_count,
)
from fedflow.apps.crosstab import category_labels, label_of
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TTest", "TTestParams", "welch_test"]


class TTestParams(Params, frozen=True):
    """``column`` (numeric), ``group`` (any kind), ``groups``: the two values to compare."""

    column: str
    group: str
    groups: list[str | int | float] | None = None

    def __post_init__(self) -> None:
        if self.column == self.group:
            raise ValueError(f"column and group are both '{self.column}'")
        if self.groups is not None:
            labels = [label_of(g) for g in self.groups]
            if len(labels) != 2:
                raise ValueError(f"groups must name two groups, not {len(labels)}")
            if labels[0] == labels[1]:
                raise ValueError(f"groups names the group '{labels[0]}' twice")

    @property
    def labels(self) -> list[str] | None:
        """The two group labels as strings (None until known)."""
        return None if self.groups is None else [label_of(g) for g in self.groups]


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


class TTest(App[TTestParams]):
    """Welch's two-sample t-test: t, dof, p value, mean difference and per-group summaries."""

    name = "t-test"
    reference = "scipy ttest_ind"
    Params = TTestParams

    def resolve(self, params: TTestParams, columns: Mapping[str, str]) -> TTestParams:
        kind = columns.get(params.column)
        if kind is not None and kind not in ("int", "float"):
            raise AppError(f"app 't-test': params.column '{params.column}' is not numeric")
        return params

    def columns(self, params: TTestParams) -> dict[str, ColumnKind]:
        return {params.column: "numeric", params.group: "any"}

    # -- site -------------------------------------------------------------------------------------
    def local(
        self, data: Table, params: TTestParams, payload: Payload, ctx: SiteContext
    ) -> Payload:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        labels = category_labels(data[params.group])
        if payload.get("phase") == "levels":
            return {"levels": np.unique(labels)}
        x = np.asarray(data[params.column], dtype=np.float64)
        if np.isnan(x).any():
            raise DataError(f"column '{params.column}' has missing values", column=params.column)
        out: dict[str, Any] = {}
        for i, label in enumerate(payload.get("groups") or params.labels or []):
            values = x[labels == label]
            if len(values) == 0:
                out[f"group_{i}"] = {"n": 0, "mean": 0.0, "m2": 0.0}
                continue
            check_min_count(len(values), ctx.min_count, f"group {params.group} = '{label}'")
            mean = float(values.mean())
            out[f"group_{i}"] = {
                "n": len(values),
                "mean": mean,
                "m2": float(((values - mean) ** 2).sum()),
            }
        return out

    # -- coordinator --------------------------------------------------------------------------
    def start(self, params: TTestParams, ctx: CoordinatorContext) -> Step:
        if params.labels is None:
            return Continue({"phase": "levels"})
        ctx.state["groups"] = params.labels
        return Continue({"phase": "moments", "groups": params.labels})

    def aggregate(
        self, replies: Mapping[str, Payload], params: TTestParams, ctx: CoordinatorContext
    ) -> Step:
        if "groups" not in ctx.state:
            levels = sorted({str(v) for r in replies.values() for v in r["levels"]})
            if len(levels) != 2:
                shown = ", ".join(f"'{v}'" for v in levels[:20])
                more = f" and {len(levels) - 20} more" if len(levels) > 20 else ""
                raise AppError(
                    f"app 't-test': column '{params.group}' has {len(levels)} "
                    f"level{'' if len(levels) == 1 else 's'} "
                    f"({shown}{more}); choose two with params.groups"
                )
            ctx.state["groups"] = levels
            return Continue({"phase": "moments", "groups": levels})
        groups: list[str] = ctx.state["groups"]
        summaries = []
        for i, label in enumerate(groups):
            n, mean, m2 = combine_moments(
                [
                    (
                        float(r[f"group_{i}"]["n"]),
                        float(r[f"group_{i}"]["mean"]),
                        float(r[f"group_{i}"]["m2"]),
                    )
                    for r in replies.values()
                ]
            )
            if n == 0:
                raise AppError(
                    f"app 't-test': no site holds records with {params.group} = '{label}'"
                )
            if n < 2:
                raise AppError(
                    f"app 't-test': {params.group} = '{label}' has a single record; "
                    "a t-test needs at least two per group"
                )
            summaries.append((n, mean, m2 / (n - 1)))
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
