"""Shared pieces of the regression apps: parameters, feature defaults, the coefficients payload,
coefficient tables, the design read batch by batch, and the exact least-squares solve of their
secure formulations."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import msgspec
import numpy as np

from fedflow.apps._exact import (
    ExactGram,
    ExactLeastSquares,
    RankDeficient,
    full_matrix,
    solve_normal_equations,
)
from fedflow.apps._merge_learning import r_factor
from fedflow.apps.base import (
    ColumnKind,
    Params,
    Payload,
    Table,
    check_unique,
    named,
    numeric_columns,
)
from fedflow.errors import AppError, DataError

__all__ = [
    "Coefficients",
    "FactorAccumulator",
    "design_batches",
    "exact_gram",
    "exact_least_squares",
    "RegressionParams",
    "coefficient_names",
    "pooled_design",
    "regression_columns",
    "resolve_features",
    "statsmodels_table",
    "wald_table",
]


class RegressionParams(Params, frozen=True):
    """``target``; ``features`` (default: every numeric column but the target); ``intercept``."""

    target: str
    features: list[str] | None = None
    intercept: bool = True

    def __post_init__(self) -> None:
        if self.features is not None:
            if self.target in self.features:
                raise ValueError(f"the target '{self.target}' is also listed in features")
            check_unique(self.features, "features")
            if not self.features and not self.intercept:
                raise ValueError("no features and no intercept: nothing to fit")


class Coefficients(Payload, frozen=True):
    """The coefficients β (intercept first when fitted), sent to every site to evaluate the
    model at (logistic regression's ``newton`` phase, glm's ``irls`` phase)."""

    beta: np.ndarray


def resolve_features(params: RegressionParams, columns: Mapping[str, str], app: str) -> Any:
    """Return params with ``features`` filled by every numeric column except the target."""
    if params.target not in columns:
        raise AppError(f"app '{app}': target column '{params.target}' is not in the sites' data")
    if params.features is not None:
        return params
    features = numeric_columns(columns, exclude=[params.target])
    if not features:
        raise AppError(f"app '{app}': the data has no numeric column besides '{params.target}'")
    return msgspec.structs.replace(params, features=features)


def regression_columns(params: RegressionParams, target_kind: ColumnKind) -> dict[str, ColumnKind]:
    """Return the columns a regression needs at every site."""
    needed: dict[str, ColumnKind] = {params.target: target_kind}
    for f in params.features or []:
        needed[f] = "numeric"
    return needed


def coefficient_names(params: RegressionParams) -> list[str]:
    """Return the coefficient names: ``intercept`` first when fitted, then the features."""
    return (["intercept"] if params.intercept else []) + list(params.features or [])


def wald_table(
    names: Sequence[str], coef: np.ndarray, se: np.ndarray, dof: float | None
) -> dict[str, dict[str, float]]:
    """Return coefficients, standard errors, test statistics and two-sided p-values.

    ``dof`` None uses the normal distribution (z), otherwise Student's t with ``dof`` degrees.
    """
    from scipy import special  # scipy.special loads in a third of the time of scipy.stats

    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = coef / se
    if dof is None:
        p = 2.0 * special.ndtr(-np.abs(statistic))
        key = "z_values"
    else:
        p = 2.0 * special.stdtr(dof, -np.abs(statistic))
        key = "t_values"
    return {
        "coefficients": named(names, coef),
        "std_errors": named(names, se),
        key: named(names, statistic),
        "p_values": named(names, p),
    }


def pooled_design(pooled: Any, params: RegressionParams) -> tuple[Any, Any]:
    """Return (y, X) for statsmodels from a pooled DataFrame, with a constant when fitted."""
    import statsmodels.api as sm

    x = pooled[list(params.features or [])].astype(float)
    if params.intercept:
        x = sm.add_constant(x, has_constant="add")
    return pooled[params.target].astype(float), x


def statsmodels_table(
    names: Sequence[str], fit: Any, statistic: str
) -> dict[str, dict[str, float]]:
    """Return coefficients, standard errors, ``statistic`` (t or z values) and p-values of a
    statsmodels fit, keyed by coefficient name as the federated apps report them."""
    columns = {
        "coefficients": fit.params,
        "std_errors": fit.bse,
        statistic: fit.tvalues,
        "p_values": fit.pvalues,
    }
    return {key: named(names, np.asarray(values)) for key, values in columns.items()}


# -- the design, batch by batch (streaming) ---------------------------------------------------
def design_batches(
    data: Table, params: RegressionParams
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (X, y) batch by batch: X float64 with a leading 1s column when fitted, y float64.

    Reads the site's rows only through ``data.batches`` (the features and the target), so
    memory holds one batch at a time whatever the site's row count.
    """
    features = list(params.features or [])
    for batch in data.batches([*features, params.target]):
        yield (
            batch.matrix(features, intercept=params.intercept),
            np.asarray(batch[params.target], dtype=np.float64),
        )


class FactorAccumulator:
    """The triangular factor R of a tall matrix given block by block: R of [R_so_far; block].

    Each step is a QR decomposition of at most (columns + block rows) rows, backward stable as
    one QR of the whole matrix; RᵀR equals the Gram matrix of every block added.
    """

    def __init__(self, columns: int) -> None:
        self.r = np.zeros((0, columns))

    def add(self, block: np.ndarray) -> None:
        """Fold the rows of ``block`` (rows × columns) in."""
        if len(block):
            self.r = r_factor(np.vstack([self.r, block]))


# -- exact cross-products and their solve (the secure formulations) ---------------------------
def exact_gram(blocks: Iterator[np.ndarray], columns: int, where: Sequence[str]) -> ExactGram:
    """Return the exact Gram matrix of the row blocks (each rows × ``columns``).

    ``where`` names each column, for the error: a DataError naming the column when a value is
    NaN or infinite.
    """
    gram = ExactGram(columns)
    for block in blocks:
        finite = np.isfinite(block)
        if not finite.all():
            column = where[int(np.flatnonzero(~finite.all(axis=0))[0])]
            raise DataError(f"column '{column}' holds a non-finite value", column=column)
        gram.add(block)
    return gram


def exact_least_squares(
    upper: Sequence[Fraction], names: Sequence[str], app: str
) -> ExactLeastSquares:
    """Solve least squares exactly from the upper triangle of the Gram matrix of [X | y].

    Raises AppError (naming ``app`` and the columns) when the design is rank-deficient, with the
    same rule as the plaintext solver ``ols_from_r``.
    """
    k = len(names) + 1
    try:
        gram = full_matrix(upper, k)
    except ValueError as exc:
        raise AppError(
            f"{app}: the summed cross-products do not fit {len(names)} coefficients: {exc}"
        ) from None
    try:
        return solve_normal_equations(gram)
    except RankDeficient as exc:
        bad = [names[i] for i in exc.columns]
        raise AppError(
            f"{app}: the design matrix is rank-deficient (collinear or constant "
            f"features): {', '.join(bad)}"
        ) from None
