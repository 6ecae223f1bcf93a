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

``skew`` and ``kurtosis`` are the bias-corrected sample skewness G1 and excess kurtosis G2 (as
pandas' ``skew()`` / ``kurt()`` and ``scipy.stats.skew`` / ``kurtosis`` with ``bias=False``); sites
then also send the sums of cubed and fourth-power deviations (``m3``, ``m4``), merged with Pébay's
update.

Streaming: every site step reads the rows only through ``Table.batches`` and reduces batch by
batch (moments merged with Pébay's update, histogram cells and counts at or below candidates
added, comoments merged with Chan's), so a site's memory does not grow with its rows; each
``refine`` round streams the rows again.

Secure aggregation (``secure = true``): phases ``sums`` and ``counts`` replace ``summary`` and
``refine``; every field of their replies is a sum over records, so the coordinator needs, and
gets, only the sum over sites. ``sums``: the count, and per column the exact Σx, Σx² (Σx³, Σx⁴
with skew / kurtosis) and per pair of columns Σxᵢxⱼ (matrices), computed without rounding
(``_merge.exact_power_sums``); the coordinator forms mean, M2 … and the covariance in exact
rationals and rounds each result once, so it is at least as accurate as the plaintext run. Order
statistics (quantiles, and ``min`` / ``max`` with ``share_extremes``) by the same bisection, on the
sums over sites of each site's lowest and highest possible count at or below each candidate (the
bounds its ``min_count`` rule lets the coordinator infer); ``bins`` ask for their histogram once the
bisection has found the minimum and maximum. Histogram cells: the same per-site refusal, summed.
What the coordinator learns: the pooled sums and counts, never one site's (with two sites, each
site can subtract its own from the sum).

Tolerance against the twin (``--compare``): 1e-8 relative (1e-12 absolute) on every value. Counts,
histogram counts and the quantiles of methods that pick an order statistic (``lower``,
``higher``, ``nearest``, ``inverted_cdf``, ``closest_observation``) come out identical; the
fidelity cases hold them to that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps._merge import (
    KEY_RANGE,
    QUANTILE_METHODS,
    bisection_candidates,
    combine_comoments,
    combine_moments,
    combine_moments4,
    cut_count_bounds,
    exact_moments,
    exact_power_sums,
    exact_product_sum,
    exact_to_float,
    float_keys,
    float_to_key,
    interpolate,
    key_to_float,
    narrow,
    quantile_positions,
    suppress_cut_counts,
)
from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Exact,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
    check_unique,
    numeric_columns,
    sum_replies,
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
    "Counts",
    "Cuts",
    "Refine",
    "Refinement",
    "Stats",
    "StatsParams",
    "Sums",
    "Summary",
]

BASIC_STATISTICS = ("count", "mean", "variance", "std")
COLUMN_STATISTICS = (*BASIC_STATISTICS, "sum", "sem", "min", "max", "skew", "kurtosis")
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
    ``statistics`` may include ``skew`` and ``kurtosis`` (bias-corrected, as pandas').
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
    def powers(self) -> int:
        """The highest moment needed: 4 with ``skew`` or ``kurtosis``, else 2."""
        return 4 if "skew" in self.statistics or "kurtosis" in self.statistics else 2

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
    m3: float | None = None
    m4: float | None = None
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


class Sums(Payload, frozen=True):
    """Reply of phase ``sums`` (``secure = true``; request ``Cuts``), every field a sum over
    records, so the coordinator needs only the sum over sites.

    ``n``: records; ``powers``: per column (in the order of ``params.columns``) the exact
    Σx, Σx² (and Σx³, Σx⁴ for skew / kurtosis); ``cross``: the exact Σxᵢxⱼ of every pair of
    columns i < j (matrices only); ``histograms``: [below, counts per bin…, above] of every column
    with given ``bin_edges``, one after the other; ``cut_low`` / ``cut_high``: per asked column
    (in sorted order) and candidate, the least and most records at or below it that the site's
    answer allows (equal when exact; see ``_merge.cut_count_bounds``)."""

    n: int
    powers: Exact
    cross: Exact
    histograms: np.ndarray
    cut_low: np.ndarray
    cut_high: np.ndarray


class Counts(Payload, frozen=True):
    """Reply of phase ``counts`` (``secure = true``; request ``Refine``): histogram cells of
    the asked columns (sorted, one after the other) and the cut-count bounds as in ``Sums``."""

    histograms: np.ndarray
    cut_low: np.ndarray
    cut_high: np.ndarray


# -- the coordinator's state --------------------------------------------------------------------
@dataclass
class _Column:
    """One column merged over the sites."""

    n: int
    mean: float
    m2: float
    m3: float = math.nan
    m4: float = math.nan
    min: float | None = None
    max: float | None = None
    histogram: dict[str, Any] | None = None
    exact: tuple[Fraction, ...] | None = None
    """Under ``secure = true``: the exact (mean, M2[, M3, M4]) from the summed power sums."""


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
    secure: bool = False
    extremes: bool = False
    """Whether ``min`` / ``max`` are found as order statistics (``secure = true``)."""
    exact_matrix: tuple[int, list[list[Fraction]]] | None = None
    """Under ``secure = true``: n and the exact centred cross-product matrix."""


class Stats(App[StatsParams]):
    """Descriptive statistics per column, histograms, quantiles and matrices, merged exactly."""

    name = "stats"
    reference = "numpy"
    Params = StatsParams
    phases = {
        "summary": Phase(Cuts, Summary),
        "refine": Phase(Refine, Refinement),
        "sums": Phase(Cuts, Sums, summed=True),
        "counts": Phase(Refine, Counts, summed=True),
    }
    secure = True
    streaming = True

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
        scan = _scan(data, params, ctx, _given_edges(params), request.candidates, exact=False)
        limit = _cut_limit(params, ctx)
        return Summary(
            columns={
                c: ColumnSummary(
                    n=scan.n,
                    mean=acc.moments[1],
                    m2=acc.moments[2],
                    m3=acc.moments[3] if params.powers > 2 else None,
                    m4=acc.moments[4] if params.powers > 2 else None,
                    min=acc.min if params.needs_extremes else None,
                    max=acc.max if params.needs_extremes else None,
                    histogram=acc.histogram,
                )
                for c, acc in scan.columns.items()
            },
            comoments=Comoments(n=scan.n, mean=scan.comoments[1], c=scan.comoments[2])
            if scan.comoments is not None
            else None,
            cuts={
                c: CutCounts(
                    at_or_below=suppress_cut_counts(counts, scan.n, limit), min_count=limit
                )
                for c, counts in scan.cuts.items()
            },
        )

    def local_refine(
        self, data: Table, params: StatsParams, request: Refine, ctx: SiteContext
    ) -> Refinement:
        edges = {c: np.asarray(e, dtype=np.float64) for c, e in request.edges.items()}
        scan = _scan(data, params, ctx, edges, request.candidates, exact=False, moments=False)
        limit = _cut_limit(params, ctx)
        return Refinement(
            histograms={c: scan.columns[c].histogram for c in edges},  # type: ignore[misc]
            cuts={
                c: CutCounts(
                    at_or_below=suppress_cut_counts(counts, scan.n, limit), min_count=limit
                )
                for c, counts in scan.cuts.items()
            },
        )

    def local_sums(self, data: Table, params: StatsParams, request: Cuts, ctx: SiteContext) -> Sums:
        edges = _given_edges(params)
        scan = _scan(data, params, ctx, edges, request.candidates, exact=True, moments=False)
        low, high = _cut_bounds(scan, sorted(request.candidates), _cut_limit(params, ctx))
        return Sums(
            n=scan.n,
            powers=tuple(s for acc in scan.columns.values() for s in acc.powers),
            cross=tuple(scan.cross),
            histograms=_cells([scan.columns[c].histogram for c in edges]),
            cut_low=low,
            cut_high=high,
        )

    def local_counts(
        self, data: Table, params: StatsParams, request: Refine, ctx: SiteContext
    ) -> Counts:
        edges = {c: np.asarray(request.edges[c], dtype=np.float64) for c in sorted(request.edges)}
        scan = _scan(data, params, ctx, edges, request.candidates, exact=False, moments=False)
        low, high = _cut_bounds(scan, sorted(request.candidates), _cut_limit(params, ctx))
        return Counts(
            histograms=_cells([scan.columns[c].histogram for c in edges]),
            cut_low=low,
            cut_high=high,
        )

    # -- coordinator --------------------------------------------------------------------------
    def start(self, params: StatsParams, ctx: CoordinatorContext) -> Step:
        run = ctx.state["stats"] = _Run(secure=ctx.secure)
        # min / max under secure aggregation: order statistics 0 and n − 1, found by bisection
        run.extremes = ctx.secure and params.share_extremes and _wants_range(params)
        phase = "sums" if ctx.secure else "summary"
        if params.quantiles is None and not run.extremes:
            return Continue(phase, Cuts())
        # the first bisection round needs no data: it cuts the whole float line
        first = bisection_candidates(*KEY_RANGE, CANDIDATES_PER_ROUND)
        run.sent_candidates = {c: first for c in params.columns or []}
        return Continue(
            phase,
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
            if params.powers > 2:
                merged: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
                for site, s in summaries.items():
                    part = (
                        float(s.n),
                        s.mean,
                        s.m2,
                        _given(site, s.m3, "third moment", column),
                        _given(site, s.m4, "fourth moment", column),
                    )
                    merged = combine_moments4(merged, part)  # type: ignore[arg-type]
                n, mean, m2, m3, m4 = merged
            else:
                n, mean, m2 = combine_moments(
                    [(float(s.n), s.mean, s.m2) for s in summaries.values()]
                )
                m3 = m4 = math.nan
            entry = run.columns[column] = _Column(n=int(n), mean=mean, m2=m2, m3=m3, m4=m4)
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

    def aggregate_sums(
        self, replies: Mapping[str, Sums], params: StatsParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["stats"]
        total = _total(replies, Sums, ctx)
        names = list(params.columns or [])
        k = params.powers
        _check_length("power sums", len(total.powers), k * len(names))
        n = int(total.n)
        if n < 1:
            raise AppError("app 'stats': the sites hold no records")
        given = [c for c in names if params.edges_for(c) is not None]
        cells = _split(total.histograms, [len(params.edges_for(c) or []) + 1 for c in given])
        for j, column in enumerate(names):
            exact = exact_moments(n, list(total.powers[j * k : (j + 1) * k]))
            entry = run.columns[column] = _Column(
                n=n, mean=exact_to_float(exact[0]), m2=exact_to_float(exact[1]), exact=exact
            )
            if column in given:
                edges = [float(e) for e in params.edges_for(column) or []]
                entry.histogram = _sum_histograms({SUM: cells[given.index(column)]}, edges)
            ranks: set[int] = {0, n - 1} if run.extremes else set()
            if params.quantiles is not None:
                if not run.positions:
                    run.positions = quantile_positions(n, params.quantiles, params.quantile_method)
                ranks |= set(_initial_intervals(entry, run.positions))
            if ranks:
                run.intervals[column] = {rank: KEY_RANGE for rank in sorted(ranks)}
        if params.matrices:
            p = len(names)
            _check_length("cross-products", len(total.cross), p * (p - 1) // 2)
            sums = [total.powers[j * k] for j in range(p)]
            squares = [total.powers[j * k + 1] for j in range(p)]
            pairs = iter(total.cross)
            c = [[Fraction(0)] * p for _ in range(p)]
            for i in range(p):
                c[i][i] = squares[i] - sums[i] * sums[i] / n
                for j in range(i + 1, p):
                    c[i][j] = c[j][i] = next(pairs) - sums[i] * sums[j] / n
            run.exact_matrix = (n, c)
        run.site_n = {}
        self._merge_summed_cuts(total, params, run, strict=False)
        return self._next(params, run)

    def aggregate_counts(
        self, replies: Mapping[str, Counts], params: StatsParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["stats"]
        total = _total(replies, Counts, ctx)
        asked = sorted(run.sent_edges)
        cells = _split(total.histograms, [len(run.sent_edges[c]) + 1 for c in asked])
        for column, counts in zip(asked, cells, strict=True):
            run.columns[column].histogram = _sum_histograms(
                {SUM: counts}, [float(e) for e in run.sent_edges[column]]
            )
        run.sent_edges = {}
        self._merge_summed_cuts(total, params, run, strict=True)
        return self._next(params, run)

    def _merge_summed_cuts(
        self, total: Sums | Counts, params: StatsParams, run: _Run, *, strict: bool
    ) -> None:
        """Narrow the intervals by summed cut bounds; then, under ``secure`` with ``bins``, ask
        for the histogram once the federated minimum and maximum are known."""
        sent, run.sent_candidates = run.sent_candidates, {}
        asked = sorted(sent)
        sizes = [len(sent[c]) for c in asked]
        lows = _split(total.cut_low, sizes)
        highs = _split(total.cut_high, sizes)
        bounds = {c: (low, high) for c, low, high in zip(asked, lows, highs, strict=True)}
        _narrow_all(bounds, sent, params, run, strict=strict)
        if run.extremes and params.bins is not None:
            for column, entry in run.columns.items():
                if entry.histogram is None and column not in run.pending_edges:
                    low, high = _extremes(run, column)
                    if low is not None and high is not None:
                        run.pending_edges[column] = np.histogram_bin_edges(
                            np.array([low, high]), bins=params.bins
                        )

    def _next(self, params: StatsParams, run: _Run) -> Step:
        """Return the next ``refine`` round, or the result when nothing is left to ask."""
        request = _next_round(run)
        if request is not None:
            return Continue("counts" if run.secure else "refine", request)
        return Done(self._result(params, run))

    def _result(self, params: StatsParams, run: _Run) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for column in params.columns or []:
            entry = run.columns[column]
            if run.extremes:
                entry.min, entry.max = _extremes(run, column)
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
            names = list(params.columns or [])
            if run.exact_matrix is not None:
                covariance, correlation = _exact_matrices(*run.exact_matrix)
            else:
                assert run.comoments is not None
                n, c = run.comoments
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
                "skew": lambda x=x: float(sps.skew(x, bias=False)),
                "kurtosis": lambda x=x: float(sps.kurtosis(x, fisher=True, bias=False)),
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


def _wants_range(params: StatsParams) -> bool:
    """Whether the result needs the federated minimum and maximum (``min``, ``max``, ``bins``)."""
    return "min" in params.statistics or "max" in params.statistics or params.bins is not None


# --- site helpers (numpy only) ---------------------------------------------------------------
@dataclass
class _Acc:
    """One column's running reduction over a site's batches."""

    moments: tuple[float, ...] = (0, 0.0, 0.0, 0.0, 0.0)  # (n, mean, M2, M3, M4)
    min: float = math.inf
    max: float = -math.inf
    histogram: np.ndarray | None = None
    powers: list[Fraction] = field(default_factory=list)


@dataclass
class _Scan:
    """A site's pass over its batches: per column ``_Acc``, the (unsuppressed) counts at or
    below each candidate, the comoments and the exact cross-products."""

    n: int
    columns: dict[str, _Acc]
    cuts: dict[str, np.ndarray]
    comoments: tuple[float, np.ndarray, np.ndarray] | None
    cross: list[Fraction]


def _given_edges(params: StatsParams) -> dict[str, np.ndarray]:
    """Return the given ``bin_edges`` per described column that has them (params order)."""
    out = {}
    for column in params.columns or []:
        edges = params.edges_for(column)
        if edges is not None:
            out[column] = np.asarray(edges, dtype=np.float64)
    return out


def _cut_limit(params: StatsParams, ctx: SiteContext) -> int:
    return 1 if params.share_extremes else ctx.min_count


def _scan(
    data: Table,
    params: StatsParams,
    ctx: SiteContext,
    edges: Mapping[str, np.ndarray],
    candidates: Mapping[str, np.ndarray],
    *,
    exact: bool,
    moments: bool = True,
) -> _Scan:
    """Reduce the described columns batch by batch (``data.batches``): moments merged with
    Pébay's update, extremes, histogram cells, counts at or below candidates, comoments, and
    (``exact``) the exact power sums and cross-products. Refuses missing values, too few
    records, an undescribed column asked about, and histogram cells under ``min_count``."""
    names = list(params.columns or [])
    for column in [*edges, *candidates]:
        if column not in names:
            raise AppError(f"app 'stats': asked about column '{column}', which is not described")
    for column in names:
        check_min_count(data.n_rows, ctx.min_count, f"column '{column}'")
    accs = {c: _Acc() for c in names}
    keys_asked = {c: np.asarray(k, dtype=np.uint64) for c, k in candidates.items()}
    cuts = {c: np.zeros(len(k), dtype=np.int64) for c, k in keys_asked.items()}
    for column, e in edges.items():
        accs[column].histogram = np.zeros(len(e) + 1, dtype=np.int64)
    matrices = bool(params.matrices) and moments
    comoments: tuple[float, np.ndarray, np.ndarray] | None = None
    if matrices:
        comoments = (0.0, np.zeros(len(names)), np.zeros((len(names), len(names))))
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    cross = [Fraction(0)] * (len(pairs) if exact and params.matrices else 0)
    if exact:
        for acc in accs.values():
            acc.powers = [Fraction(0)] * params.powers
    n = 0
    for batch in data.batches(names):
        values = {c: np.asarray(batch[c], dtype=np.float64) for c in names}
        for column, x in values.items():
            if np.isnan(x).any():
                raise DataError(f"column '{column}' has missing values", column=column)
        size = batch.n_rows
        if size == 0:
            continue
        n += size
        for column, x in values.items():
            acc = accs[column]
            if moments:
                acc.moments = combine_moments4(
                    acc.moments,  # type: ignore[arg-type]
                    _batch_moments(x, params.powers),
                )
            acc.min = min(acc.min, float(x.min()))
            acc.max = max(acc.max, float(x.max()))
            if acc.histogram is not None:
                acc.histogram += _histogram_cells(x, edges[column])
            if column in cuts:
                keys = np.sort(float_keys(x))
                cuts[column] += np.searchsorted(keys, keys_asked[column], side="right")
            if exact:
                acc.powers = [
                    a + b
                    for a, b in zip(acc.powers, exact_power_sums(x, params.powers), strict=True)
                ]
        if comoments is not None:
            x = np.column_stack([values[c] for c in names])
            mean_vector = x.mean(axis=0)
            centred = x - mean_vector
            comoments = combine_comoments(
                [comoments, (float(size), mean_vector, centred.T @ centred)]
            )
        for index, (i, j) in enumerate(pairs if cross else []):
            cross[index] += exact_product_sum(values[names[i]], values[names[j]])
    for column, e in edges.items():
        _check_cells(accs[column].histogram, e, column, ctx.min_count)  # type: ignore[arg-type]
    return _Scan(n=n, columns=accs, cuts=cuts, comoments=comoments, cross=cross)


def _batch_moments(x: np.ndarray, powers: int) -> tuple[float, float, float, float, float]:
    """Return (n, mean, M2, M3, M4) of one batch (M3, M4 as 0 when ``powers`` is 2)."""
    with np.errstate(over="ignore", invalid="ignore"):  # values near ±1e308: inf, as numpy's
        mean = float(x.mean())
        d = x - mean
        d2 = d * d
        m2 = float(d2.sum())
        if powers <= 2:
            return float(len(x)), mean, m2, 0.0, 0.0
        return float(len(x)), mean, m2, float((d2 * d).sum()), float((d2 * d2).sum())


def _histogram_cells(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return [below the first edge, counts per bin…, above the last edge] of ``x`` (int64)."""
    counts, _ = np.histogram(x, bins=edges)
    below = int((x < edges[0]).sum())
    above = int((x > edges[-1]).sum())
    return np.concatenate([[below], counts, [above]]).astype(np.int64)


def _check_cells(cells: np.ndarray, edges: np.ndarray, column: str, min_count: int) -> None:
    """Refuse (DataError) when a non-empty histogram cell holds fewer than ``min_count``."""
    counts = cells[1:-1]
    where = [("below the first edge", int(cells[0])), ("above the last edge", int(cells[-1]))]
    where += [
        (f"bin [{edges[i]:g}, {edges[i + 1]:g}{']' if i == len(counts) - 1 else ')'}", int(c))
        for i, c in enumerate(counts)
    ]
    for label, count in where:
        if count:
            check_min_count(count, min_count, f"column '{column}': histogram {label}")


def _cut_bounds(scan: _Scan, asked: list[str], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the summable bounds of a site's counts at or below the candidates of ``asked``
    columns, one after the other: what ``suppress_cut_counts`` lets the coordinator infer."""
    lows, highs = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for column in asked:
        coded = suppress_cut_counts(scan.cuts[column], scan.n, limit)
        low, high = cut_count_bounds(coded, scan.n, limit)
        lows.append(low)
        highs.append(high)
    return np.concatenate(lows), np.concatenate(highs)


def _cells(parts: list[np.ndarray | None]) -> np.ndarray:
    return np.concatenate([np.zeros(0, dtype=np.int64), *[p for p in parts if p is not None]])


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


def _total(replies: Mapping[str, Any], kind: type[Any], ctx: CoordinatorContext) -> Any:
    """Return the sum over sites of a summed phase's replies (delivered as ``{SUM: …}`` under
    ``secure = true``; summed here otherwise)."""
    if ctx.secure:
        if set(replies) != {SUM}:
            raise AppError("app 'stats': a summed phase expects only the sum over sites")
        return replies[SUM]
    return sum_replies(replies, kind)


def _check_length(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise AppError(f"app 'stats': the summed {what} hold {got} values, expected {expected}")


def _split(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut a concatenated summed array into parts of ``sizes`` (AppError when it does not fit)."""
    values = np.asarray(values, dtype=np.int64)
    _check_length("counts", values.size, sum(sizes))
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []


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
    """Narrow every order statistic's interval by the sites' answers to the sent candidates."""
    sent, run.sent_candidates = run.sent_candidates, {}
    answers = {site: _answers(site, "cut counts", r, list(sent)) for site, r in replies.items()}
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
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
        bounds[column] = (low, high)
    _narrow_all(bounds, sent, params, run, strict=strict)


def _narrow_all(
    bounds: Mapping[str, tuple[np.ndarray, np.ndarray]],
    sent: Mapping[str, list[int]],
    params: StatsParams,
    run: _Run,
    *,
    strict: bool,
) -> None:
    """Narrow every order statistic's interval by the pooled (lowest, highest) counts at or
    below the sent candidates.

    ``strict``: an interval the answers could not narrow means the sites withheld every count
    that would decide it (raise AppError). Not in the first round, whose candidates cut the whole
    float line and may all miss an interval already narrowed by the federated range.
    """
    for column, (low, high) in bounds.items():
        candidates = sent[column]
        intervals = run.intervals[column]
        for rank, (lo, hi) in intervals.items():
            intervals[rank] = narrow(lo, hi, rank, candidates, low.tolist(), high.tolist())
            if strict and lo < hi and intervals[rank] == (lo, hi):
                which = _quantiles_of(rank, params, run.positions)
                if not which:
                    which = "0 (the minimum)" if rank == 0 else "1 (the maximum)"
                raise AppError(
                    f"app 'stats': quantile {which} of column '{column}' lies where a site "
                    "holds fewer than min_count records beyond it, so it cannot be found "
                    "exactly; set share_extremes = true or ask for a less extreme quantile"
                )


def _extremes(run: _Run, column: str) -> tuple[float | None, float | None]:
    """Return the federated (min, max) of a column found by bisection (None until known)."""
    intervals = run.intervals[column]
    n = run.columns[column].n
    found = [intervals[r] for r in (0, n - 1)]
    low, high = (key_to_float(lo) if lo == hi else None for lo, hi in found)
    return low, high


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
    n = entry.n
    if entry.exact is not None:
        every = _exact_statistics(n, entry.exact)
    else:
        mean, m2, m3, m4 = entry.mean, entry.m2, entry.m3, entry.m4
        variance = m2 / (n - 1) if n > 1 else float("nan")
        std = float(np.sqrt(variance))
        every = {
            "count": int(n),
            "mean": mean,
            "variance": variance,
            "std": std,
            "sum": mean * n,
            "sem": std / math.sqrt(n),
        }
        if "skew" in wanted or "kurtosis" in wanted:
            usable = m2 > 0.0 and math.isfinite(m2)
            with np.errstate(all="ignore"):  # beyond the float range: inf / nan, as numpy's
                v, m2_, m3_, m4_ = np.float64(n), np.float64(m2), np.float64(m3), np.float64(m4)
                every["skew"] = (
                    float(np.sqrt(v * (v - 1)) / (v - 2) * (m3_ / v) / (m2_ / v) ** 1.5)
                    if usable and n > 2
                    else math.nan
                )
                every["kurtosis"] = (
                    float(((v + 1) * (v * m4_ / (m2_ * m2_) - 3.0) + 6.0) * (v - 1))
                    / ((n - 2) * (n - 3))
                    if usable and n > 3
                    else math.nan
                )
    every["min"] = entry.min
    every["max"] = entry.max
    return {s: every[s] for s in COLUMN_STATISTICS if s in wanted}


def _exact_statistics(n: int, exact: tuple[Fraction, ...]) -> dict[str, Any]:
    """Return the column statistics from exact (mean, M2[, M3, M4]), each rounded once (square
    roots: of a value rounded once)."""
    mean, m2 = exact[0], exact[1]
    variance = m2 / (n - 1) if n > 1 else None
    out: dict[str, Any] = {
        "count": n,
        "mean": exact_to_float(mean),
        "variance": math.nan if variance is None else exact_to_float(variance),
        "std": math.nan if variance is None else math.sqrt(exact_to_float(variance)),
        "sum": exact_to_float(mean * n),
        "sem": math.nan if variance is None else math.sqrt(exact_to_float(variance / n)),
    }
    if len(exact) == 4:
        m3, m4 = exact[2], exact[3]
        out["skew"] = math.nan
        out["kurtosis"] = math.nan
        if m2 > 0 and n > 2:
            squared = Fraction(n * n * (n - 1)) * m3 * m3 / (m2**3 * (n - 2) ** 2)
            out["skew"] = math.copysign(math.sqrt(exact_to_float(squared)), -1 if m3 < 0 else 1)
        if m2 > 0 and n > 3:
            g2 = n * m4 / (m2 * m2) - 3
            out["kurtosis"] = exact_to_float(((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3)))
    return out


def _exact_matrices(n: int, c: list[list[Fraction]]) -> tuple[np.ndarray, np.ndarray]:
    """Return (covariance, correlation) from the exact centred cross-products, each entry
    rounded once (a correlation: the square root of its square rounded once, clipped to ±1)."""
    p = len(c)
    covariance = np.full((p, p), np.nan)
    correlation = np.full((p, p), np.nan)
    for i in range(p):
        for j in range(p):
            if n > 1:
                covariance[i, j] = exact_to_float(c[i][j] / (n - 1))
            if c[i][i] > 0 and c[j][j] > 0:
                squared = c[i][j] * c[i][j] / (c[i][i] * c[j][j])
                value = math.copysign(math.sqrt(exact_to_float(squared)), -1 if c[i][j] < 0 else 1)
                correlation[i, j] = min(max(value, -1.0), 1.0)
    return covariance, correlation


def _matrix(names: list[str], values: np.ndarray) -> dict[str, dict[str, float]]:
    return {a: {b: float(values[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
