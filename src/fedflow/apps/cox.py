"""``cox``: Cox proportional hazards by exact Newton–Raphson on per-event-time risk-set sums, and
Harrell's concordance counted exactly across sites.

Rounds:

1. *setup* — each site sends its row and event counts, per feature Σx and the sum of squared
   deviations from its own mean (constant features are refused by name), Σx over its events, and
   its distinct event times with the number of events at each. The coordinator forms the global grid of event
   times t₁ < … < t_K and the number of events dₖ at each, and the pooled means m of the features
   (the sites centre x at m, which changes nothing in β but keeps exp(xβ) in range).
2. *fit* (one round per Newton evaluation) — the coordinator sends β; each site returns, for every
   grid time, the risk-set sums over its rows with duration ≥ tₖ: S0 = Σ exp(xβ), S1 = Σ x exp(xβ),
   S2 = Σ xxᵀ exp(xβ); and, at grid times with tied events (dₖ > 1), the same three sums over its
   rows with an event at tₖ (needed by Efron's method only). The coordinator adds them up and gets
   the exact pooled log partial likelihood, gradient and information; it takes the Newton step,
   halving it while the likelihood falls. It stops when the largest step is below
   ``tol`` × (1 + max|β|) or after ``max_iter`` steps (then ``converged`` is false, with a note).
3. *concordance* (a few rounds) — the coordinator sends the final β. Each site counts the
   comparable pairs among its own rows exactly (as lifelines does: an event strictly before the
   other's time, or at the time the other is censored; concordant when the earlier event has the
   higher risk score, half a pair when the scores are equal). Pairs across sites are counted from
   histograms: per grid time, the counts of the site's events at tₖ and of its rows still comparable
   at tₖ in score intervals the coordinator sends. Intervals in which events of one site meet
   comparable rows of another are split 64-fold in the next round, until every such interval holds a
   single score value; the count is then exact. Scores xβ are compared on a grid of 2⁻²⁴ (≈ 6e-8):
   scores closer than that may count as tied where the twin orders them (identical covariate rows
   tie in both). The twin is ``lifelines.utils.concordance_index`` on scores computed row by row;
   ``CoxPHFitter.concordance_index_`` itself can order identical rows by rounding noise of its
   matrix product (9e-6 relative on kidney_transplant in one row order), so it is not the twin.

Tolerance: coefficients, standard errors, hazard ratios, p-values, confidence bounds, the log
partial likelihood and the concordance match lifelines' ``CoxPHFitter`` (Efron) or statsmodels'
``PHReg(ties="breslow")`` to 1e-8 relative (measured on the fidelity datasets: 1e-13 to 1e-9,
the largest on a p-value of 1e-11).

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
    Params,
    Payload,
    SiteContext,
    Step,
    Table,
    check_min_count,
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
            dupes = sorted({f for f in self.features if self.features.count(f) > 1})
            if dupes:
                raise ValueError(f"features listed twice: {', '.join(dupes)}")


def _site_arrays(data: Table, params: CoxParams, ctx: SiteContext) -> tuple[np.ndarray, ...]:
    """Return (durations, events, x) of the site, built once per run and kept in ``ctx.state``."""
    if "x" not in ctx.state:
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
        ctx.state["durations"] = durations
        ctx.state["events"] = np.asarray(data[params.event], dtype=np.float64)
        ctx.state["x"] = x
    return ctx.state["durations"], ctx.state["events"], ctx.state["x"]


def _total(replies: Mapping[str, Payload], key: str) -> np.ndarray:
    """Return the element-wise sum of the sites' arrays under ``key``."""
    return np.sum([np.asarray(r[key], dtype=np.float64) for r in replies.values()], axis=0)


def _check_information(information: np.ndarray) -> None:
    """Raise LinAlgError when the information matrix is (numerically) singular."""
    scale = np.sqrt(np.diag(information))
    if not np.all(scale > 0):
        raise np.linalg.LinAlgError("zero variance")
    if np.linalg.eigvalsh(information / np.outer(scale, scale))[0] < 1e-13:
        raise np.linalg.LinAlgError("collinear")


class Cox(App[CoxParams]):
    """Cox proportional hazards: coefficients, standard errors, hazard ratios, concordance."""

    name = "cox"
    reference = "lifelines CoxPHFitter (Breslow ties: statsmodels PHReg)"
    Params = CoxParams

    def resolve(self, params: CoxParams, columns: Mapping[str, str]) -> CoxParams:
        for key in ("duration", "event"):
            column = getattr(params, key)
            if column not in columns:
                raise AppError(
                    f"app 'cox': params.{key} column '{column}' is not in the sites' data"
                )
        if params.features is not None:
            return params
        skip = {params.duration, params.event}
        features = [c for c, kind in columns.items() if kind in ("int", "float") and c not in skip]
        if not features:
            raise AppError("app 'cox': the data has no numeric column to use as a feature")
        return msgspec.structs.replace(params, features=features)

    def columns(self, params: CoxParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {params.duration: "numeric", params.event: "binary"}
        for f in params.features or []:
            needed[f] = "numeric"
        return needed

    # -- coordinator ----------------------------------------------------------------------------
    def start(self, params: CoxParams, ctx: CoordinatorContext) -> Step:
        ctx.state["stage"] = "setup"
        return Continue({"stage": "setup"})

    def aggregate(
        self, replies: Mapping[str, Payload], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        stage = ctx.state["stage"]
        if stage == "setup":
            return self._setup(replies, params, ctx)
        if stage == "fit":
            return self._fit(replies, params, ctx)
        return self._concordance(replies, params, ctx)

    def _setup(
        self, replies: Mapping[str, Payload], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        st = ctx.state
        n = sum(int(r["n"]) for r in replies.values())
        n_events = sum(int(r["n_events"]) for r in replies.values())
        if n_events == 0:
            raise AppError(f"app 'cox': column '{params.event}' holds no event at any site")
        tables = []
        for r in replies.values():
            counts = np.asarray(r["event_counts"], dtype=np.int64)
            tables.append((np.asarray(r["event_times"]), counts, np.zeros_like(counts)))
        grid, deaths, _ = merge_event_tables(tables)
        mean = _total(replies, "x_sum") / n
        m2 = _total(replies, "x_m2") + np.sum(
            [
                int(r["n"]) * (np.asarray(r["x_sum"]) / max(int(r["n"]), 1) - mean) ** 2
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
        event_x = _total(replies, "event_x_sum")
        st.update(
            stage="fit",
            n=n,
            n_events=n_events,
            grid=grid,
            deaths=deaths,
            tied=(deaths > 1) & (params.ties == "efron"),  # Breslow needs no tied-event sums
            mean=mean,
            event_x=event_x - n_events * mean,
            beta=np.zeros(len(params.features or [])),
            prev=None,  # (β, loglik, step) of the last accepted evaluation
            halvings=0,
            iterations=0,
        )
        return self._fit_payload(st)

    @staticmethod
    def _fit_payload(st: dict[str, Any]) -> Continue:
        return Continue(
            {
                "stage": "fit",
                "beta": st["beta"],
                "mean": st["mean"],
                "grid": st["grid"],
                "tied": st["tied"],
            }
        )

    def _fit(
        self, replies: Mapping[str, Payload], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        st = ctx.state
        sums = {key: _total(replies, key) for key in ("S0", "S1", "S2", "E0", "E1", "E2")}
        beta = st["beta"]
        with np.errstate(all="ignore"):
            loglik, gradient, information = cox_terms(
                st["deaths"], st["tied"], sums, st["event_x"], beta, params.ties
            )
        prev = st["prev"]
        finite = (
            np.isfinite(loglik)
            and np.all(np.isfinite(gradient))
            and np.all(np.isfinite(information))
        )
        if prev is not None and (not finite or loglik < prev[1] - 1e-12 * abs(prev[1])):
            # the full step overshot: halve it and evaluate again
            if st["halvings"] >= _MAX_HALVINGS:
                raise AppError("app 'cox': Newton-Raphson diverged (step halving failed)")
            st["halvings"] += 1
            step = prev[2] / 2.0 ** st["halvings"]
            st["beta"] = prev[0] + step
            return self._fit_payload(st)
        if not finite:
            raise AppError("app 'cox': the partial likelihood is not finite at the start")
        try:
            _check_information(information)
            step = np.linalg.solve(information, gradient)
        except np.linalg.LinAlgError:
            raise AppError(
                "app 'cox': the information matrix is singular (collinear or constant features)"
            ) from None
        st["iterations"] += 1
        converged = bool(
            np.max(np.abs(step), initial=0.0)
            <= params.tol * (1.0 + np.max(np.abs(beta), initial=0.0))
        )
        if not converged and st["iterations"] < params.max_iter:
            st.update(prev=(beta, loglik, step), halvings=0, beta=beta + step)
            return self._fit_payload(st)
        if not converged:
            ctx.notes.append(f"cox did not converge in {params.max_iter} iterations")
        final = beta + step if converged else beta
        try:
            cov = np.linalg.inv(information)
        except np.linalg.LinAlgError:
            raise AppError("app 'cox': the information matrix is singular") from None
        st.update(
            stage="concordance",
            final=final,
            cov=cov,
            loglik=loglik,
            converged=converged,
            counts=[0, 0, 0],  # concordant, tied, comparable pairs
            first=True,
        )
        cell_k, bounds = initial_cells(len(st["grid"]))
        return self._concordance_payload(st, cell_k, bounds)

    @staticmethod
    def _concordance_payload(
        st: dict[str, Any], cell_k: np.ndarray, bounds: np.ndarray
    ) -> Continue:
        st["cells"] = (cell_k, bounds)
        return Continue(
            {
                "stage": "concordance",
                "beta": st["final"],
                "mean": st["mean"],
                "grid": st["grid"],
                "cell_k": cell_k,
                "bounds": bounds,
                "first": st["first"],
            }
        )

    def _concordance(
        self, replies: Mapping[str, Payload], params: CoxParams, ctx: CoordinatorContext
    ) -> Step:
        st = ctx.state
        cell_k, bounds = st["cells"]
        names = sorted(replies)
        deaths = np.stack([np.asarray(replies[s]["deaths"], dtype=np.int64) for s in names])
        comparable = np.stack([np.asarray(replies[s]["comparable"], dtype=np.int64) for s in names])
        counts = st["counts"]
        if st["first"]:
            for s in names:
                for i, v in enumerate(replies[s]["local"]):
                    counts[i] += int(v)
            counts[2] += cross_pairs(deaths, comparable)
            st["first"] = False
        concordant, tied, new_k, new_bounds = merge_cells(cell_k, bounds, deaths, comparable)
        counts[0] += concordant
        counts[1] += tied
        if len(new_k):
            return self._concordance_payload(st, new_k, new_bounds)
        return Done(self._result(params, st))

    def _result(self, params: CoxParams, st: dict[str, Any]) -> dict[str, Any]:
        from scipy import stats

        names = list(params.features or [])
        beta, se = st["final"], np.sqrt(np.diag(st["cov"]))
        z = beta / se
        p = 2.0 * stats.norm.sf(np.abs(z))
        half = stats.norm.ppf(1.0 - params.alpha / 2.0) * se
        correct, tied, pairs = st["counts"]
        concordance = (correct + 0.5 * tied) / pairs if pairs else None

        def named(values: np.ndarray) -> dict[str, float]:
            return {n: float(v) for n, v in zip(names, values, strict=True)}

        return {
            "coefficients": named(beta),
            "std_errors": named(se),
            "hazard_ratios": named(np.exp(beta)),
            "z_values": named(z),
            "p_values": named(p),
            "ci_lower": named(beta - half),
            "ci_upper": named(beta + half),
            "loglik": float(st["loglik"]),
            "concordance": concordance,
            "ties": params.ties,
            "iterations": int(st["iterations"]),
            "converged": bool(st["converged"]),
            "n_obs": int(st["n"]),
            "n_events": int(st["n_events"]),
        }

    # -- site -----------------------------------------------------------------------------------
    def local(self, data: Table, params: CoxParams, payload: Payload, ctx: SiteContext) -> Payload:
        durations, events, x = _site_arrays(data, params, ctx)
        stage = payload["stage"]
        if stage == "setup":
            check_min_count(len(durations), ctx.min_count, "the risk sets")
            observed = events == 1
            times, counts, _ = event_table(durations[observed], events[observed])
            return {
                "n": len(durations),
                "n_events": int(observed.sum()),
                "event_times": times,
                "event_counts": counts,
                "x_sum": x.sum(0),
                "x_m2": ((x - x.mean(0)) ** 2).sum(0) if len(x) else np.zeros(x.shape[1]),
                "event_x_sum": x[observed].sum(0),
            }
        xc = x - np.asarray(payload["mean"], dtype=np.float64)[None, :]
        beta = np.asarray(payload["beta"], dtype=np.float64)
        grid = np.asarray(payload["grid"], dtype=np.float64)
        if stage == "fit":
            return risk_set_sums(
                durations, events, xc, xc @ beta, grid, np.asarray(payload["tied"], dtype=bool)
            )
        if stage != "concordance":
            raise AppError(f"app 'cox': unknown stage {stage!r}")
        scores = ctx.state.get("scores")
        if scores is None:
            scores = ctx.state["scores"] = linear_scores(xc, beta)
        deaths, comparable = cell_histograms(
            durations,
            events,
            scores,
            grid,
            np.asarray(payload["cell_k"], dtype=np.int64),
            np.asarray(payload["bounds"], dtype=np.int64).reshape(-1, 2),
        )
        # counts never exceed the site's rows: int32 halves the message
        out: Payload = {
            "deaths": deaths.astype(np.int32),
            "comparable": comparable.astype(np.int32),
        }
        if payload["first"]:
            out["local"] = list(local_concordance(durations, events, scores))
        return out

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

        def named(values: np.ndarray) -> dict[str, float]:
            return {n: float(v) for n, v in zip(names, values, strict=True)}

        return {
            "coefficients": named(beta),
            "std_errors": named(se),
            "hazard_ratios": named(np.exp(beta)),
            "z_values": named(beta / se),
            "p_values": named(p),
            "ci_lower": named(ci[:, 0]),
            "ci_upper": named(ci[:, 1]),
            "loglik": loglik,
            "concordance": concordance,
            "n_obs": len(frame),
            "n_events": int(events.sum()),
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        keys = (
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
        return {k: result[k] for k in keys if k in result}
