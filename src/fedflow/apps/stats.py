"""``stats``: descriptive statistics per numeric column, histograms, exact quantiles, and
covariance / correlation matrices, merged exactly across sites.

Phase ``summary`` (one round; request ``Cuts``, reply ``Summary``): each site sends, per column,
a ``ColumnSummary``: its count, mean and sum of squared deviations from its mean (the information of a count, a sum and a sum of squares, nothing more); the coordinator merges
them with Chan's pairwise formula, which stays exact where the textbook Σx² − n·mean² loses every
digit. Variance and standard deviation are the sample ones (ddof = 1), as pandas and R report
them. In the same round a site sends, when asked, its centred cross-product matrix
(``Comoments``, merged with the matrix form of Chan's update, for ``covariance`` /
``correlation``), its minimum and maximum (only with ``share_extremes = true``), its histogram
counts over given ``bin_edges``, and its answers to the first bisection cut (``CutCounts``).

Phase ``refine`` (later rounds, only when asked for; request ``Refine``: edges and candidates per
column, reply ``Refinement``: histogram counts and ``CutCounts`` per column):

* ``bins = N``: the coordinator derives numpy's N equal-width edges from the federated minimum and
  maximum (so ``bins`` needs ``share_extremes = true``) and the sites count their records per bin.
* ``quantiles``: exact, to the last bit. Each quantile is numpy's ``numpy.quantile(x, q,
  method=quantile_method)``, which every numpy method writes as x₍ᵢ₎ + g·(x₍ᵢ₊₁₎ − x₍ᵢ₎) for two
  neighbouring order statistics of the pooled data. The coordinator finds each needed order
  statistic by bisection over the ordered float64 domain (2⁶⁴ keys): every round it sends up to
  255 candidate values per order statistic, the sites answer how many of their records are at or
  below each candidate, and the sum narrows the interval 256-fold. After at most 8 such rounds
  the interval holds a single float: the order statistic itself, bit for bit. The first round
  cuts the whole float line, needs no data and travels with the summary, so a run with quantiles
  takes at most 8 rounds in all. Sites never send a value of a record.

What a site reveals, and the min_count rule (``ctx.min_count``):

* A site with fewer than ``min_count`` records never answers.
* Histogram counts: every bin, and the number of records below the first and above the last
  edge, must be 0 or at least ``min_count``; otherwise the site refuses (the run stops with a
  message naming the column and the bin: choose wider bins). Counts are never altered, so a
  histogram is exact or absent.
* Quantile counts: a site sends the count of its records at or below a candidate only when at
  least ``min_count`` of its records lie on each side; otherwise it answers "fewer than
  ``min_count`` below" (zero included) or "above" (``_merge.suppress_cut_counts``). So a site's
  ``min_count`` − 1 smallest and largest records are never pinned down, whatever candidates the
  coordinator sends. The coordinator bisects on the bounds these answers give; when they cannot
  decide a requested order statistic (quantile 0 or 1, or a site with few records beyond it) the
  run stops with an AppError naming the quantile and the column. ``share_extremes = true`` lifts
  this rule. Not protected: the difference of two exact answers tells how many records of a site
  lie between two candidates, so the coordinator learns how many records each site holds in a
  narrow range around each requested order statistic (itself a value of the pooled data,
  published in the result).
* ``min`` / ``max`` and ``bins`` reveal each site's extremes and are refused unless the study sets
  ``share_extremes = true``.

Tolerance against the twin (``--compare``): 1e-8 relative (1e-12 absolute) on every value. Counts,
histogram counts and the quantiles of methods that pick an order statistic (``lower``,
``higher``, ``nearest``, ``inverted_cdf``, ``closest_observation``) come out identical; the
fidelity cases hold them to that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps._merge import (
    KEY_RANGE,
    QUANTILE_METHODS,
    bisection_candidates,
    combine_comoments,
    combine_moments,
    cut_count_bounds,
    float_keys,
    float_to_key,
    interpolate,
    key_to_float,
    narrow,
    quantile_positions,
    suppress_cut_counts,
)
from fedflow.apps.base import (
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
    check_unique,
    numeric_columns,
)
from fedflow.errors import AppError, DataError, RemoteProtocolError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BASIC_STATISTICS",
    "STATISTICS",
    "ColumnSummary",
    "Comoments",
    "CutCounts",
    "Cuts",
    "Refine",
    "Refinement",
    "Stats",
    "StatsParams",
    "Summary",
]

BASIC_STATISTICS = ("count", "mean", "variance", "std")
COLUMN_STATISTICS = (*BASIC_STATISTICS, "sum", "sem", "min", "max")
MATRIX_STATISTICS = ("covariance", "correlation")
STATISTICS = (*COLUMN_STATISTICS, *MATRIX_STATISTICS)
"""Every name ``statistics`` accepts, in the order results list them."""

CANDIDATES_PER_ROUND = 255
"""Bisection candidates per order statistic per round: each round narrows the interval 256-fold,
so the 2⁶⁴ float64 keys take at most 8 rounds."""


class StatsParams(Params, frozen=True):
    """What to describe; see the module docstring and docs/apps/stats.md.

    ``columns``: numeric columns (default: every numeric column); ``statistics``: names from
    ``STATISTICS`` (default count, mean, variance, std); ``bins`` (equal-width, needs
    ``share_extremes``) or ``bin_edges`` (one list for every column, or a table column -> list);
    ``quantiles`` in [0, 1] with numpy's ``quantile_method`` (default ``linear``).
    """

    columns: list[str] | None = None
    statistics: list[str] = msgspec.field(default_factory=lambda: list(BASIC_STATISTICS))
    bins: int | None = None
    bin_edges: list[float] | dict[str, list[float]] | None = None
    quantiles: list[float] | None = None
    quantile_method: str = "linear"
    share_extremes: bool = False

    def __post_init__(self) -> None:
        if self.columns is not None:
            check_unique(self.columns, "columns")
        unknown = [s for s in self.statistics if s not in STATISTICS]
        if unknown:
            raise ValueError(
                f"statistics: unknown statistic '{unknown[0]}' "
                f"(choose from {', '.join(STATISTICS)})"
            )
        check_unique(self.statistics, "statistics")
        extremes = [s for s in self.statistics if s in ("min", "max")]
        if extremes and not self.share_extremes:
            raise ValueError(
                f"statistics: '{extremes[0]}' reveals one record of every site; "
                "the study must set share_extremes = true to allow it"
            )
        if self.bins is not None:
            if self.bin_edges is not None:
                raise ValueError("give either bins or bin_edges, not both")
            if self.bins < 1:
                raise ValueError("bins must be at least 1")
            if not self.share_extremes:
                raise ValueError(
                    "bins needs share_extremes = true (its edges come from the federated minimum "
                    "and maximum, which reveals every site's extremes); or give bin_edges instead"
                )
        edges = self.bin_edges
        for name, values in edges.items() if isinstance(edges, dict) else [("", edges or [])]:
            where = f"bin_edges{f'.{name}' if name else ''}"
            if edges is not None and len(values) < 2:
                raise ValueError(f"{where} needs at least two edges")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{where} must hold finite numbers")
            if any(b <= a for a, b in zip(values, values[1:], strict=False)):
                raise ValueError(f"{where} must be strictly increasing")
        if self.quantiles is not None:
            if not self.quantiles:
                raise ValueError("quantiles is empty")
            if not all(0.0 <= q <= 1.0 for q in self.quantiles):
                raise ValueError("quantiles must lie between 0 and 1")
            if len({float(q) for q in self.quantiles}) != len(self.quantiles):
                raise ValueError("quantiles names a quantile twice")
        if self.quantile_method not in QUANTILE_METHODS:
            raise ValueError(
                f"quantile_method: unknown method '{self.quantile_method}' "
                f"(numpy's methods: {', '.join(QUANTILE_METHODS)})"
            )
        if not self.statistics and not self.wants_histogram and self.quantiles is None:
            raise ValueError("nothing to compute: statistics is empty")

    @property
    def wants_histogram(self) -> bool:
        """Whether a histogram is asked for (``bins`` or ``bin_edges``)."""
        return self.bins is not None or self.bin_edges is not None

    def edges_for(self, column: str) -> list[float] | None:
        """Return the given bin edges of ``column`` (None when it has none or ``bins`` is used)."""
        if isinstance(self.bin_edges, dict):
            return self.bin_edges.get(column)
        return self.bin_edges

    @property
    def needs_extremes(self) -> bool:
        """Whether sites send their minimum and maximum in round 1."""
        return self.share_extremes and (
            "min" in self.statistics
            or "max" in self.statistics
            or self.bins is not None
            or self.quantiles is not None
        )

    @property
    def matrices(self) -> list[str]:
        """The matrix statistics asked for (``covariance``, ``correlation``)."""
        return [s for s in MATRIX_STATISTICS if s in self.statistics]


def quantile_key(q: float) -> str:
    """Return the result key of quantile ``q`` (``0.5`` -> ``"0.5"``)."""
    return repr(float(q))


# -- phase payloads -----------------------------------------------------------------------------
class Cuts(Payload, frozen=True, omit_defaults=True):
    """Request of phase ``summary``: the first bisection candidates (float keys, uint64) per
    column, cutting the whole float line; empty without quantiles."""

    candidates: dict[str, np.ndarray] = {}


class Refine(Payload, frozen=True, omit_defaults=True):
    """Request of phase ``refine``: histogram edges per column (``bins``) and the next bisection
    candidates per column (either may be empty)."""

    edges: dict[str, np.ndarray] = {}
    candidates: dict[str, np.ndarray] = {}


class ColumnSummary(Payload, frozen=True, omit_defaults=True):
    """A site's count, mean and sum of squared deviations of one column; its minimum and maximum
    (``share_extremes`` only) and its histogram over the given ``bin_edges`` (when asked):
    [below the first edge, counts per bin…, above the last edge]."""

    n: int
    mean: float
    m2: float
    min: float | None = None
    max: float | None = None
    histogram: np.ndarray | None = None


class Comoments(Payload, frozen=True):
    """A site's count, mean vector and centred cross-product matrix of the described columns."""

    n: int
    mean: np.ndarray
    c: np.ndarray


class CutCounts(Payload, frozen=True):
    """A site's answers to one column's candidates: its count of records at or below each
    (coded by ``_merge.suppress_cut_counts``) and the min_count rule it applied."""

    at_or_below: np.ndarray
    min_count: int


class Summary(Payload, frozen=True, omit_defaults=True):
    """Reply of phase ``summary``: per column a ``ColumnSummary``, the ``Comoments`` (matrices
    only) and the ``CutCounts`` per column asked."""

    columns: dict[str, ColumnSummary]
    comoments: Comoments | None = None
    cuts: dict[str, CutCounts] = {}


class Refinement(Payload, frozen=True, omit_defaults=True):
    """Reply of phase ``refine``: histogram counts per column asked (as in ``ColumnSummary``)
    and the ``CutCounts`` per column asked."""

    histograms: dict[str, np.ndarray] = {}
    cuts: dict[str, CutCounts] = {}


# -- the coordinator's state --------------------------------------------------------------------
@dataclass
class _Column:
    """One column merged over the sites."""

    n: int
    mean: float
    m2: float
    min: float | None = None
    max: float | None = None
    histogram: dict[str, Any] | None = None


@dataclass
class _Run:
    """The coordinator's state of one run (in ``CoordinatorContext.state["stats"]``)."""

    columns: dict[str, _Column] = field(default_factory=dict)
    site_n: dict[str, int] = field(default_factory=dict)
    positions: list[tuple[int, float]] = field(default_factory=list)
    intervals: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    """Per column, per needed 0-based order statistic: its interval of float keys."""
    pending_edges: dict[str, np.ndarray] = field(default_factory=dict)
    sent_edges: dict[str, np.ndarray] = field(default_factory=dict)
    sent_candidates: dict[str, list[int]] = field(default_factory=dict)
    comoments: tuple[float, np.ndarray] | None = None


class Stats(App[StatsParams]):
    """Descriptive statistics per column, histograms, quantiles and matrices, merged exactly."""

    name = "stats"
    reference = "numpy"
    Params = StatsParams
    phases = {"summary": Phase(Cuts, Summary), "refine": Phase(Refine, Refinement)}

    def resolve(self, params: StatsParams, columns: Mapping[str, str]) -> StatsParams:
        if params.columns is not None:
            if not params.columns:
                raise AppError("app 'stats': params.columns is empty")
            chosen = params.columns
        else:
            chosen = numeric_columns(columns)
            if not chosen:
                raise AppError("app 'stats': the sites' data has no numeric column")
        if isinstance(params.bin_edges, dict):
            stray = [c for c in params.bin_edges if c not in chosen]
            if stray:
                raise AppError(
                    f"app 'stats': params.bin_edges names column '{stray[0]}', "
                    "which is not among the described columns"
                )
        clash = [c for c in params.matrices if c in chosen]
        if clash:
            raise AppError(
                f"app 'stats': a column is called '{clash[0]}', which clashes with the "
                f"'{clash[0]}' matrix in the result; rename the column"
            )
        return msgspec.structs.replace(params, columns=list(chosen))

    def columns(self, params: StatsParams) -> dict[str, ColumnKind]:
        return {c: "numeric" for c in params.columns or []}

    # -- site -------------------------------------------------------------------------------------
    def local_summary(
        self, data: Table, params: StatsParams, request: Cuts, ctx: SiteContext
    ) -> Summary:
        values = _values(data, params, ctx)
        return Summary(
            columns={c: _summary(c, x, params, ctx.min_count) for c, x in values.items()},
            comoments=_comoments(values) if params.matrices else None,
            cuts=_cut_counts(values, request.candidates, params, ctx),
        )

    def local_refine(
        self, data: Table, params: StatsParams, request: Refine, ctx: SiteContext
    ) -> Refinement:
        values = _values(data, params, ctx)
        return Refinement(
            histograms={
                column: _histogram(
                    _asked(values, column),
                    np.asarray(edges, dtype=np.float64),
                    column,
                    ctx.min_count,
                )
                for column, edges in request.edges.items()
            },
            cuts=_cut_counts(values, request.candidates, params, ctx),
        )

    # -- coordinator --------------------------------------------------------------------------
    def start(self, params: StatsParams, ctx: CoordinatorContext) -> Step:
        run = ctx.state["stats"] = _Run()
        if params.quantiles is None:
            return Continue("summary", Cuts())
        # the first bisection round needs no data: it cuts the whole float line
        first = bisection_candidates(*KEY_RANGE, CANDIDATES_PER_ROUND)
        run.sent_candidates = {c: first for c in params.columns or []}
        return Continue(
            "summary",
            Cuts(candidates={c: np.array(first, dtype=np.uint64) for c in params.columns or []}),
        )

    def aggregate_summary(
        self, replies: Mapping[str, Summary], params: StatsParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["stats"]
        names = list(params.columns or [])
        columns = {
            site: _answers(site, "summaries", r.columns, names) for site, r in replies.items()
        }
        run.site_n = {site: int(c[names[0]].n) for site, c in columns.items()}
        for column in names:
            summaries = {site: c[column] for site, c in columns.items()}
            n, mean, m2 = combine_moments([(float(s.n), s.mean, s.m2) for s in summaries.values()])
            entry = run.columns[column] = _Column(n=int(n), mean=mean, m2=m2)
            if params.needs_extremes:
                entry.min = min(_given(site, s.min, "min", column) for site, s in summaries.items())
                entry.max = max(_given(site, s.max, "max", column) for site, s in summaries.items())
            given = params.edges_for(column)
            if given is not None:
                entry.histogram = _sum_histograms(
                    {
                        site: _given(site, s.histogram, "histogram", column)
                        for site, s in summaries.items()
                    },
                    list(map(float, given)),
                )
            elif params.bins is not None:
                run.pending_edges[column] = np.histogram_bin_edges(
                    np.array([entry.min, entry.max]), bins=params.bins
                )
            if params.quantiles is not None:
                if not run.positions:
                    run.positions = quantile_positions(
                        entry.n, params.quantiles, params.quantile_method
                    )
                run.intervals[column] = _initial_intervals(entry, run.positions)
        if params.matrices:
            comoments = [_given(site, r.comoments, "comoments", "") for site, r in replies.items()]
            n, _, c = combine_comoments([(float(m.n), m.mean, m.c) for m in comoments])
            run.comoments = (n, c)
        cuts = {site: r.cuts for site, r in replies.items()}
        _merge_cut_counts(cuts, params, run, strict=False)
        return self._next(params, run)

    def aggregate_refine(
        self, replies: Mapping[str, Refinement], params: StatsParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["stats"]
        asked = list(run.sent_edges)
        histograms = {s: _answers(s, "histograms", r.histograms, asked) for s, r in replies.items()}
        for column, edges in run.sent_edges.items():
            run.columns[column].histogram = _sum_histograms(
                {site: h[column] for site, h in histograms.items()}, [float(e) for e in edges]
            )
        run.sent_edges = {}
        cuts = {site: r.cuts for site, r in replies.items()}
        _merge_cut_counts(cuts, params, run, strict=True)
        return self._next(params, run)

    def _next(self, params: StatsParams, run: _Run) -> Step:
        """Return the next ``refine`` round, or the result when nothing is left to ask."""
        request = _next_round(run)
        if request is not None:
            return Continue("refine", request)
        return Done(self._result(params, run))

    def _result(self, params: StatsParams, run: _Run) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for column in params.columns or []:
            entry = run.columns[column]
            out = _column_statistics(entry, params.statistics)
            if entry.histogram is not None:
                out["histogram"] = entry.histogram
            if params.quantiles is not None:
                order = {rank: key_to_float(lo) for rank, (lo, _) in run.intervals[column].items()}
                out["quantiles"] = {}
                for q, (i, g) in zip(params.quantiles, run.positions, strict=True):
                    high = order[i + 1] if g > 0.0 else order[i]
                    out["quantiles"][quantile_key(q)] = interpolate(order[i], high, g)
            if out:
                result[column] = out
        if params.matrices:
            assert run.comoments is not None
            n, c = run.comoments
            names = list(params.columns or [])
            with np.errstate(divide="ignore", invalid="ignore"):
                covariance = c / (n - 1) if n > 1 else np.full_like(c, np.nan)
                scale = np.sqrt(np.diag(c))
                correlation = np.clip(c / scale[:, None] / scale[None, :], -1.0, 1.0)
            if "covariance" in params.statistics:
                result["covariance"] = _matrix(names, covariance)
            if "correlation" in params.statistics:
                result["correlation"] = _matrix(names, correlation)
        return result

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: StatsParams) -> dict[str, Any]:
        from scipy import stats as sps

        result: dict[str, Any] = {}
        for column in params.columns or []:
            x = pooled[column].to_numpy(dtype=np.float64)
            every = {
                "count": lambda x=x: int(x.size),
                "mean": lambda x=x: float(np.mean(x)),
                "variance": lambda x=x: float(np.var(x, ddof=1)),
                "std": lambda x=x: float(np.std(x, ddof=1)),
                "sum": lambda x=x: float(np.sum(x)),
                "sem": lambda x=x: float(sps.sem(x, ddof=1)),
                "min": lambda x=x: float(np.min(x)),
                "max": lambda x=x: float(np.max(x)),
            }
            out: dict[str, Any] = {
                s: every[s]() for s in COLUMN_STATISTICS if s in params.statistics
            }
            if params.wants_histogram:
                bins: Any = params.bins if params.bins is not None else params.edges_for(column)
                if bins is not None:
                    counts, edges = np.histogram(x, bins=bins)
                    out["histogram"] = {
                        "edges": [float(e) for e in edges],
                        "counts": [int(c) for c in counts],
                    }
            if params.quantiles is not None:
                method: Any = params.quantile_method
                values = np.quantile(x, params.quantiles, method=method)
                out["quantiles"] = {
                    quantile_key(q): float(v) for q, v in zip(params.quantiles, values, strict=True)
                }
            if out:
                result[column] = out
        names = list(params.columns or [])
        matrix = pooled[names].to_numpy(dtype=np.float64)
        if "covariance" in params.statistics:
            result["covariance"] = _matrix(
                names, np.atleast_2d(np.cov(matrix, rowvar=False, ddof=1))
            )
        if "correlation" in params.statistics:
            result["correlation"] = _matrix(names, np.atleast_2d(np.corrcoef(matrix, rowvar=False)))
        return result


# --- site helpers (numpy only) ---------------------------------------------------------------
def _values(data: Table, params: StatsParams, ctx: SiteContext) -> dict[str, np.ndarray]:
    """Return the described columns as float64 (refusing missing values and too few records)."""
    values: dict[str, np.ndarray] = {}
    for column in params.columns or []:
        x = values[column] = np.asarray(data[column], dtype=np.float64)
        if np.isnan(x).any():
            raise DataError(f"column '{column}' has missing values", column=column)
    for column, x in values.items():
        check_min_count(len(x), ctx.min_count, f"column '{column}'")
    return values


def _asked(values: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    """Return the values of a column the coordinator asks about (AppError for another one)."""
    try:
        return values[column]
    except KeyError:
        raise AppError(
            f"app 'stats': asked about column '{column}', which is not described"
        ) from None


def _summary(column: str, x: np.ndarray, params: StatsParams, min_count: int) -> ColumnSummary:
    with np.errstate(over="ignore"):  # values near ±1e308: the variance is inf, as numpy's
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
    extremes = params.needs_extremes
    edges = params.edges_for(column)
    return ColumnSummary(
        n=len(x),
        mean=mean,
        m2=m2,
        min=float(x.min()) if extremes else None,
        max=float(x.max()) if extremes else None,
        histogram=None
        if edges is None
        else _histogram(x, np.asarray(edges, dtype=np.float64), column, min_count),
    )


def _comoments(values: Mapping[str, np.ndarray]) -> Comoments:
    x = np.column_stack(list(values.values()))
    mean_vector = x.mean(axis=0)
    centred = x - mean_vector
    return Comoments(n=len(x), mean=mean_vector, c=centred.T @ centred)


def _cut_counts(
    values: Mapping[str, np.ndarray],
    candidates: Mapping[str, np.ndarray],
    params: StatsParams,
    ctx: SiteContext,
) -> dict[str, CutCounts]:
    """Return, per column asked, the (suppressed) counts of records at or below each candidate."""
    limit = 1 if params.share_extremes else ctx.min_count
    out: dict[str, CutCounts] = {}
    for column, keys_asked in candidates.items():
        x = _asked(values, column)
        keys = np.sort(float_keys(x))
        counts = np.searchsorted(keys, np.asarray(keys_asked, dtype=np.uint64), side="right")
        out[column] = CutCounts(
            at_or_below=suppress_cut_counts(counts, len(x), limit), min_count=limit
        )
    return out


def _histogram(x: np.ndarray, edges: np.ndarray, column: str, min_count: int) -> np.ndarray:
    """Return [below, bin counts…, above] as int64; refuse when a non-empty cell is too small."""
    counts, _ = np.histogram(x, bins=edges)
    below = int((x < edges[0]).sum())
    above = int((x > edges[-1]).sum())
    cells = [("below the first edge", below), ("above the last edge", above)]
    cells += [
        (f"bin [{edges[i]:g}, {edges[i + 1]:g}{']' if i == len(counts) - 1 else ')'}", int(c))
        for i, c in enumerate(counts)
    ]
    for where, count in cells:
        if count:
            check_min_count(count, min_count, f"column '{column}': histogram {where}")
    return np.concatenate([[below], counts, [above]]).astype(np.int64)


# --- coordinator helpers -----------------------------------------------------------------------
def _answers(
    site: str, what: str, answers: Mapping[str, Any], asked: list[str]
) -> Mapping[str, Any]:
    """Return a site's per-column ``answers`` after checking they cover exactly ``asked``."""
    if sorted(answers) != sorted(asked):
        raise RemoteProtocolError(
            f"its reply to app 'stats' holds {what} of columns {sorted(answers)}, "
            f"asked for {sorted(asked)}",
            site=site,
        )
    return answers


def _given(site: str, value: Any, what: str, column: str) -> Any:
    """Return a reply's optional field that this run asked for (a protocol error when absent)."""
    if value is None:
        where = f" of column '{column}'" if column else ""
        raise RemoteProtocolError(f"its reply to app 'stats' lacks the {what}{where}", site=site)
    return value


def _sum_histograms(parts: Mapping[str, np.ndarray], edges: list[float]) -> dict[str, Any]:
    """Sum the sites' [below, bins…, above] counts; return the result's ``{edges, counts}``."""
    total = np.zeros(len(edges) + 1, dtype=np.int64)
    for site, part in parts.items():
        counts = np.asarray(part, dtype=np.int64)
        if counts.shape != total.shape:
            raise RemoteProtocolError(
                f"its histogram has {counts.size} cells, not {total.size}", site=site
            )
        total += counts
    return {"edges": edges, "counts": [int(c) for c in total[1:-1]]}


def _merge_cut_counts(
    replies: Mapping[str, Mapping[str, CutCounts]],
    params: StatsParams,
    run: _Run,
    *,
    strict: bool,
) -> None:
    """Narrow every order statistic's interval by the sites' answers to the sent candidates.

    ``strict``: an interval the answers could not narrow means the sites withheld every count
    that would decide it (raise AppError). Not in the first round, whose candidates cut the whole
    float line and may all miss an interval already narrowed by the federated range.
    """
    sent, run.sent_candidates = run.sent_candidates, {}
    answers = {site: _answers(site, "cut counts", r, list(sent)) for site, r in replies.items()}
    for column, candidates in sent.items():
        low = np.zeros(len(candidates), dtype=np.int64)
        high = np.zeros(len(candidates), dtype=np.int64)
        for site, r in answers.items():
            cut = r[column]
            if np.shape(cut.at_or_below) != low.shape:
                raise RemoteProtocolError(
                    f"it answered {np.size(cut.at_or_below)} counts for {len(candidates)} "
                    f"candidates of column '{column}'",
                    site=site,
                )
            site_low, site_high = cut_count_bounds(
                cut.at_or_below, run.site_n[site], int(cut.min_count)
            )
            low += site_low
            high += site_high
        intervals = run.intervals[column]
        for rank, (lo, hi) in intervals.items():
            intervals[rank] = narrow(lo, hi, rank, candidates, low.tolist(), high.tolist())
            if strict and lo < hi and intervals[rank] == (lo, hi):
                which = _quantiles_of(rank, params, run.positions)
                raise AppError(
                    f"app 'stats': quantile {which} of column '{column}' lies where a site "
                    "holds fewer than min_count records beyond it, so it cannot be found "
                    "exactly; set share_extremes = true or ask for a less extreme quantile"
                )


def _initial_intervals(
    entry: _Column, positions: list[tuple[int, float]]
) -> dict[int, tuple[int, int]]:
    lo, hi = KEY_RANGE
    if entry.min is not None and entry.max is not None:
        lo, hi = float_to_key(entry.min), float_to_key(entry.max)
    ranks: set[int] = set()
    for i, g in positions:
        ranks.add(i)
        if g > 0.0:
            ranks.add(i + 1)
    return {rank: (lo, hi) for rank in sorted(ranks)}


def _quantiles_of(rank: int, params: StatsParams, positions: list[tuple[int, float]]) -> str:
    """Return the requested quantiles that need order statistic ``rank`` (for messages)."""
    found = [
        quantile_key(q)
        for q, (i, g) in zip(params.quantiles or [], positions, strict=True)
        if rank == i or (g > 0.0 and rank == i + 1)
    ]
    return " / ".join(found)


def _next_round(run: _Run) -> Refine | None:
    """Return the next ``refine`` request (edges still to count, candidates of every interval
    holding more than one key), or None when every histogram and order statistic is known."""
    edges, run.pending_edges = run.pending_edges, {}
    candidates: dict[str, list[int]] = {}
    for column, intervals in run.intervals.items():
        keys: set[int] = set()
        for lo, hi in intervals.values():
            keys.update(bisection_candidates(lo, hi, CANDIDATES_PER_ROUND))
        if keys:
            candidates[column] = sorted(keys)
    if not edges and not candidates:
        return None
    run.sent_edges = edges
    run.sent_candidates = candidates
    return Refine(
        edges=edges,
        candidates={c: np.array(k, dtype=np.uint64) for c, k in candidates.items()},
    )


def _column_statistics(entry: _Column, wanted: list[str]) -> dict[str, Any]:
    n, mean, m2 = entry.n, entry.mean, entry.m2
    variance = m2 / (n - 1) if n > 1 else float("nan")
    std = float(np.sqrt(variance))
    every: dict[str, Any] = {
        "count": int(n),
        "mean": mean,
        "variance": variance,
        "std": std,
        "sum": mean * n,
        "sem": std / math.sqrt(n),
        "min": entry.min,
        "max": entry.max,
    }
    return {s: every[s] for s in COLUMN_STATISTICS if s in wanted}


def _matrix(names: list[str], values: np.ndarray) -> dict[str, dict[str, float]]:
    return {a: {b: float(values[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
