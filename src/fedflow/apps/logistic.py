"""``logistic-regression``: exact Newton–Raphson on the sites' gradients and Hessians.

One phase, ``newton``, repeated: the coordinator sends β (``Coefficients``, zeros at first); each
site returns Xᵀ(y − p), XᵀWX, its log-likelihood at β and its row count (``NewtonTerms``); the
coordinator sums them and takes the Newton step β + H⁻¹g. It stops when the largest step is below
``tol`` × (1 + max|β|), or after ``max_iter`` steps (then ``converged`` is false and a note says
so). Standard errors are √diag(H⁻¹) at the final iterate, as statsmodels reports them.

Streaming: each round a site re-reads its rows batch by batch and sums the terms over batches;
it keeps no row between rounds, so its memory does not grow with its rows.

Secure (``secure = true``): every field of ``NewtonTerms`` is a sum over rows, so the phase is
summed as it stands: secure aggregation delivers the sums over sites (floats summed exactly and
rounded once, n exact) and the coordinator takes the same Newton step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._regression import (
    Coefficients,
    RegressionParams,
    coefficient_names,
    design_batches,
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
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
)
from fedflow.errors import AppError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LogisticParams", "LogisticRegression", "NewtonTerms"]


class LogisticParams(RegressionParams, frozen=True):
    """Regression parameters plus ``tol`` (relative step size) and ``max_iter``."""

    tol: float = 1e-10
    max_iter: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tol > 0:
            raise ValueError("tol must be positive")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")


def _local_terms(
    x: np.ndarray, y: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    eta = x @ beta
    p = np.exp(-np.logaddexp(0.0, -eta))  # expit without overflow
    w = p * (1.0 - p)
    gradient = x.T @ (y - p)
    hessian = (x * w[:, None]).T @ x
    loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    return gradient, hessian, loglik


class NewtonTerms(Payload, frozen=True):
    """A site's gradient Xᵀ(y − p), Hessian XᵀWX, log-likelihood at β and row count."""

    gradient: np.ndarray
    hessian: np.ndarray
    loglik: float
    n: int


class LogisticRegression(App[LogisticParams]):
    """Binary logistic regression: coefficients, standard errors, z and p values, iterations."""

    name = "logistic-regression"
    Params = LogisticParams
    reference = "statsmodels Logit"
    coordinator_imports = ("scipy.special",)
    phases = {"newton": Phase(Coefficients, NewtonTerms, summed=True)}
    secure = True
    streaming = True
    # --compare: every compared value within 1e-8 relative (1e-12 absolute) of statsmodels run
    # to tol = 1e-14; counts exactly. The fidelity cases measure 1.3e-11 at most.
    tolerance = 1e-8
    absolute_tolerance = 1e-12
    tolerances = {"n_obs": (0.0, 0.0)}

    def resolve(self, params: LogisticParams, columns: Mapping[str, str]) -> LogisticParams:
        return resolve_features(params, columns, self.name)  # type: ignore[no-any-return]

    def columns(self, params: LogisticParams) -> dict[str, ColumnKind]:
        return regression_columns(params, "binary")

    def start(self, params: LogisticParams, ctx: CoordinatorContext) -> Step:
        k = len(coefficient_names(params))
        ctx.state.update(beta=np.zeros(k), iterations=0)
        return Continue("newton", Coefficients(beta=ctx.state["beta"]))

    # -- site ---------------------------------------------------------------------------------
    def local_newton(
        self, data: Table, params: LogisticParams, request: Coefficients, ctx: SiteContext
    ) -> NewtonTerms:
        beta = np.asarray(request.beta, dtype=np.float64)
        k = len(beta)
        gradient, hessian, loglik, n = np.zeros(k), np.zeros((k, k)), 0.0, 0
        for x, y in design_batches(data, params):
            g, h, ll = _local_terms(x, y, beta)
            gradient += g
            hessian += h
            loglik += ll
            n += len(y)
        return NewtonTerms(gradient=gradient, hessian=hessian, loglik=loglik, n=n)

    # -- coordinator --------------------------------------------------------------------------
    def aggregate_newton(
        self, replies: Mapping[str, NewtonTerms], params: LogisticParams, ctx: CoordinatorContext
    ) -> Step:
        names = coefficient_names(params)
        if ctx.secure:  # the sum over sites is all the coordinator receives
            total = replies[SUM]
            gradient, hessian, loglik, n = total.gradient, total.hessian, total.loglik, total.n
        else:
            gradient = np.sum([r.gradient for r in replies.values()], axis=0)
            hessian = np.sum([r.hessian for r in replies.values()], axis=0)
            loglik = float(sum(r.loglik for r in replies.values()))
            n = int(sum(r.n for r in replies.values()))
        beta = ctx.state["beta"]
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            raise AppError(
                "logistic-regression: the Hessian is singular (collinear features, or a feature "
                "that separates the classes perfectly)"
            ) from None
        beta = beta + step
        iterations = ctx.state["iterations"] + 1
        ctx.state.update(beta=beta, iterations=iterations)
        converged = bool(np.max(np.abs(step)) <= params.tol * (1.0 + np.max(np.abs(beta))))
        if not converged and iterations < params.max_iter:
            return Continue("newton", Coefficients(beta=beta))
        if not converged:
            ctx.notes.append(
                f"logistic-regression did not converge in {params.max_iter} iterations"
            )
        if not np.all(np.isfinite(beta)):
            raise AppError("logistic-regression diverged (perfect separation?)")
        cov = np.linalg.inv(hessian)
        se = np.sqrt(np.diag(cov))
        result: dict[str, Any] = wald_table(names, beta, se, None)
        # log-likelihood at the final β: one Newton step past the last evaluation is below tol.
        result.update(
            loglik=loglik,
            n_obs=n,
            iterations=iterations,
            converged=converged,
        )
        return Done(result)

    def centralized(self, pooled: pd.DataFrame, params: LogisticParams) -> dict[str, Any]:
        import warnings

        import statsmodels.api as sm

        names = coefficient_names(params)
        with warnings.catch_warnings():
            # statsmodels warns when its own tolerance is not met; ours is tighter on purpose
            warnings.simplefilter("ignore")
            fit = sm.Logit(*pooled_design(pooled, params)).fit(
                method="newton", tol=1e-14, maxiter=200, disp=False
            )
        return {
            **statsmodels_table(names, fit, "z_values"),
            "loglik": float(fit.llf),
            "n_obs": int(fit.nobs),
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        keys = ("coefficients", "std_errors", "z_values", "p_values", "loglik", "n_obs")
        return {key: result[key] for key in keys}
