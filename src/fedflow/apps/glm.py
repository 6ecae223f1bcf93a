"""``glm``: generalised linear models (gaussian, binomial, poisson; canonical links) by IRLS.

Iteratively reweighted least squares, as statsmodels ``GLM.fit()`` runs it, with the weighted
least-squares step solved from triangular factors (tall-skinny QR) instead of normal equations:

- Phase ``start`` (request ``Empty``, reply ``StartTerms``), once: each site starts from
  statsmodels' starting means (μ₀ = (y + ȳₛ)/2, binomial (y + ½)/2; ȳₛ the site's own mean, 1
  where a site's counts are all zero: any start converges to the same fit) and returns the factor
  R of [√W·X | √W·z] (RᵀR carries exactly XᵀWX, XᵀWz and zᵀWz), the deviance at μ₀, and count,
  mean and sum of squared deviations of the target (for the null deviance; poisson adds Σ y·log y
  and Σ log y!).
- Phase ``irls`` (request ``Coefficients``, reply ``IRLSTerms``), repeated: the coordinator sends
  β; each site returns the factor at β, the deviance and the log-likelihood at β. The coordinator
  stacks the factors, factors them again, and solves for the next β by back-substitution
  (``ols_from_r``, the solver of linear-regression).
- It stops when the deviance changes by at most ``tol`` × (|deviance| + 0.1) between two rounds
  (R's ``glm`` rule), or after ``max_iter`` updates with ``converged = false``. As statsmodels
  does, it reports β from the last weighted least-squares solve, with the covariance of that solve
  (weights at the β the sites last evaluated) and the deviance and log-likelihood at that β (one
  Newton step earlier, far below the tolerance: the deviance is exact to second order).

Gaussian (identity link) needs phase ``start`` only: the first least-squares solve is the fit.

Statistics follow statsmodels: z statistics with normal p-values for every family (statsmodels'
GLM default); ``scale`` is Pearson χ²/(n − p) for gaussian and 1 otherwise; the gaussian
log-likelihood is the concentrated one (σ² = RSS/n); ``aic`` = −2·loglik + 2p; ``null_deviance``
is the deviance of the constant-mean model (μ = ȳ), whether or not the model has an intercept.
With the default ``tol`` = 1e-10 coefficients, standard errors and the fit statistics match
statsmodels run to convergence within 1e-8 relative (see ``tests/apps/cases/learning.py``).

Each site reveals, per round, aggregates over all its rows: the factor above, its deviance and
log-likelihood, and count, mean and spread of the target; a site holding fewer than ``min_count``
rows refuses. The binomial target must hold 0/1, the poisson target non-negative whole numbers.

Streaming: every round a site re-reads its rows batch by batch (the target first, for its checks
and moments, then the design at β) and folds each batch into its factor or sums; it keeps no row
between rounds, so its memory does not grow with its rows.

Secure (``secure = true``): factors cannot be summed, so the study runs the summed phases
``start_sums`` and ``irls_sums`` instead: each site sends the exact cross-products of
[√W·X | √W·z] (``Exact``: the Gram matrix of the very matrix the plaintext path factors, every
product and sum without rounding), its deviance and log-likelihood, and once its row count, the
exact Σy and Σy², and (poisson) Σ y·log y and Σ log y!. The coordinator receives only their sums
over sites and solves each weighted least-squares step in exact rationals (as linear-regression
does), so the iterates are those of the plaintext path to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedflow.apps._exact import ExactGram
from fedflow.apps._merge import combine_moments
from fedflow.apps._merge_learning import stack_factors
from fedflow.apps._regression import (
    Coefficients,
    FactorAccumulator,
    RegressionParams,
    coefficient_names,
    design_batches,
    exact_least_squares,
    pooled_design,
    regression_columns,
    resolve_features,
    statsmodels_table,
    wald_table,
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
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
    sum_replies,
)
from fedflow.apps.linear import ols_from_r
from fedflow.errors import AppError, DataError, RemoteProtocolError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GLM",
    "GLMParams",
    "IRLSSums",
    "IRLSTerms",
    "PoissonSums",
    "StartSums",
    "StartTerms",
    "family_terms",
]

Family = Literal["gaussian", "binomial", "poisson"]


class GLMParams(RegressionParams, frozen=True):
    """Regression parameters plus ``family``, ``tol`` (relative deviance change), ``max_iter``."""

    family: Family = "gaussian"
    tol: float = 1e-10
    max_iter: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tol > 0:
            raise ValueError("tol must be positive")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")


def _check_target(y: np.ndarray, family: str, column: str) -> None:
    """Raise DataError naming ``column`` when ``y`` does not suit ``family``."""
    if not np.all(np.isfinite(y)):
        raise DataError(f"column '{column}' holds missing or infinite values", column=column)
    if family == "binomial" and not np.all((y == 0) | (y == 1)):
        raise DataError(
            f"column '{column}' must hold only 0 and 1 for family 'binomial'", column=column
        )
    if family == "poisson" and not (np.all(y >= 0) and np.all(y == np.floor(y))):
        raise DataError(
            f"column '{column}' must hold non-negative whole numbers (counts) for family 'poisson'",
            column=column,
        )


def family_terms(
    family: str, y: np.ndarray, eta: np.ndarray | None, mu: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Return (IRLS weights W, working response z, deviance, log-likelihood without constants).

    Give ``eta`` (the linear predictor) or, for the starting point, ``mu``. The poisson
    log-likelihood here lacks −Σ log(y!); the gaussian one is the residual sum of squares.
    Raises AppError when the linear predictor overflowed (the fit diverged).
    """
    if family == "gaussian":
        if eta is None:
            eta = np.asarray(mu)
        resid = y - eta
        rss = float(resid @ resid)
        return np.ones_like(y), y, rss, rss
    if family == "binomial":
        if eta is None:
            assert mu is not None
            eta = np.log(mu) - np.log1p(-mu)
        mu = np.exp(-np.logaddexp(0.0, -eta))  # expit without overflow
        w = mu * (1.0 - mu)
        # y·log μ + (1 − y)·log(1 − μ) = y·η − log(1 + e^η), exact for y in {0, 1}
        loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = eta + (y - mu) / w
        deviance = -2.0 * loglik
    else:  # poisson
        if eta is None:
            assert mu is not None
            eta = np.log(mu)
        with np.errstate(over="ignore"):
            mu = np.exp(eta)
        w = mu
        ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
        with np.errstate(invalid="ignore"):
            z = eta + (y - mu) / mu
            deviance = 2.0 * float(np.sum(ylogy - y * eta - (y - mu)))
            loglik = float(np.sum(y * eta - mu))
    if not (np.all(np.isfinite(z)) and math.isfinite(deviance)):
        raise AppError(f"glm ({family}): the fit diverged (perfect separation or overflow)")
    return w, z, deviance, loglik


def _start_means(params: GLMParams, y: np.ndarray, site_mean: float) -> np.ndarray:
    """Return statsmodels' starting means μ₀ = (y + ȳₛ)/2 (binomial (y + ½)/2) with ȳₛ the
    site's own mean; a site whose counts are all zero starts from μ₀ = (y + 1)/2 instead."""
    if params.family == "binomial":
        return (y + 0.5) / 2.0
    usable = site_mean > 0 or params.family == "gaussian"
    return (y + (site_mean if usable else 1.0)) / 2.0


def _weighted(x: np.ndarray, w: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Return [√W·X | √W·z]: the rows of the weighted least-squares step."""
    root = np.sqrt(w)
    return np.column_stack([x * root[:, None], z * root])


def _poisson_sums(site: str, reply: StartTerms) -> PoissonSums:
    """Return a site's poisson sums; a poisson reply without them is the site's protocol fault."""
    if reply.poisson is None:
        raise RemoteProtocolError(
            "its reply to phase 'start' of app 'glm' (poisson) lacks the field `poisson`",
            site=site,
        )
    return reply.poisson


class PoissonSums(Payload, frozen=True):
    """A site's Σ y·log y and Σ log y! (poisson only: the null deviance and the log-likelihood
    constant)."""

    ylogy: float
    log_factorials: float


class StartTerms(Payload, frozen=True):
    """A site's reply to phase ``start``: the factor R of [√W·X | √W·z] and the deviance and
    log-likelihood at the starting means; count, mean and squared deviations of the target;
    ``poisson`` sums for family ``poisson`` (None otherwise)."""

    factor: np.ndarray
    deviance: float
    loglik: float
    n: int
    y_mean: float
    y_m2: float
    poisson: PoissonSums | None = None


class IRLSTerms(Payload, frozen=True):
    """A site's reply to phase ``irls``: the factor R of [√W·X | √W·z], the deviance and the
    log-likelihood at the β sent."""

    factor: np.ndarray
    deviance: float
    loglik: float


class StartSums(Payload, frozen=True):
    """A site's reply to phase ``start_sums`` (``secure = true``), every field a sum over its
    rows: the exact cross-products of [√W·X | √W·z] at the starting means (upper triangle, row
    by row), the deviance and log-likelihood there, the row count, the exact Σy and Σy², and for
    family ``poisson`` Σ y·log y and Σ log y! (0 otherwise)."""

    gram: Exact
    deviance: float
    loglik: float
    n: int
    y_sums: Exact
    ylogy: float
    log_factorials: float


class IRLSSums(Payload, frozen=True):
    """A site's reply to phase ``irls_sums`` (``secure = true``): the exact cross-products of
    [√W·X | √W·z] at the β sent, the deviance and the log-likelihood there."""

    gram: Exact
    deviance: float
    loglik: float


_Solved = tuple[np.ndarray, np.ndarray, float, float, float]
"""(next β, its unscaled covariance, weighted RSS, deviance, log-likelihood) of one IRLS step."""


class _TargetSummary:
    """What a site's first pass over its target gives: moments, exact sums, poisson sums."""

    def __init__(self) -> None:
        self.moments: list[tuple[float, float, float]] = []
        self.sums = ExactGram(2)  # of [1, y]: n, Σy, Σy²
        self.ylogy = 0.0
        self.log_factorials = 0.0

    @property
    def count_mean_m2(self) -> tuple[int, float, float]:
        n, mean, m2 = combine_moments(self.moments)
        return int(n), mean, m2


class GLM(App[GLMParams]):
    """Generalised linear model: coefficients, std errors, z and p values, deviance, AIC."""

    name = "glm"
    reference = "statsmodels GLM"
    coordinator_imports = ("scipy.special", "scipy.linalg")
    Params = GLMParams
    phases = {
        "start": Phase(Empty, StartTerms),
        "irls": Phase(Coefficients, IRLSTerms),
        "start_sums": Phase(Empty, StartSums, summed=True),
        "irls_sums": Phase(Coefficients, IRLSSums, summed=True),
    }
    secure = True
    streaming = True
    # --compare: every compared value within 1e-8 relative (1e-12 absolute) of statsmodels run to
    # full convergence; counts exactly. The fidelity cases measure 3.0e-9 at most (a small p-value).
    tolerance = 1e-8
    absolute_tolerance = 1e-12
    tolerances = {"n_obs": (0.0, 0.0), "df_resid": (0.0, 0.0)}

    def resolve(self, params: GLMParams, columns: Mapping[str, str]) -> GLMParams:
        return resolve_features(params, columns, self.name)  # type: ignore[no-any-return]

    def columns(self, params: GLMParams) -> dict[str, ColumnKind]:
        return regression_columns(params, "binary" if params.family == "binomial" else "numeric")

    def start(self, params: GLMParams, ctx: CoordinatorContext) -> Step:
        return Continue("start_sums" if ctx.secure else "start", Empty())

    # -- site ---------------------------------------------------------------------------------
    def _target_pass(
        self, data: Table, params: GLMParams, ctx: SiteContext, *, exact: bool
    ) -> _TargetSummary:
        """Read the target batch by batch: check it, and return its moments (and, if ``exact``,
        the exact Σy and Σy²) and the poisson sums."""
        check_min_count(data.n_rows, ctx.min_count, "the site's rows")
        summary = _TargetSummary()
        for batch in data.batches([params.target]):
            y = np.asarray(batch[params.target], dtype=np.float64)
            _check_target(y, params.family, params.target)
            mean = float(y.mean()) if len(y) else 0.0
            summary.moments.append((float(len(y)), mean, float(((y - mean) ** 2).sum())))
            if exact:
                summary.sums.add(np.column_stack([np.ones(len(y)), y]))
            if params.family == "poisson":
                positive = y[y > 0]
                summary.ylogy += float(np.sum(positive * np.log(positive)))
                summary.log_factorials += float(sum(math.lgamma(v + 1.0) for v in y.tolist()))
        return summary

    def _weighted_pass(
        self,
        data: Table,
        params: GLMParams,
        fold: FactorAccumulator | ExactGram,
        *,
        beta: np.ndarray | None = None,
        site_mean: float = 0.0,
    ) -> tuple[float, float]:
        """Read the design batch by batch and fold [√W·X | √W·z] into ``fold``: the IRLS terms
        at ``beta``, or at the starting means when ``beta`` is None. Returns (deviance,
        log-likelihood) summed over the batches."""
        deviance = loglik = 0.0
        for x, y in design_batches(data, params):
            if beta is not None:
                w, z, dev, ll = family_terms(params.family, y, x @ beta)
            else:
                w, z, dev, ll = family_terms(
                    params.family, y, None, _start_means(params, y, site_mean)
                )
            fold.add(_weighted(x, w, z))
            deviance += dev
            loglik += ll
        return deviance, loglik

    def local_start(
        self, data: Table, params: GLMParams, request: Empty, ctx: SiteContext
    ) -> StartTerms:
        summary = self._target_pass(data, params, ctx, exact=False)
        n, mean, m2 = summary.count_mean_m2
        factor = FactorAccumulator(len(coefficient_names(params)) + 1)
        deviance, loglik = self._weighted_pass(data, params, factor, site_mean=mean)
        poisson = None
        if params.family == "poisson":
            poisson = PoissonSums(ylogy=summary.ylogy, log_factorials=summary.log_factorials)
        return StartTerms(
            factor=factor.r,
            deviance=deviance,
            loglik=loglik,
            n=n,
            y_mean=mean,
            y_m2=m2,
            poisson=poisson,
        )

    def local_irls(
        self, data: Table, params: GLMParams, request: Coefficients, ctx: SiteContext
    ) -> IRLSTerms:
        factor = FactorAccumulator(len(coefficient_names(params)) + 1)
        beta = np.asarray(request.beta, dtype=np.float64)
        deviance, loglik = self._weighted_pass(data, params, factor, beta=beta)
        return IRLSTerms(factor=factor.r, deviance=deviance, loglik=loglik)

    def local_start_sums(
        self, data: Table, params: GLMParams, request: Empty, ctx: SiteContext
    ) -> StartSums:
        summary = self._target_pass(data, params, ctx, exact=True)
        n, mean, _ = summary.count_mean_m2
        gram = ExactGram(len(coefficient_names(params)) + 1)
        deviance, loglik = self._weighted_pass(data, params, gram, site_mean=mean)
        return StartSums(
            gram=gram.upper(),
            deviance=deviance,
            loglik=loglik,
            n=n,
            y_sums=summary.sums.upper()[1:],  # (Σy, Σy²) of the Gram of [1, y]
            ylogy=summary.ylogy,
            log_factorials=summary.log_factorials,
        )

    def local_irls_sums(
        self, data: Table, params: GLMParams, request: Coefficients, ctx: SiteContext
    ) -> IRLSSums:
        gram = ExactGram(len(coefficient_names(params)) + 1)
        beta = np.asarray(request.beta, dtype=np.float64)
        deviance, loglik = self._weighted_pass(data, params, gram, beta=beta)
        return IRLSSums(gram=gram.upper(), deviance=deviance, loglik=loglik)

    # -- coordinator --------------------------------------------------------------------------
    def aggregate_start(
        self, replies: Mapping[str, StartTerms], params: GLMParams, ctx: CoordinatorContext
    ) -> Step:
        n, y_mean, y_m2 = combine_moments(
            [(float(q.n), q.y_mean, q.y_m2) for q in replies.values()]
        )
        ctx.state.update(n=n, y_mean=y_mean, y_m2=y_m2, iterations=0)
        if params.family == "poisson":
            sums = [_poisson_sums(site, q) for site, q in replies.items()]
            ctx.state["ylogy"] = sum(s.ylogy for s in sums)
            ctx.state["log_factorials"] = sum(s.log_factorials for s in sums)
        self._check_count(params, n)
        return self._first_step(params, ctx, self._solve(replies, params), "irls")

    def aggregate_start_sums(
        self, replies: Mapping[str, StartSums], params: GLMParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, StartSums)
        n = total.n
        self._check_count(params, n)
        y_sum, y_squares = total.y_sums
        # the pooled mean and squared deviations exactly, rounded once
        ctx.state.update(
            n=float(n),
            y_mean=float(y_sum / n),
            y_m2=float(y_squares - y_sum * y_sum / n),
            iterations=0,
            ylogy=total.ylogy,
            log_factorials=total.log_factorials,
        )
        return self._first_step(params, ctx, self._solve_exact(total, params), "irls_sums")

    def aggregate_irls(
        self, replies: Mapping[str, IRLSTerms], params: GLMParams, ctx: CoordinatorContext
    ) -> Step:
        return self._next_step(params, ctx, self._solve(replies, params), "irls")

    def aggregate_irls_sums(
        self, replies: Mapping[str, IRLSSums], params: GLMParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, IRLSSums)
        return self._next_step(params, ctx, self._solve_exact(total, params), "irls_sums")

    @staticmethod
    def _check_count(params: GLMParams, n: float) -> None:
        p = len(coefficient_names(params))
        if n <= p:
            raise AppError(f"glm: {int(n)} observations for {p} coefficients")

    def _first_step(
        self, params: GLMParams, ctx: CoordinatorContext, solved: _Solved, phase: str
    ) -> Step:
        """After the start: refuse a one-class or all-zero target; gaussian is done (identity
        link: the first solve is the fit), the others iterate with ``phase``."""
        beta, unscaled, rss, deviance, _ = solved
        y_mean = ctx.state["y_mean"]
        if params.family == "binomial" and not 0.0 < y_mean < 1.0:
            raise AppError(f"glm (binomial): the target '{params.target}' holds one class only")
        if params.family == "poisson" and not y_mean > 0:
            raise AppError(f"glm (poisson): the target '{params.target}' is zero everywhere")
        if params.family == "gaussian":
            return self._done(params, ctx, beta, unscaled, rss, rss, iterations=1)
        ctx.state["deviance"] = deviance
        return Continue(phase, Coefficients(beta=beta))

    def _next_step(
        self, params: GLMParams, ctx: CoordinatorContext, solved: _Solved, phase: str
    ) -> Step:
        """After an IRLS round: another round of ``phase`` until the deviance settles."""
        beta, unscaled, _, deviance, loglik = solved
        previous = ctx.state["deviance"]
        iterations = ctx.state["iterations"] = ctx.state["iterations"] + 1
        converged = abs(deviance - previous) <= params.tol * (abs(deviance) + 0.1)
        if not converged and iterations < params.max_iter:
            ctx.state["deviance"] = deviance
            return Continue(phase, Coefficients(beta=beta))
        if not converged:
            ctx.notes.append(f"glm did not converge in {params.max_iter} iterations")
        # As statsmodels reports it: β from the last weighted least-squares solve, its covariance
        # from that solve's weights (at the β the sites evaluated), deviance at the evaluated β.
        return self._done(
            params, ctx, beta, unscaled, deviance, loglik, iterations, converged=converged
        )

    @staticmethod
    def _solve(replies: Mapping[str, StartTerms | IRLSTerms], params: GLMParams) -> _Solved:
        """Return (next β, its unscaled covariance, weighted RSS, deviance, log-likelihood):
        the weighted least-squares step from the stacked factors, and the summed fit terms."""
        names = coefficient_names(params)
        r = stack_factors([reply.factor for reply in replies.values()])
        beta, unscaled, rss = ols_from_r(r, names, app=f"glm ({params.family})")
        deviance = float(sum(reply.deviance for reply in replies.values()))
        loglik = float(sum(reply.loglik for reply in replies.values()))
        return beta, unscaled, rss, deviance, loglik

    @staticmethod
    def _solve_exact(total: StartSums | IRLSSums, params: GLMParams) -> _Solved:
        """Return the same as ``_solve`` from the summed exact cross-products: the weighted
        least-squares step solved in exact rationals, each number rounded once."""
        names = coefficient_names(params)
        fit = exact_least_squares(total.gram, names, f"glm ({params.family})")
        beta = np.array([float(c) for c in fit.coef])
        unscaled = np.array([[float(v) for v in row] for row in fit.inverse])
        return beta, unscaled, float(fit.rss), total.deviance, total.loglik

    def _done(
        self,
        params: GLMParams,
        ctx: CoordinatorContext,
        beta: np.ndarray,
        unscaled: np.ndarray,
        deviance: float,
        loglik: float,
        iterations: int,
        *,
        converged: bool = True,
    ) -> Done:
        """Return the final result: Wald table and fit statistics at ``beta``."""
        names = coefficient_names(params)
        p = len(names)
        n = float(ctx.state["n"])
        y_mean = float(ctx.state["y_mean"])
        df_resid = n - p
        if params.family == "gaussian":
            scale = deviance / df_resid
            loglik = -0.5 * n * (1.0 + math.log(2.0 * math.pi * deviance / n))
            null_deviance = float(ctx.state["y_m2"])
        elif params.family == "binomial":
            scale = 1.0
            null_deviance = (
                -2.0 * n * (y_mean * math.log(y_mean) + (1 - y_mean) * math.log1p(-y_mean))
            )
        else:
            scale = 1.0
            loglik -= float(ctx.state["log_factorials"])
            null_deviance = 2.0 * (float(ctx.state["ylogy"]) - n * y_mean * math.log(y_mean))
        se = np.sqrt(scale * np.diag(unscaled))
        result: dict[str, Any] = wald_table(names, beta, se, None)
        result.update(
            deviance=deviance,
            null_deviance=null_deviance,
            scale=scale,
            loglik=loglik,
            aic=-2.0 * loglik + 2.0 * p,
            iterations=iterations,
            converged=bool(converged),
            n_obs=int(n),
            df_resid=df_resid,
            family=params.family,
        )
        return Done(result)

    # -- reference ----------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: GLMParams) -> dict[str, Any]:
        import statsmodels.api as sm

        names = coefficient_names(params)
        family = {
            "gaussian": sm.families.Gaussian,
            "binomial": sm.families.Binomial,
            "poisson": sm.families.Poisson,
        }[params.family]()
        model = sm.GLM(*pooled_design(pooled, params), family=family)
        # iterate to full convergence (statsmodels' default stops at a deviance change of 1e-8)
        fit = model.fit(tol=1e-13, maxiter=200)
        return {
            **statsmodels_table(names, fit, "z_values"),
            "deviance": float(fit.deviance),
            "null_deviance": float(fit.null_deviance),
            "scale": float(fit.scale),
            "loglik": float(fit.llf),
            "aic": float(fit.aic),
            "n_obs": int(fit.nobs),
            "df_resid": float(fit.df_resid),
            "family": params.family,
            "converged": bool(fit.converged),
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        keys = (
            "coefficients",
            "std_errors",
            "z_values",
            "p_values",
            "deviance",
            "null_deviance",
            "scale",
            "loglik",
            "aic",
            "n_obs",
            "df_resid",
        )
        return {key: result[key] for key in keys}
