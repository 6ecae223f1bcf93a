"""``crosstab``: a two-way frequency table and Pearson's chi-square test of independence.

One round. Each site counts its records per (row level, column level) pair and sends the table
with its own level labels; the coordinator does not need to know the levels up front. It takes
the union of the levels (sorted as strings), sums the tables, and computes Pearson's chi-square
statistic without Yates' correction, its degrees of freedom (r − 1)(c − 1) and p value, as
``scipy.stats.chi2_contingency(table, correction=False)`` does on the pooled ``pandas.crosstab``.

One phase, ``count``: the request is ``Empty``; each site replies a ``CountTable`` (its row
levels, its column levels, and the counts, levels × levels).

Any column kind works: numbers are category labels (``fedflow.apps._labels``, shared with t-test
and kaplan-meier): integers (and floats with an integral value below 2⁵³) as their integer digits
(``3``, never ``3.0``), other floats in their shortest round-trip form (``0.5``), text as it is.
Levels sort as strings, so ``10`` comes before ``2``.

What a site reveals: its level labels and its count in every cell. The min_count rule covers
every cell: a cell count must be 0 or at least ``min_count``, otherwise the site refuses (the
message names the cell; merge rare levels before the study). Margins are sums of cells, so they
are covered too. A site with fewer than ``min_count`` records never answers.

Tolerance against the twin (``--compare``): the table, ``n`` and ``dof`` exactly (integers);
``chi2`` and ``p_value`` to 1e-8 relative (1e-12 absolute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._labels import category_labels, value_label
from fedflow.apps._merge import merge_count_tables
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
    check_min_count,
)
from fedflow.errors import AppError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CountTable", "Crosstab", "CrosstabParams", "chi_square"]


class CrosstabParams(Params, frozen=True):
    """``row`` and ``column``: the two categorical columns (any kind) to cross."""

    row: str
    column: str

    def __post_init__(self) -> None:
        if self.row == self.column:
            raise ValueError(f"row and column are both '{self.row}'")


class CountTable(Payload, frozen=True):
    """A site's count table (phase ``count``): its row and column level labels (text arrays,
    sorted) and its counts, rows × columns (int64; every non-zero cell ≥ min_count)."""

    rows: np.ndarray
    columns: np.ndarray
    counts: np.ndarray


def chi_square(table: np.ndarray) -> tuple[float, int, float]:
    """Return Pearson's (chi2, dof, p value) for a table of counts, without Yates' correction.

    A table with one row or one column has dof 0, chi2 0 and p value 1 (as scipy reports it).
    Raises AppError for an empty table.
    """
    from scipy import stats as sps

    observed = np.asarray(table, dtype=np.float64)
    total = observed.sum()
    if observed.size == 0 or total == 0:
        raise AppError("crosstab: the table is empty")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    if dof == 0:
        return 0.0, 0, 1.0
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return chi2, int(dof), float(sps.chi2.sf(chi2, dof))


class Crosstab(App[CrosstabParams]):
    """Two-way frequency table with Pearson's chi-square test of independence."""

    name = "crosstab"
    reference = "scipy chi2_contingency"
    Params = CrosstabParams
    phases = {"count": Phase(Empty, CountTable)}
    tolerances = {"table": (0.0, 0.0), "n": (0.0, 0.0), "dof": (0.0, 0.0)}

    def columns(self, params: CrosstabParams) -> dict[str, ColumnKind]:
        return {params.row: "any", params.column: "any"}

    def local_count(
        self, data: Table, params: CrosstabParams, request: Empty, ctx: SiteContext
    ) -> CountTable:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        rows = category_labels(data[params.row])
        cols = category_labels(data[params.column])
        row_levels, row_index = np.unique(rows, return_inverse=True)
        col_levels, col_index = np.unique(cols, return_inverse=True)
        counts = np.zeros((len(row_levels), len(col_levels)), dtype=np.int64)
        np.add.at(counts, (row_index, col_index), 1)
        for i, j in zip(*np.nonzero(counts), strict=True):
            check_min_count(
                int(counts[i, j]),
                ctx.min_count,
                f"cell {params.row} = '{row_levels[i]}', {params.column} = '{col_levels[j]}'",
            )
        return CountTable(rows=row_levels, columns=col_levels, counts=counts)

    def aggregate_count(
        self, replies: Mapping[str, CountTable], params: CrosstabParams, ctx: CoordinatorContext
    ) -> Done:
        rows, cols, table = merge_count_tables(
            [
                ([str(r) for r in p.rows.tolist()], [str(c) for c in p.columns.tolist()], p.counts)
                for p in replies.values()
            ]
        )
        chi2, dof, p_value = chi_square(table)
        return Done(_result(rows, cols, table, chi2, dof, p_value))

    def centralized(self, pooled: pd.DataFrame, params: CrosstabParams) -> dict[str, Any]:
        import pandas as pd
        from scipy.stats import chi2_contingency

        rows = pooled[params.row].map(value_label)
        cols = pooled[params.column].map(value_label)
        table = pd.crosstab(rows, cols)
        table = table.reindex(index=sorted(table.index), columns=sorted(table.columns))
        chi2, p_value, dof, _ = chi2_contingency(table.to_numpy(), correction=False)
        return _result(
            list(table.index),
            list(table.columns),
            table.to_numpy(),
            float(chi2),
            int(dof),
            float(p_value),
        )


def _result(
    rows: list[str], cols: list[str], table: np.ndarray, chi2: float, dof: int, p_value: float
) -> dict[str, Any]:
    return {
        "table": {r: {c: int(table[i, j]) for j, c in enumerate(cols)} for i, r in enumerate(rows)},
        "n": int(np.asarray(table).sum()),
        "chi2": chi2,
        "dof": dof,
        "p_value": p_value,
    }
