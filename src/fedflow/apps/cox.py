"""``cox``: Cox proportional hazards by exact Newton–Raphson on per-event-time risk-set sums, and
Harrell's concordance counted exactly across sites.

Phases (request → reply payload):

1. ``setup`` (``Empty`` → ``Setup``, one round) — each site sends its row and event counts, per
   feature Σx and the sum of squared deviations from its own mean (constant features are refused
   by name), Σx over its events, and its distinct event times with the number of events at each.
   The coordinator forms the global grid of event times t₁ < … < t_K and the number of events dₖ
   at each, and the pooled means m of the features (the sites centre x at m, which changes
   nothing in β but keeps exp(xβ) in range).
2. ``fit`` (``Evaluate`` → ``RiskSetSums``, one round per Newton evaluation) — the coordinator
   sends β; each site returns, for every grid time, the risk-set sums over its rows with duration
   ≥ tₖ: S0 = Σ exp(xβ), S1 = Σ x exp(xβ), S2 = Σ xxᵀ exp(xβ); and, at grid times with tied events
   (dₖ > 1), the same three sums over its rows with an event at tₖ (needed by Efron's method only:
   with Breslow's ties no grid time is marked tied and these arrays are empty). The coordinator
   adds them up and gets the exact pooled log partial likelihood, gradient and information; it
   takes the Newton step, halving it while the likelihood falls. It stops when the largest step
   is below ``tol`` × (1 + max|β|) or after ``max_iter`` steps (then ``converged`` is false, with
   a note).
3. ``concordance`` (``Cells`` → ``FirstHistograms``, one round), then ``refine`` (``Cells`` →
   ``Histograms``, a few rounds) — the coordinator sends the final β. Each site counts the
   comparable pairs among its own rows exactly (as lifelines does: an event strictly before the
   other's time, or at the time the other is censored; concordant when the earlier event has the
   higher risk score, half a pair when the scores are equal). Pairs across sites are counted from
   histograms: per grid time, the counts of the site's events at tₖ and of its rows still comparable
   at tₖ in score intervals the coordinator sends (the whole score range in ``concordance``, whose
   reply also carries the site's own pair counts). Intervals in which events of one site meet
   comparable rows of another are split 64-fold in a ``refine`` round, until every such interval
   holds a single score value; the count is then exact. Scores xβ are compared on a grid of 2⁻²⁴
   (≈ 6e-8): scores closer than that may count as tied where the twin orders them (identical
   covariate rows tie in both). The twin is ``lifelines.utils.concordance_index`` on scores computed row by row;
   ``CoxPHFitter.concordance_index_`` itself can order identical rows by rounding noise of its
   matrix product (9e-6 relative on kidney_transplant in one row order), so it is not the twin.

Tolerance: coefficients, standard errors, hazard ratios, p-values, confidence bounds, the log
partial likelihood and the concordance match the twin — lifelines' ``CoxPHFitter`` for Efron's
ties, statsmodels' ``PHReg(ties="breslow")`` for Breslow's (``reference_for``) — to 1e-8
relative, the counts exactly (measured on the fidelity datasets: 1e-13 to 1e-9, the largest on a
p-value of 1e-11). ``comparable`` selects these keys; a result without one of them fails.

What a site reveals: the distinct times at which its records had events, with the number of events
at each; per Newton evaluation and grid time, the sums above over its risk set (differences of
consecutive sums are sums over the records that left the risk set in between, so when a single
record of a site leaves between two grid times its covariates can be recovered) and, at tied event
times, the sums over its events at that time; in the concordance rounds, per grid time, how many of
its events and comparable rows fall into each score interval, down to single score values where its
events meet another site's rows. This is inherent to an exact federated Cox model; use secure
aggregation (or coarser data) where it matters. What ``min_count`` protects: a site refuses to
answer when it holds fewer than ``min_count`` rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from fedflow.apps._survival import (
    cell_histograms,
    cox_terms,
    cross_pairs,
    event_table,
    initial_cells,
    linear_scores,
    local_concordance,
    merge_cells,
    merge_event_tables,
    risk_set_sums,
)
from fedflow.apps.base import (
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
class Setup(Payload, frozen=True):
    """Phase ``setup``, a site's reply: row and event counts, per feature Σx and the squared
    deviations from the site's mean, Σx over its events, its distinct event times and the number
    of events at each."""

    n: int
    n_events: int
    event_times: np.ndarray
    event_counts: np.ndarray
    x_sum: np.ndarray
    x_m2: np.ndarray
    event_x_sum: np.ndarray


class Evaluate(Payload, frozen=True):
    """Phase ``fit``, to the sites: β, the pooled feature means (the sites centre x there), the
    grid of event times and which grid times need tied-event sums (Efron's ties only)."""

    beta: np.ndarray
    mean: np.ndarray
    grid: np.ndarray
    tied: np.ndarray


class RiskSetSums(Payload, frozen=True):
    """Phase ``fit``, a site's reply: per grid time the sums of exp(xβ), x·exp(xβ), xxᵀ·exp(xβ)
    over its rows at risk (``s0``, ``s1``, ``s2``) and, at the tied grid times, over its rows
    with an event there (``e0``, ``e1``, ``e2``)."""

    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray

    def as_sums(self) -> dict[str, np.ndarray]:
        """Return the sums under the names ``cox_terms`` reads (``S0`` … ``E2``)."""
        return {name.upper(): getattr(self, name) for name in self.__struct_fields__}


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
    """Phase ``refine``, a site's reply: per cell and sub-interval, its events at the cell's time
    and its rows still comparable there (int32: counts never exceed the site's rows)."""

    deaths: np.ndarray
    comparable: np.ndarray


class FirstHistograms(Histograms, frozen=True):
    """Phase ``concordance`` (the first counting round), a site's reply: the histograms over the
    whole score range and its own (concordant, tied, comparable) pair counts."""

    concordant: int
    tied: int
    pairs: int


# -- site -------------------------------------------------------------------------------------------
def _site_arrays(data: Table, params: CoxParams, ctx: SiteContext) -> tuple[np.ndarray, ...]:
    """Return (durations, events, x) of the site, built once per run and kept in ``ctx.state``."""
    arrays: tuple[np.ndarray, ...] | None = ctx.state.get("arrays")
    if arrays is None:
        durations = np.asarray(data[params.duration], dtype=np.float64)
        x = data.matrix(params.features or [])
        if np.isnan(durations).any():
            raise DataError(
                f"column '{params.duration}' has missing values", column=params.duration
            )
        bad = [
            f for f, ok in zip(params.features or [], np.isfinite(x).all(0), strict=True) if not ok
        ]
        if bad:
            raise DataError(f"column '{bad[0]}' has missing or infinite values", column=bad[0])
        events = np.asarray(data[params.event], dtype=np.float64)
        arrays = ctx.state["arrays"] = (durations, events, x)
    return arrays


def _centred(x: np.ndarray, request: Evaluate | Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (x centred at the pooled means, β, grid) of a request."""
    xc = x - np.asarray(request.mean, dtype=np.float64)[None, :]
    beta = np.asarray(request.beta, dtype=np.float64)
    return xc, beta, np.asarray(request.grid, dtype=np.float64)


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


def _total(parts: list[np.ndarray]) -> np.ndarray:
    """Return the element-wise sum of the sites' arrays."""
    return np.sum([np.asarray(p, dtype=np.float64) for p in parts], axis=0)


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
        "fit": Phase(Evaluate, RiskSetSums),
        "concordance": Phase(Cells, FirstHistograms),
        "refine": Phase(Cells, Histograms),
    }
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

    # -- site -----------------------------------------------------------------------------------
    def local_setup(
        self, data: Table, params: CoxParams, request: Empty, ctx: SiteContext
    ) -> Setup:
        durations, events, x = _site_arrays(data, params, ctx)
        check_min_count(len(durations), ctx.min_count, "the risk sets")
        observed = events == 1
        times, counts, _ = event_table(durations[observed], events[observed])
        return Setup(
            n=len(durations),
            n_events=int(observed.sum()),
            event_times=times,
            event_counts=counts,
            x_sum=x.sum(0),
            x_m2=((x - x.mean(0)) ** 2).sum(0) if len(x) else np.zeros(x.shape[1]),
            event_x_sum=x[observed].sum(0),
        )

    def local_fit(
        self, data: Table, params: CoxParams, request: Evaluate, ctx: SiteContext
    ) -> RiskSetSums:
        durations, events, x = _site_arrays(data, params, ctx)
        xc, beta, grid = _centred(x, request)
        sums = risk_set_sums(
            durations, events, xc, xc @ beta, grid, np.asarray(request.tied, dtype=bool)
        )
        return RiskSetSums(**{name.lower(): value for name, value in sums.items()})

    def _histograms(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """Return the site's (deaths, comparable) int32 histograms of ``request``'s cells, and
        (durations, events, scores)."""
        durations, events, x = _site_arrays(data, params, ctx)
        xc, beta, grid = _centred(x, request)
        scores = ctx.state.get("scores")
        if scores is None:
            scores = ctx.state["scores"] = linear_scores(xc, beta)
        deaths, comparable = cell_histograms(
            durations,
            events,
            scores,
            grid,
            np.asarray(request.cell_k, dtype=np.int64),
            np.asarray(request.bounds, dtype=np.int64).reshape(-1, 2),
        )
        # counts never exceed the site's rows: int32 halves the message
        return deaths.astype(np.int32), comparable.astype(np.int32), (durations, events, scores)

    def local_concordance(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> FirstHistograms:
        deaths, comparable, sample = self._histograms(data, params, request, ctx)
        concordant, tied, pairs = local_concordance(*sample)
        return FirstHistograms(
            deaths=deaths, comparable=comparable, concordant=concordant, tied=tied, pairs=pairs
        )

    def local_refine(
        self, data: Table, params: CoxParams, request: Cells, ctx: SiteContext
    ) -> Histograms:
        deaths, comparable, _ = self._histograms(data, params, request, ctx)
        return Histograms(deaths=deaths, comparable=comparable)

    # -- coordinator ----------------------------------------------------------------------------
    def aggregate_setup(
        self, replies: Mapping[str, Setup], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        n = sum(int(r.n) for r in replies.values())
        n_events = sum(int(r.n_events) for r in replies.values())
        if n_events == 0:
            raise AppError(f"app 'cox': column '{params.event}' holds no event at any site")
        tables = []
        for r in replies.values():
            counts = np.asarray(r.event_counts, dtype=np.int64)
            tables.append((np.asarray(r.event_times), counts, np.zeros_like(counts)))
        grid, deaths, _ = merge_event_tables(tables)
        mean = _total([r.x_sum for r in replies.values()]) / n
        m2 = _total([r.x_m2 for r in replies.values()]) + np.sum(
            [
                int(r.n) * (np.asarray(r.x_sum) / max(int(r.n), 1) - mean) ** 2
                for r in replies.values()
            ],
            axis=0,
        )
        constant = [
            f
            for f, v, m in zip(params.features or [], m2, mean, strict=True)
            if v <= 1e-24 * n * max(m * m, 1e-300)
        ]
        if constant:
            raise AppError(f"app 'cox': feature '{constant[0]}' is constant; it cannot be fitted")
        event_x = _total([r.event_x_sum for r in replies.values()])
        run = ctx.state["cox"] = _Run(
            n=n,
            n_events=n_events,
            grid=grid,
            deaths=deaths,
            tied=(deaths > 1) & (params.ties == "efron"),  # Breslow needs no tied-event sums
            mean=mean,
            event_x=event_x - n_events * mean,
            beta=np.zeros(len(params.features or [])),
        )
        return run.evaluate()

    def aggregate_fit(
        self, replies: Mapping[str, RiskSetSums], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        site_sums = [r.as_sums() for r in replies.values()]
        sums = {key: _total([s[key] for s in site_sums]) for key in site_sums[0]}
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
        self, replies: Mapping[str, FirstHistograms], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        for reply in replies.values():
            run.counts[0] += int(reply.concordant)
            run.counts[1] += int(reply.tied)
            run.counts[2] += int(reply.pairs)
        deaths, comparable = self._stack(replies)
        run.counts[2] += cross_pairs(deaths, comparable)
        return self._merge(run, params, ctx, deaths, comparable)

    def aggregate_refine(
        self, replies: Mapping[str, Histograms], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["cox"]
        return self._merge(run, params, ctx, *self._stack(replies))

    @staticmethod
    def _stack(replies: Mapping[str, Histograms]) -> tuple[np.ndarray, np.ndarray]:
        """Return the sites' (deaths, comparable) histograms as sites × cells × SPLIT arrays."""
        names = sorted(replies)
        deaths = np.stack([np.asarray(replies[s].deaths, dtype=np.int64) for s in names])
        comparable = np.stack([np.asarray(replies[s].comparable, dtype=np.int64) for s in names])
        return deaths, comparable

    def _merge(
        self,
        run: _Run,
        params: CoxParams,
        ctx: CoordinatorContext,
        deaths: np.ndarray,
        comparable: np.ndarray,
    ) -> Step:
        """Count the pairs the histograms decide; refine the cells that remain, or finish."""
        concordant, tied, new_k, new_bounds = merge_cells(
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
