"""Shared pieces of the regression apps: parameters, feature defaults, the coefficients payload,
coefficient tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from fedflow.apps.base import ColumnKind, Params, Payload, check_unique, named, numeric_columns
from fedflow.errors import AppError

__all__ = [
    "Coefficients",
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
