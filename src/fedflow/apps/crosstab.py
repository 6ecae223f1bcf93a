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

With ``row_levels`` and ``column_levels`` (every category of each column, as numbers or text;
both or neither) the study fixes the grid: phase ``grid`` (request ``Grid``: the levels as labels,
sorted; reply ``GridCounts``: the site's counts on that grid) replaces ``count``, and the site
sends no label. A site holding a value the study does not list refuses, without naming the
value. Levels no record holds are left out of the result, so it is the table ``count`` gives.

Streaming: both phases count batch by batch (``Table.batches``).

Secure aggregation (``secure = true``) needs the levels: ``grid`` replies are summed, so the
coordinator learns only the pooled table (and which listed levels no site holds), not which site
holds which category or how many. Sending each site's own labels instead would reveal them, so
``secure = true`` without levels is refused.

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
    SUM,
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
    Step,
    Table,
    check_min_count,
    sum_replies,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CountTable", "Crosstab", "CrosstabParams", "Grid", "GridCounts", "chi_square"]


class CrosstabParams(Params, frozen=True):
    """``row`` and ``column``: the two categorical columns (any kind) to cross; ``row_levels``
    and ``column_levels``: every category of each (both or neither; needed with ``secure``)."""

    row: str
    column: str
    row_levels: list[str | int | float] | None = None
    column_levels: list[str | int | float] | None = None

    def __post_init__(self) -> None:
        if self.row == self.column:
            raise ValueError(f"row and column are both '{self.row}'")
        if (self.row_levels is None) != (self.column_levels is None):
            raise ValueError("give both row_levels and column_levels, or neither")
        for key, levels in (("row_levels", self.row_levels), ("column_levels", self.column_levels)):
            labels = [value_label(v) for v in levels or []]
            if levels is not None and not labels:
                raise ValueError(f"{key} is empty")
            twice = sorted({v for v in labels if labels.count(v) > 1})
            if twice:
                raise ValueError(f"{key} names the level '{twice[0]}' twice")

    @property
    def grid(self) -> tuple[list[str], list[str]] | None:
        """The given (row, column) level labels, sorted as strings (None when not given)."""
        if self.row_levels is None or self.column_levels is None:
            return None
        return (
            sorted(value_label(v) for v in self.row_levels),
            sorted(value_label(v) for v in self.column_levels),
        )


class CountTable(Payload, frozen=True):
    """A site's count table (phase ``count``): its row and column level labels (text arrays,
    sorted) and its counts, rows × columns (int64; every non-zero cell ≥ min_count)."""

    rows: np.ndarray
    columns: np.ndarray
    counts: np.ndarray


class Grid(Payload, frozen=True):
    """The study's level labels (phase ``grid``): rows and columns of the shared table."""

    rows: list[str]
    columns: list[str]


class GridCounts(Payload, frozen=True):
    """A site's counts on the shared grid (phase ``grid``), rows × columns (int64; every
    non-zero cell ≥ min_count): summed over sites, so ``secure = true`` can aggregate it."""

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
    phases = {
        "count": Phase(Empty, CountTable),
        "grid": Phase(Grid, GridCounts, summed=True),
    }
    tolerances = {"table": (0.0, 0.0), "n": (0.0, 0.0), "dof": (0.0, 0.0)}
    secure = True
    streaming = True

    def columns(self, params: CrosstabParams) -> dict[str, ColumnKind]:
        return {params.row: "any", params.column: "any"}

    def local_count(
        self, data: Table, params: CrosstabParams, request: Empty, ctx: SiteContext
    ) -> CountTable:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        rows: list[str] = []
        cols: list[str] = []
        counts = np.zeros((0, 0), dtype=np.int64)
        for batch in data.batches([params.row, params.column]):
            row_levels, row_index = np.unique(
                category_labels(batch[params.row]), return_inverse=True
            )
            col_levels, col_index = np.unique(
                category_labels(batch[params.column]), return_inverse=True
            )
            part = np.zeros((len(row_levels), len(col_levels)), dtype=np.int64)
            np.add.at(part, (row_index, col_index), 1)
            rows, cols, counts = merge_count_tables(
                [(rows, cols, counts), (row_levels.tolist(), col_levels.tolist(), part)]
            )
        _check_cells(counts, rows, cols, params, ctx.min_count)
        return CountTable(
            rows=np.array(rows, dtype=str), columns=np.array(cols, dtype=str), counts=counts
        )

    def local_grid(
        self, data: Table, params: CrosstabParams, request: Grid, ctx: SiteContext
    ) -> GridCounts:
        check_min_count(data.n_rows, ctx.min_count, "the table")
        if params.grid != (request.rows, request.columns):
            raise AppError("app 'crosstab': asked to count on levels other than the study's")
        grid_rows = np.array(request.rows, dtype=str)
        grid_cols = np.array(request.columns, dtype=str)
        counts = np.zeros((len(grid_rows), len(grid_cols)), dtype=np.int64)
        for batch in data.batches([params.row, params.column]):
            i = _grid_index(batch[params.row], grid_rows, params.row, "row_levels")
            j = _grid_index(batch[params.column], grid_cols, params.column, "column_levels")
            np.add.at(counts, (i, j), 1)
        _check_cells(counts, request.rows, request.columns, params, ctx.min_count)
        return GridCounts(counts=counts)

    def start(self, params: CrosstabParams, ctx: CoordinatorContext) -> Step:
        grid = params.grid
        if grid is not None:
            ctx.state["grid"] = grid
            return Continue("grid", Grid(rows=grid[0], columns=grid[1]))
        if ctx.secure:
            raise AppError(
                "app 'crosstab': with secure = true give params.row_levels and "
                "params.column_levels (every category of each column); each site's own labels "
                "would reveal which site holds which"
            )
        return Continue("count", Empty())

    def aggregate_grid(
        self, replies: Mapping[str, GridCounts], params: CrosstabParams, ctx: CoordinatorContext
    ) -> Done:
        rows, cols = ctx.state["grid"]
        if ctx.secure:
            if set(replies) != {SUM}:
                raise AppError("app 'crosstab': phase 'grid' expects only the sum over sites")
            total = replies[SUM].counts
        else:
            total = sum_replies(replies, GridCounts).counts
        table = np.asarray(total, dtype=np.int64)
        if table.shape != (len(rows), len(cols)):
            raise AppError(
                f"app 'crosstab': the summed table is {table.shape}, "
                f"not {len(rows)} × {len(cols)} levels"
            )
        # levels no record holds are left out, as when each site sends its own levels
        keep_rows = table.sum(axis=1) > 0
        keep_cols = table.sum(axis=0) > 0
        table = table[keep_rows][:, keep_cols]
        rows = [r for r, keep in zip(rows, keep_rows, strict=True) if keep]
        cols = [c for c, keep in zip(cols, keep_cols, strict=True) if keep]
        chi2, dof, p_value = chi_square(table)
        return Done(_result(rows, cols, table, chi2, dof, p_value))

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


def _check_cells(
    counts: np.ndarray,
    rows: list[str],
    cols: list[str],
    params: CrosstabParams,
    min_count: int,
) -> None:
    """Refuse (DataError naming the cell) when a non-empty cell holds fewer than min_count."""
    for i, j in zip(*np.nonzero(counts), strict=True):
        check_min_count(
            int(counts[i, j]),
            min_count,
            f"cell {params.row} = '{rows[i]}', {params.column} = '{cols[j]}'",
        )


def _grid_index(values: np.ndarray, levels: np.ndarray, column: str, key: str) -> np.ndarray:
    """Return each value's index among the sorted ``levels`` (DataError for a value not there;
    the message does not name the value, which would reveal it)."""
    labels = category_labels(values)
    index = np.searchsorted(levels, labels)
    index = np.minimum(index, len(levels) - 1)
    if len(labels) and not (levels[index] == labels).all():
        raise DataError(
            f"column '{column}' holds a value that params.{key} does not list; "
            "list every level of the column",
            column=column,
        )
    return index


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
