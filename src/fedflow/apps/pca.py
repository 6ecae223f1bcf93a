"""``pca``: exact principal components from the federated scatter matrix, in factored form.

Each site centres its rows at its own mean and sends count, mean and the triangular factor R of
its centred rows (RᵀR is the site's scatter matrix Σ(x − x̄ₛ)(x − x̄ₛ)ᵀ: exactly the information of
the per-column sums and cross-products, no rows). The coordinator merges them Chan-style
(``merge_centered_factors``): stacking every Rₛ with √nₛ(x̄ₛ − x̄) and factoring again gives R of
the pooled centred data, and the SVD of R gives the pooled data's singular values and right
singular vectors without ever forming the covariance matrix (whose condition number is the square
of the data's). This keeps small components accurate.

Definitions (those of scikit-learn):

- ``explained_variance`` = s²/(n − 1) for the singular values s (sample variance, ddof = 1);
  ``explained_variance_ratio`` divides by the total variance of all components, also when
  ``n_components`` keeps fewer.
- ``standardize = true`` divides every centred column by its population standard deviation
  (ddof = 0, as ``StandardScaler`` does) before the decomposition; the result then holds ``scale``
  (those deviations). Explained variances are still s²/(n − 1), so they sum to p·n/(n − 1).
- Signs: each component is flipped so that its entry of largest absolute value is positive
  (the first such entry on a tie); the centralized twin normalises the same way.

Phases: ``factor`` (request ``Empty``, reply ``CentredFactor``: count, mean, R) and, with
``projections = true``, ``project`` (request ``Projection``: the components, mean and scale;
reply ``Empty``): each site writes its own rows' scores (``PC1``, ``PC2``, … in row order) to
``projections.csv`` in its own output folder (``SiteContext.outputs``). The scores never leave
the site.

Each site reveals its row count, its column means and its scatter matrix (in factored form); a
site holding fewer than ``min_count`` rows refuses. Tolerance against scikit-learn ``PCA``
(``svd_solver="full"``) on the pooled data: 1e-8 relative (absolute 1e-12 for entries near zero),
every result key compared (``scale`` only exists, on both sides, when standardized).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps._merge_learning import merge_centered_factors, r_factor
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
    numeric_columns,
)
from fedflow.errors import AppError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PCA", "CentredFactor", "PCAParams", "Projection", "normalise_signs", "projections_csv"]


class PCAParams(Params, frozen=True):
    """``columns`` (default: every numeric column), ``n_components`` (default: all),
    ``standardize`` (divide by the population standard deviation), ``projections`` (write
    each site's scores to its own output folder)."""

    columns: list[str] | None = None
    n_components: int | None = None
    standardize: bool = False
    projections: bool = False

    def __post_init__(self) -> None:
        if self.columns is not None:
            if not self.columns:
                raise ValueError("columns is empty")
            check_unique(self.columns, "columns")
            if self.n_components is not None and self.n_components > len(self.columns):
                raise ValueError(
                    f"n_components = {self.n_components} exceeds the {len(self.columns)} columns"
                )
        if self.n_components is not None and self.n_components < 1:
            raise ValueError("n_components must be at least 1")


def normalise_signs(components: np.ndarray) -> np.ndarray:
    """Return ``components`` (one per row) flipped so each row's largest-|value| entry is > 0."""
    out = np.array(components, dtype=np.float64, copy=True)
    if out.size == 0:
        return out
    lead = np.argmax(np.abs(out), axis=1)
    signs = np.sign(out[np.arange(out.shape[0]), lead])
    signs[signs == 0] = 1.0
    return out * signs[:, None]


def projections_csv(scores: np.ndarray) -> bytes:
    """Return the CSV bytes of a score matrix: header ``PC1,…`` then one line per row."""
    buffer = io.StringIO()
    header = ",".join(f"PC{i + 1}" for i in range(scores.shape[1]))
    np.savetxt(buffer, scores, fmt="%.17g", delimiter=",", header=header, comments="")
    return buffer.getvalue().encode()


class CentredFactor(Payload, frozen=True):
    """A site's row count, column means and the factor R of its rows centred at those means
    (phase ``factor``)."""

    n: int
    mean: np.ndarray
    r: np.ndarray


class Projection(Payload, frozen=True):
    """What a site needs to score its own rows: components (one per row), mean and scale
    (phase ``project``; the site replies ``Empty`` and keeps the scores)."""

    components: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


class PCA(App[PCAParams]):
    """Principal component analysis: components, explained variance (ratio), mean."""

    name = "pca"
    reference = "scikit-learn PCA"
    Params = PCAParams
    phases = {"factor": Phase(Empty, CentredFactor), "project": Phase(Projection, Empty)}

    def resolve(self, params: PCAParams, columns: Mapping[str, str]) -> PCAParams:
        if params.columns is not None:
            return params
        numeric = numeric_columns(columns)
        if not numeric:
            raise AppError("app 'pca': the sites' data has no numeric column")
        if params.n_components is not None and params.n_components > len(numeric):
            raise AppError(
                f"app 'pca': n_components = {params.n_components} exceeds the "
                f"{len(numeric)} numeric columns"
            )
        return msgspec.structs.replace(params, columns=numeric)

    def columns(self, params: PCAParams) -> dict[str, ColumnKind]:
        return {c: "numeric" for c in params.columns or []}

    # -- site ---------------------------------------------------------------------------------
    def local_factor(
        self, data: Table, params: PCAParams, request: Empty, ctx: SiteContext
    ) -> CentredFactor:
        x = data.matrix(params.columns or [])
        check_min_count(len(x), ctx.min_count, "the site's rows")
        mean = x.mean(axis=0)
        return CentredFactor(n=len(x), mean=mean, r=r_factor(x - mean))

    def local_project(
        self, data: Table, params: PCAParams, request: Projection, ctx: SiteContext
    ) -> Empty:
        x = data.matrix(params.columns or [])
        check_min_count(len(x), ctx.min_count, "the site's rows")
        mean = np.asarray(request.mean, dtype=np.float64)
        scale = np.asarray(request.scale, dtype=np.float64)
        components = np.atleast_2d(np.asarray(request.components, dtype=np.float64))
        scores = ((x - mean) / scale) @ components.T
        ctx.outputs["projections.csv"] = projections_csv(scores)
        return Empty()

    # -- coordinator --------------------------------------------------------------------------
    def aggregate_factor(
        self, replies: Mapping[str, CentredFactor], params: PCAParams, ctx: CoordinatorContext
    ) -> Step:
        columns = list(params.columns or [])
        parts = [(float(r.n), np.asarray(r.mean), np.asarray(r.r)) for r in replies.values()]
        n, mean, r = merge_centered_factors(parts)
        if n < 2:
            raise AppError(f"app 'pca': {int(n)} rows in all; at least 2 are needed")
        scale = np.ones(len(columns))
        if params.standardize:
            scale = np.sqrt(np.sum(r * r, axis=0) / n)
            constant = [c for c, s in zip(columns, scale, strict=True) if not s > 0]
            if constant:
                raise AppError(
                    f"app 'pca': cannot standardize constant column(s): {', '.join(constant)}"
                )
            r = r / scale
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        variance = s**2 / (n - 1)
        total = float(np.sum(r * r)) / (n - 1)
        k = params.n_components or min(int(n), len(columns))
        if k > len(s):
            raise AppError(f"app 'pca': n_components = {k} exceeds the {len(s)} available")
        components = normalise_signs(vt[:k])
        result: dict[str, Any] = {
            "components": components.tolist(),
            "explained_variance": variance[:k].tolist(),
            "explained_variance_ratio": (variance[:k] / total).tolist(),
            "mean": mean.tolist(),
            "columns": columns,
            "n_obs": int(n),
        }
        if params.standardize:
            result["scale"] = scale.tolist()
        if not params.projections:
            return Done(result)
        ctx.state["result"] = result
        return Continue("project", Projection(components=components, mean=mean, scale=scale))

    def aggregate_project(
        self, replies: Mapping[str, Empty], params: PCAParams, ctx: CoordinatorContext
    ) -> Step:
        """The sites wrote their scores; the result is the one of phase ``factor``."""
        return Done(ctx.state["result"])

    # -- reference ----------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: PCAParams) -> dict[str, Any]:
        from sklearn.decomposition import PCA as SkPCA
        from sklearn.preprocessing import StandardScaler

        columns = list(params.columns or [])
        x = pooled[columns].to_numpy(dtype=np.float64)
        result: dict[str, Any] = {}
        if params.standardize:
            scaler = StandardScaler()
            x = scaler.fit_transform(x)
            result["scale"] = scaler.scale_.tolist()
            mean = scaler.mean_
        else:
            mean = x.mean(axis=0)
        pca = SkPCA(n_components=params.n_components, svd_solver="full").fit(x)
        if not params.standardize:
            mean = pca.mean_
        result.update(
            components=normalise_signs(pca.components_).tolist(),
            explained_variance=pca.explained_variance_.tolist(),
            explained_variance_ratio=pca.explained_variance_ratio_.tolist(),
            mean=[float(v) for v in mean],
            columns=columns,
            n_obs=int(x.shape[0]),
        )
        return result
