"""``cox``: Cox proportional hazards by exact Newton–Raphson on per-event-time risk-set sums, and
Harrell's concordance counted exactly from summed score histograms.

Phases (request → reply payload):

1. ``setup`` (``Empty`` → ``Setup``, one round) — each site sends its row and event counts, per
   feature Σx, Σx over its events, and its distinct event times with the number of events at
   each. The coordinator forms the global grid of event times t₁ < … < t_K and the number of
   events dₖ at each, and the pooled means m of the features (the sites centre x at m, which
   changes nothing in β but keeps exp(xβ) in range). With ``secure = true`` a site cannot send its
   event times: ``totals`` (``Empty`` → ``Totals``, the same sums without the times) and
   ``times`` (``TimeCells`` → ``TimeCounts``, a few rounds) replace it — the coordinator finds
   the grid and dₖ from summed counts of events in cells of an order-preserving 64-bit key of
   the times, refined until every cell is one exact time (``_survival.refine_time_cells``).
2. ``fit`` (``Evaluate`` → ``RiskSetSums``, one round per Newton evaluation) — the coordinator
   sends β; each site returns, for every grid time, the risk-set sums over its rows with duration
   ≥ tₖ: S0 = Σ exp(xβ), S1 = Σ x exp(xβ), S2 = Σ xxᵀ exp(xβ); at grid times with tied events
   (dₖ > 1), the same three sums over its rows with an event at tₖ (needed by Efron's method only:
   with Breslow's ties no grid time is marked tied and these arrays are empty); and Σ(x − m)²
   per feature (constant features are refused by name after the first evaluation). The
   coordinator adds them up and gets the exact pooled log partial likelihood, gradient and
   information; it takes the Newton step, halving it while the likelihood falls. It stops when
   the largest step is below ``tol`` × (1 + max|β|) or after ``max_iter`` steps (then
   ``converged`` is false, with a note).
3. ``concordance`` then ``refine`` (``Cells`` → ``Histograms``, a few rounds) — the coordinator
   sends the final β and cells: an event-time index and a score interval. Each site returns, per
   cell and 64 sub-intervals, how many of its events at tₖ and of its rows still comparable at tₖ
   (a later time, or censored at tₖ) have their risk score there. Summed over sites, pairs in
   different sub-intervals are decided (the earlier event with the higher score is concordant);
   sub-intervals holding both are split 64-fold in a ``refine`` round, until each holds a single
   score value (a tie); the count is then exact, as lifelines counts (half a pair for a tie).
   Scores xβ are compared on a grid of 2⁻²⁴ (≈ 6e-8): scores closer than that may count as tied
   where the twin orders them (identical covariate rows tie in both). The twin is
   ``lifelines.utils.concordance_index`` on scores computed row by row;
   ``CoxPHFitter.concordance_index_`` itself can order identical rows by rounding noise of its
   matrix product (9e-6 relative on kidney_transplant in one row order), so it is not the twin.

Every phase but ``setup`` needs only the sum of the sites' replies (``summed``), so with
``secure = true`` the coordinator learns: the pooled number of rows and events, feature sums,
the grid of distinct event times over all sites and the number of events at each (not which site
had them), and per Newton evaluation the pooled risk-set sums per event time (at β = 0, S0 is the
pooled number at risk) and the pooled score histograms of the concordance rounds. Both tie methods
run securely.

Streaming: every phase reads the site's rows batch by batch (``Table.batches``); the risk-set sums
are per-batch histograms onto the grid followed by one reverse cumulative sum, and the histograms
are sums over rows, so a site holds O(K·p²) numbers, never all its rows.

Tolerance: coefficients, standard errors, hazard ratios, p-values, confidence bounds, the log
partial likelihood and the concordance match the twin — lifelines' ``CoxPHFitter`` for Efron's
ties, statsmodels' ``PHReg(ties="breslow")`` for Breslow's (``reference_for``) — to 1e-8
relative, the counts exactly (measured on the fidelity datasets: 1e-13 to 1e-9, the largest on a
p-value of 1e-11). ``comparable`` selects these keys; a result without one of them fails.

What a site reveals without secure aggregation: the distinct times at which its records had events,
with the number of events at each; per Newton evaluation and grid time, the sums above over its
risk set (differences of consecutive sums are sums over the records that left the risk set in
between, so when a single record of a site leaves between two grid times its covariates can be
recovered) and, at tied event times, the sums over its events at that time; in the concordance
rounds, per grid time, how many of its events and comparable rows fall into each score interval,
down to single score values where events meet comparable rows. This is inherent to an exact
federated Cox model; use secure aggregation (or coarser data) where it matters. What
``min_count`` protects: a site refuses to answer when it holds fewer than ``min_count`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from fedflow.apps._survival import (
    SPLIT,
    RiskSets,
    TimeCells,
    TimeCounts,
    TimeSearch,
    cell_histograms,
    check_cells,
    check_time_cells,
    count_cells,
    count_time_cells,
    cox_terms,
    event_table,
    initial_cells,
    linear_scores,
    merge_event_tables,
    time_keys,
    total_pairs,
)
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
    check_unique,
    named,
    numeric_columns,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Cox", "CoxParams"]

_MAX_HALVINGS = 30


class CoxParams(Params, frozen=True):
    """``duration``, ``event`` (0/1), ``features`` (default: every other numeric column),
    ``ties`` (``efron`` or ``breslow``), ``tol``, ``max_iter``, ``alpha`` (of the intervals)."""

    duration: str
    event: str
    features: list[str] | None = None
    ties: Literal["efron", "breslow"] = "efron"
    tol: float = 1e-10
    max_iter: int = 50
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.duration == self.event:
            raise ValueError("duration and event must be two different columns")
        if not self.tol > 0:
            raise ValueError("tol must be positive")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie strictly between 0 and 1")
        if self.features is not None:
            if not self.features:
                raise ValueError("features is empty: nothing to fit")
            for column in (self.duration, self.event):
                if column in self.features:
                    raise ValueError(f"the column '{column}' is also listed in features")
            check_unique(self.features, "features")


# -- payloads -------------------------------------------------------------------------------------
class Totals(Payload, frozen=True):
    """Phase ``totals`` (secure), a site's reply: row and event counts, per feature Σx and Σx
    over its events; summed over sites."""

    n: int
    n_events: int
    x_sum: np.ndarray
    event_x_sum: np.ndarray


class Setup(Totals, frozen=True):
    """Phase ``setup``, a site's reply: its ``Totals``, its distinct event times and the number
    of events at each."""

    event_times: np.ndarray
    event_counts: np.ndarray


class Evaluate(Payload, frozen=True):
    """Phase ``fit``, to the sites: β, the pooled feature means (the sites centre x there), the
    grid of event times and which grid times need tied-event sums (Efron's ties only)."""

    beta: np.ndarray
    mean: np.ndarray
    grid: np.ndarray
    tied: np.ndarray


_SUMS = ("s0", "s1", "s2", "e0", "e1", "e2")


class RiskSetSums(Payload, frozen=True):
    """Phase ``fit``, a site's reply: per grid time the sums of exp(xβ), x·exp(xβ), xxᵀ·exp(xβ)
    over its rows at risk (``s0``, ``s1``, ``s2``); at the tied grid times, over its rows with an
    event there (``e0``, ``e1``, ``e2``); and Σ(x − mean)² per feature (``x_m2``)."""

    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    x_m2: np.ndarray


class Cells(Payload, frozen=True):
    """Phases ``concordance`` and ``refine``, to the sites: the final β and the means (the risk
    scores), the grid, and the cells to count: event-time index ``cell_k`` and score interval
    ``bounds`` (cells × 2, [lo, hi) on the quantised score grid)."""

    beta: np.ndarray
    mean: np.ndarray
    grid: np.ndarray
    cell_k: np.ndarray
    bounds: np.ndarray


class Histograms(Payload, frozen=True):
    """Phases ``concordance`` and ``refine``, a site's reply: per cell and sub-interval, its
    events at the cell's time and its rows still comparable there (int64 under secure
    aggregation, else int32: counts never exceed the site's rows); summed over sites."""

    deaths: np.ndarray
    comparable: np.ndarray


# -- site -------------------------------------------------------------------------------------------
def _rows(
    data: Table, params: CoxParams, ctx: SiteContext
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield the site's rows batch by batch as (durations, events, x), checking them."""
    check_min_count(data.n_rows, ctx.min_count, "the risk sets")
    features = list(params.features or [])
    for batch in data.batches([params.duration, params.event, *features]):
        durations = np.asarray(batch[params.duration], dtype=np.float64)
        if np.isnan(durations).any():
            raise DataError(
                f"column '{params.duration}' has missing values", column=params.duration
            )
        x = batch.matrix(features)
        bad = [f for f, ok in zip(features, np.isfinite(x).all(0), strict=True) if not ok]
        if bad:
            raise DataError(f"column '{bad[0]}' has missing or infinite values", column=bad[0])
        yield durations, np.asarray(batch[params.event], dtype=np.float64), x


def _totals(
    data: Table, params: CoxParams, ctx: SiteContext, *, times: bool
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Return the site's ``Totals`` fields and, if ``times``, the event table of its events."""
    p = len(params.features or [])
    n = n_events = 0
    x_sum, event_x_sum = np.zeros(p), np.zeros(p)
    table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for durations, events, x in _rows(data, params, ctx):
        observed = events == 1
        n += len(durations)
        n_events += int(observed.sum())
        x_sum += x.sum(0)
        event_x_sum += x[observed].sum(0)
        if times:
            part = event_table(durations[observed], events[observed])
            table = part if table is None else merge_event_tables([table, part])
    totals = {"n": n, "n_events": n_events, "x_sum": x_sum, "event_x_sum": event_x_sum}
    return totals, table


def _centred(x: np.ndarray, request: Evaluate | Cells) -> tuple[np.ndarray, np.ndarray]:
    """Return (x centred at the pooled means, β) of a request."""
    xc = x - np.asarray(request.mean, dtype=np.float64)[None, :]
    return xc, np.asarray(request.beta, dtype=np.float64)


# -- coordinator ----------------------------------------------------------------------------------
@dataclass
class _Run:
    """The coordinator's state of one run (in ``CoordinatorContext.state["cox"]``)."""

    n: int
    n_events: int
    grid: np.ndarray
    deaths: np.ndarray
    tied: np.ndarray
    mean: np.ndarray
    event_x: np.ndarray
    beta: np.ndarray
    prev: tuple[np.ndarray, float, np.ndarray] | None = None
    """(β, loglik, step) of the last accepted evaluation."""
    halvings: int = 0
    iterations: int = 0
    evaluations: int = 0
    # the fit, once Newton-Raphson has stopped
    final: np.ndarray | None = None
    cov: np.ndarray | None = None
    loglik: float = 0.0
    converged: bool = False
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Concordant, tied and comparable pairs counted so far."""
    cell_k: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    bounds: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))
    """The cells of the counting round under way."""

    def evaluate(self) -> Continue:
        """Return the next ``fit`` round: evaluate the sums at the current β."""
        return Continue(
            "fit", Evaluate(beta=self.beta, mean=self.mean, grid=self.grid, tied=self.tied)
        )

    def cells(self, phase: str, cell_k: np.ndarray, bounds: np.ndarray) -> Continue:
        """Return a counting round (``concordance`` or ``refine``) of ``cells``."""
        assert self.final is not None
        self.cell_k, self.bounds = cell_k, bounds
        return Continue(
            phase,
            Cells(beta=self.final, mean=self.mean, grid=self.grid, cell_k=cell_k, bounds=bounds),
        )


def _added(replies: Mapping[str, Any], names: tuple[str, ...], dtype: type) -> list[np.ndarray]:
    """Return the fields ``names`` summed over the sites: the one summed reply under secure
    aggregation (``{SUM: …}``), else the element-wise sum of the sites' arrays."""
    if SUM in replies:
        if len(replies) != 1:
            raise AppError("app 'cox': a summed reply came with per-site replies")
        return [np.asarray(getattr(replies[SUM], name), dtype=dtype) for name in names]
    items = list(replies.values())
    return [
        np.sum([np.asarray(getattr(r, name), dtype=dtype) for r in items], axis=0) for name in names
    ]


def _check_information(information: np.ndarray) -> None:
    """Raise LinAlgError when the information matrix is (numerically) singular."""
    scale = np.sqrt(np.diag(information))
    if not np.all(scale > 0):
        raise np.linalg.LinAlgError("zero variance")
    if np.linalg.eigvalsh(information / np.outer(scale, scale))[0] < 1e-13:
        raise np.linalg.LinAlgError("collinear")


_TIES_REFERENCE = {"efron": "lifelines CoxPHFitter", "breslow": "statsmodels PHReg"}
"""The twin ``centralized`` runs for each tie method."""

_COMPARED = (
    "coefficients",
    "std_errors",
    "hazard_ratios",
    "z_values",
    "p_values",
    "ci_lower",
    "ci_upper",
    "loglik",
    "concordance",
    "n_obs",
    "n_events",
)
"""The result keys ``--compare`` checks against the twin (the others describe the run)."""


class Cox(App[CoxParams]):
    """Cox proportional hazards: coefficients, standard errors, hazard ratios, concordance."""

    name = "cox"
    reference = "lifelines CoxPHFitter (Efron ties) or statsmodels PHReg (Breslow ties)"
    Params = CoxParams
    phases = {
        "setup": Phase(Empty, Setup),
        "totals": Phase(Empty, Totals, summed=True),
        "times": Phase(TimeCells, TimeCounts, summed=True),
        "fit": Phase(Evaluate, RiskSetSums, summed=True),
        "concordance": Phase(Cells, Histograms, summed=True),
        "refine": Phase(Cells, Histograms, summed=True),
    }
    secure = True
    streaming = True
    tolerances = {
        "p_values": (1e-8, 0.0),  # relative only: p-values can be 1e-11
        "n_obs": (0.0, 0.0),
        "n_events": (0.0, 0.0),
    }

    def resolve(self, params: CoxParams, columns: Mapping[str, str]) -> CoxParams:
        for key in ("duration", "event"):
            column = getattr(params, key)
            if column not in columns:
                raise AppError(
                    f"app 'cox': params.{key} column '{column}' is not in the sites' data"
                )
        if params.features is not None:
            return params
        features = numeric_columns(columns, exclude=(params.duration, params.event))
        if not features:
            raise AppError("app 'cox': the data has no numeric column to use as a feature")
        return msgspec.structs.replace(params, features=features)

    def columns(self, params: CoxParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {params.duration: "numeric", params.event: "binary"}
        for f in params.features or []:
            needed[f] = "numeric"
        return needed

    def reference_for(self, params: CoxParams) -> str:
        return _TIES_REFERENCE[params.ties]

    def start(self, params: CoxParams, ctx: CoordinatorContext) -> Step:
        return Continue("totals" if ctx.secure else "setup", Empty())

    # -- site -----------------------------------------------------------------------------------
    def local_setup(
        self, data: Table, params: CoxParams, request: Empty, ctx: SiteContext
    ) -> Setup:
        totals, table = _totals(data, params, ctx, times=True)
        assert table is not None
        return Setup(**totals, event_times=table[0], event_counts=table[1])

    def local_totals(
        self, data: Table, params: CoxParams, request: Empty, ctx: SiteContext
    ) -> Totals:
        return Totals(**_totals(data, params, ctx, times=False)[0])

    def local_times(
        self, data: Table, params: CoxParams, request: TimeCells, ctx: SiteContext
    ) -> TimeCounts:
        prefixes = np.asarray(request.prefixes, dtype=np.int64)
        try:
            check_time_cells(request.shift, request.bits, prefixes, 1)
        except ValueError as exc:
            raise AppError(f"app 'cox': {exc}") from None
        counts = np.zeros((1, len(prefixes), 1 << request.bits), dtype=np.int64)
        bits_set = np.zeros((len(prefixes), request.shift), dtype=np.int64)
        for durations, events, _ in _rows(data, params, ctx):
            keys = time_keys(durations[events == 1])
            zeros = np.zeros(len(keys), dtype=np.int64)
            c, b = count_time_cells(keys, zeros, 1, request.shift, request.bits, prefixes)
            counts += c
            bits_set += b
        return TimeCounts(counts=counts, bits_set=bits_set)

    def local_fit(
        self, data: Table, params: CoxParams, request: Evaluate, ctx: SiteContext
    ) -> RiskSetSums:
        p = len(params.features or [])
        sets = RiskSets(np.asarray(request.grid, dtype=np.float64), np.asarray(request.tied), p)
        x_m2 = np.zeros(p)
        for durations, events, x in _rows(data, params, ctx):
            xc, beta = _centred(x, request)
            sets.add(durations, events, xc, xc @ beta)
            x_m2 += (xc**2).sum(0)
        sums = sets.sums()
        return RiskSetSums(**{name: sums[name.upper()] for name in _SUMS}, x_m2=x_m2)

    def _histograms(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> Histograms:
        grid = np.asarray(request.grid, dtype=np.float64)
        cell_k = np.asarray(request.cell_k, dtype=np.int64)
        bounds = np.asarray(request.bounds, dtype=np.int64).reshape(-1, 2)
        try:
            check_cells(cell_k, bounds, len(grid))
        except ValueError as exc:
            raise AppError(f"app 'cox': {exc}") from None
        deaths = np.zeros((len(cell_k), SPLIT), dtype=np.int64)
        comparable = np.zeros_like(deaths)
        for durations, events, x in _rows(data, params, ctx):
            xc, beta = _centred(x, request)
            d, c = cell_histograms(durations, events, linear_scores(xc, beta), grid, cell_k, bounds)
            deaths += d
            comparable += c
        # counts never exceed the site's rows: in the clear, int32 halves the message
        kind = np.int64 if ctx.secure else np.int32
        return Histograms(deaths=deaths.astype(kind), comparable=comparable.astype(kind))

    def local_concordance(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> Histograms:
        return self._histograms(data, params, request, ctx)

    def local_refine(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> Histograms:
        return self._histograms(data, params, request, ctx)

    # -- coordinator ----------------------------------------------------------------------------
    def aggregate_setup(
        self, replies: Mapping[str, Setup], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        tables = []
        for r in replies.values():
            counts = np.asarray(r.event_counts, dtype=np.int64)
            tables.append((np.asarray(r.event_times), counts, np.zeros_like(counts)))
        grid, deaths, _ = merge_event_tables(tables)
        n = sum(int(r.n) for r in replies.values())
        n_events = sum(int(r.n_events) for r in replies.values())
        x_sum, event_x_sum = _added(replies, ("x_sum", "event_x_sum"), np.float64)
        return self._begin(params, ctx, n, n_events, x_sum, event_x_sum, grid, deaths)

    def aggregate_totals(
        self, replies: Mapping[str, Totals], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        if set(replies) != {SUM}:
            raise AppError("app 'cox': phase 'totals' expects the summed reply only")
        totals = replies[SUM]
        if int(totals.n_events) == 0:
            raise AppError(f"app 'cox': column '{params.event}' holds no event at any site")
        search = ctx.state["cox_grid"] = TimeSearch()
        ctx.state["cox_totals"] = totals
        return Continue("times", search.request())

    def aggregate_times(
        self, replies: Mapping[str, TimeCounts], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        search: TimeSearch = ctx.state["cox_grid"]
        if SUM not in replies or len(replies) != 1:
            raise AppError("app 'cox': phase 'times' expects the summed reply only")
        if not search.add(replies[SUM]):
            return Continue("times", search.request())
        grid, deaths = search.times()
        t: Totals = ctx.state["cox_totals"]
        x_sum, event_x_sum = (np.asarray(v, dtype=np.float64) for v in (t.x_sum, t.event_x_sum))
        return self._begin(
            params, ctx, int(t.n), int(t.n_events), x_sum, event_x_sum, grid, deaths[0]
        )

    def _begin(
        self,
        params: CoxParams,
        ctx: CoordinatorContext,
        n: int,
        n_events: int,
        x_sum: np.ndarray,
        event_x_sum: np.ndarray,
        grid: np.ndarray,
        deaths: np.ndarray,
    ) -> Step:
        """Start Newton–Raphson at β = 0 on the grid of event times."""
        if n_events == 0:
            raise AppError(f"app 'cox': column '{params.event}' holds no event at any site")
        if int(deaths.sum()) != n_events:
            raise AppError("app 'cox': the event counts per time do not add up to the events")
        mean = x_sum / n
        run = ctx.state["cox"] = _Run(
            n=n,
            n_events=n_events,
            grid=grid,
            deaths=deaths,
            tied=(deaths > 1) & (params.ties == "efron"),  # Breslow needs no tied-event sums
            mean=mean,
            event_x=event_x_sum - n_events * mean,
            beta=np.zeros(len(params.features or [])),
        )
        return run.evaluate()

    def aggregate_fit(
        self, replies: Mapping[str, RiskSetSums], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        *parts, m2 = _added(replies, (*_SUMS, "x_m2"), np.float64)
        sums = {name.upper(): value for name, value in zip(_SUMS, parts, strict=True)}
        if run.evaluations == 0:
            constant = [
                f
                for f, v, m in zip(params.features or [], m2, run.mean, strict=True)
                if v <= 1e-24 * run.n * max(m * m, 1e-300)
            ]
            if constant:
                raise AppError(
                    f"app 'cox': feature '{constant[0]}' is constant; it cannot be fitted"
                )
        run.evaluations += 1
        beta = run.beta
        with np.errstate(all="ignore"):
            loglik, gradient, information = cox_terms(
                run.deaths, run.tied, sums, run.event_x, beta, params.ties
            )
        prev = run.prev
        finite = (
            np.isfinite(loglik)
            and np.all(np.isfinite(gradient))
            and np.all(np.isfinite(information))
        )
        if prev is not None and (not finite or loglik < prev[1] - 1e-12 * abs(prev[1])):
            # the full step overshot: halve it and evaluate again
            if run.halvings >= _MAX_HALVINGS:
                raise AppError("app 'cox': Newton-Raphson diverged (step halving failed)")
            run.halvings += 1
            run.beta = prev[0] + prev[2] / 2.0**run.halvings
            return run.evaluate()
        if not finite:
            raise AppError("app 'cox': the partial likelihood is not finite at the start")
        try:
            _check_information(information)
            step = np.linalg.solve(information, gradient)
        except np.linalg.LinAlgError:
            raise AppError(
                "app 'cox': the information matrix is singular (collinear or constant features)"
            ) from None
        run.iterations += 1
        converged = bool(
            np.max(np.abs(step), initial=0.0)
            <= params.tol * (1.0 + np.max(np.abs(beta), initial=0.0))
        )
        if not converged and run.iterations < params.max_iter:
            run.prev, run.halvings, run.beta = (beta, loglik, step), 0, beta + step
            return run.evaluate()
        if not converged:
            ctx.notes.append(f"cox did not converge in {params.max_iter} iterations")
        try:
            cov = np.linalg.inv(information)
        except np.linalg.LinAlgError:
            raise AppError("app 'cox': the information matrix is singular") from None
        run.final = beta + step if converged else beta
        run.cov, run.loglik, run.converged = cov, loglik, converged
        return run.cells("concordance", *initial_cells(len(run.grid)))

    def aggregate_concordance(
        self, replies: Mapping[str, Histograms], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        deaths, comparable = _added(replies, ("deaths", "comparable"), np.int64)
        run.counts[2] = total_pairs(deaths, comparable)
        return self._merge(run, params, deaths, comparable)

    def aggregate_refine(
        self, replies: Mapping[str, Histograms], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        return self._merge(run, params, *_added(replies, ("deaths", "comparable"), np.int64))

    def _merge(
        self, run: _Run, params: CoxParams, deaths: np.ndarray, comparable: np.ndarray
    ) -> Step:
        """Count the pairs the summed histograms decide; refine the cells that remain, or finish."""
        shape = (len(run.cell_k), SPLIT)
        if deaths.shape != shape or comparable.shape != shape:
            raise AppError(f"app 'cox': histograms of shape {deaths.shape}, expected {shape}")
        concordant, tied, new_k, new_bounds = count_cells(
            run.cell_k, run.bounds, deaths, comparable
        )
        run.counts[0] += concordant
        run.counts[1] += tied
        if len(new_k):
            return run.cells("refine", new_k, new_bounds)
        return Done(self._result(params, run))

    def _result(self, params: CoxParams, run: _Run) -> dict[str, Any]:
        from scipy import stats

        assert run.final is not None and run.cov is not None
        names = list(params.features or [])
        beta, se = run.final, np.sqrt(np.diag(run.cov))
        z = beta / se
        p = 2.0 * stats.norm.sf(np.abs(z))
        half = stats.norm.ppf(1.0 - params.alpha / 2.0) * se
        correct, tied, pairs = run.counts
        concordance = (correct + 0.5 * tied) / pairs if pairs else None
        return {
            "coefficients": named(names, beta),
            "std_errors": named(names, se),
            "hazard_ratios": named(names, np.exp(beta)),
            "z_values": named(names, z),
            "p_values": named(names, p),
            "ci_lower": named(names, beta - half),
            "ci_upper": named(names, beta + half),
            "loglik": float(run.loglik),
            "concordance": concordance,
            "ties": params.ties,
            "iterations": int(run.iterations),
            "converged": bool(run.converged),
            "n_obs": int(run.n),
            "n_events": int(run.n_events),
        }

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: CoxParams) -> dict[str, Any]:
        import warnings

        from lifelines.utils import concordance_index
        from scipy import stats

        names = list(params.features or [])
        frame = pooled[[params.duration, params.event, *names]].astype(float)
        durations, events = frame[params.duration], frame[params.event]
        if params.ties == "efron":
            from lifelines import CoxPHFitter

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = CoxPHFitter(alpha=params.alpha, penalizer=0.0).fit(
                    frame,
                    params.duration,
                    params.event,
                    fit_options={"precision": 1e-20, "r_precision": 1e-30, "max_steps": 500},
                )
            beta = fit.params_[names].to_numpy()
            se = fit.standard_errors_[names].to_numpy()
            p = fit.summary["p"][names].to_numpy()
            ci = fit.confidence_intervals_.loc[names].to_numpy()
            loglik = float(fit.log_likelihood_)
        else:
            import statsmodels.api as sm

            res = sm.PHReg(
                durations.to_numpy(),
                frame[names].to_numpy(),
                status=events.to_numpy(),
                ties="breslow",
            ).fit(method="newton", tol=1e-14, maxiter=200, disp=False)
            beta, se, p = np.asarray(res.params), np.asarray(res.bse), np.asarray(res.pvalues)
            half = stats.norm.ppf(1.0 - params.alpha / 2.0) * se
            ci = np.column_stack([beta - half, beta + half])
            loglik = float(res.llf)
        # Scores row by row, so identical covariate rows tie exactly (a BLAS matrix product, as in
        # lifelines' own concordance_index_, may order them at random and move C by ~1e-5).
        scores = (np.ascontiguousarray(frame[names].to_numpy()) * beta[None, :]).sum(axis=1)
        try:
            concordance: float | None = float(concordance_index(durations, -scores, events))
        except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
            concordance = None

        return {
            "coefficients": named(names, beta),
            "std_errors": named(names, se),
            "hazard_ratios": named(names, np.exp(beta)),
            "z_values": named(names, beta / se),
            "p_values": named(names, p),
            "ci_lower": named(names, ci[:, 0]),
            "ci_upper": named(names, ci[:, 1]),
            "loglik": loglik,
            "concordance": concordance,
            "n_obs": len(frame),
            "n_events": int(events.sum()),
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {key: result[key] for key in _COMPARED}
