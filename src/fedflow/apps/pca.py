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

Streaming: a site reads its rows batch by batch (``data.batches``) and merges each batch's
(count, mean, R) into its running one exactly as the coordinator merges sites — one pass, no row
kept. ``project`` scores batch by batch too (the CSV text of the scores is held until the node
agent writes it).

Under ``secure = true`` the per-site factors (not sums) are never sent; instead one summed
phase, ``gram`` (``Gram``): each site sends n and the upper triangle of Σ aaᵀ over its rows
a = [1, x] — n, Σx and Σxxᵀ — summed without any rounding (``ExactGram`` of
``fedflow.apps._exact``: integer limbs multiplied by BLAS). The coordinator forms the scatter
about the pooled mean, Σxxᵀ − ΣxΣxᵀ/n, in exact rationals (so nothing cancels), takes its
Cholesky factor in 60-digit decimal arithmetic and rounds R once (``gram_factor``): the same R,
to float64 rounding, that the factored merge gives, so the SVD that follows keeps the small
components' digits. ``project`` is summed too (its reply is empty).

Each site reveals its row count, its column means and its scatter matrix (in factored form);
under ``secure = true`` the coordinator learns only their sums over sites (n, Σx, the pooled
scatter). A site holding fewer than ``min_count`` rows refuses. Tolerance against scikit-learn ``PCA``
(``svd_solver="full"``) on the pooled data: 1e-8 relative (absolute 1e-12 for entries near zero),
every result key compared (``scale`` only exists, on both sides, when standardized).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps._exact import ExactGram, full_matrix
from fedflow.apps._merge_learning import cholesky_exact, merge_centered_factors, r_factor
from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
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
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PCA",
    "CentredFactor",
    "PCAParams",
    "Gram",
    "Projection",
    "gram_factor",
    "normalise_signs",
    "projections_csv",
]


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


def projections_csv(scores: np.ndarray, *, header: bool = True) -> bytes:
    """Return the CSV bytes of a score matrix: header ``PC1,…`` (unless ``header`` is false,
    for the batches after the first) then one line per row."""
    buffer = io.StringIO()
    names = ",".join(f"PC{i + 1}" for i in range(scores.shape[1])) if header else ""
    np.savetxt(buffer, scores, fmt="%.17g", delimiter=",", header=names, comments="")
    return buffer.getvalue().encode()


def gram_factor(n: int, gram: Exact, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, R) of the pooled data from the summed reply of phase ``gram``: n and the
    upper triangle of the exact Σ aaᵀ over the rows a = [1, x].

    The scatter about the pooled mean, S = Σxxᵀ − ΣxΣxᵀ/n, is formed in exact rationals (no
    digit cancels), and R with RᵀR = S is its Cholesky factor in 60-digit arithmetic, rounded
    once (``cholesky_exact``): the R a QR of the pooled centred rows gives, to float64 rounding,
    so the SVD that follows keeps the small components' digits. A constant column has an exactly
    zero spread."""
    if n < 1:
        raise AppError(f"app 'pca': {n} rows in all")
    try:
        full = full_matrix(gram, p + 1)
    except ValueError as exc:
        raise AppError(f"app 'pca': the summed cross-products: {exc}") from None
    if full[0][0] != n:
        raise AppError(f"app 'pca': the summed cross-products count {full[0][0]} rows, not {n}")
    sums = full[0][1:]
    scatter = [[full[i + 1][j + 1] - sums[i] * sums[j] / n for j in range(p)] for i in range(p)]
    mean = np.array([float(total / n) for total in sums])
    return mean, cholesky_exact(scatter)


class CentredFactor(Payload, frozen=True):
    """A site's row count, column means and the factor R of its rows centred at those means
    (phase ``factor``)."""

    n: int
    mean: np.ndarray
    r: np.ndarray


class Gram(Payload, frozen=True):
    """A site's row count and the upper triangle (row by row) of Σ aaᵀ over its rows
    a = [1, x], summed exactly (``ExactGram``): n, Σx and Σxxᵀ (phase ``gram``)."""

    n: int
    gram: Exact


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
    phases = {
        "factor": Phase(Empty, CentredFactor),
        "gram": Phase(Empty, Gram, summed=True),
        "project": Phase(Projection, Empty, summed=True),
    }
    secure = True
    streaming = True

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

    def start(self, params: PCAParams, ctx: CoordinatorContext) -> Step:
        """Phase ``factor`` (per-site factors), or under ``secure = true`` phase ``gram`` (a sum
        over sites only)."""
        return Continue("gram" if ctx.secure else "factor", Empty())

    # -- site ---------------------------------------------------------------------------------
    @staticmethod
    def _batches(data: Table, params: PCAParams, ctx: SiteContext) -> Iterator[np.ndarray]:
        """The site's rows as float64 matrices, batch by batch (checked against min_count)."""
        check_min_count(data.n_rows, ctx.min_count, "the site's rows")
        columns = list(params.columns or [])
        for batch in data.batches(columns):
            yield batch.matrix(columns)

    def local_factor(
        self, data: Table, params: PCAParams, request: Empty, ctx: SiteContext
    ) -> CentredFactor:
        """Count, mean and R of the site's centred rows, merged batch by batch as the
        coordinator merges sites (``merge_centered_factors``): one pass, no row kept."""
        p = len(params.columns or [])
        n, mean, r = 0.0, np.zeros(p), np.zeros((0, p))
        for x in self._batches(data, params, ctx):
            batch_mean = x.mean(axis=0)
            part = (float(len(x)), batch_mean, r_factor(x - batch_mean))
            n, mean, r = merge_centered_factors([(n, mean, r), part]) if n else part
        return CentredFactor(n=int(n), mean=mean, r=r)

    def local_gram(self, data: Table, params: PCAParams, request: Empty, ctx: SiteContext) -> Gram:
        columns = params.columns or []
        gram = ExactGram(len(columns) + 1)
        for x in self._batches(data, params, ctx):
            try:
                gram.add(np.column_stack([np.ones(len(x)), x]))
            except ValueError as exc:  # a value that is not finite
                raise DataError(f"the site's columns {', '.join(columns)}: {exc}") from None
        return Gram(n=data.n_rows, gram=gram.upper())

    def local_project(
        self, data: Table, params: PCAParams, request: Projection, ctx: SiteContext
    ) -> Empty:
        mean = np.asarray(request.mean, dtype=np.float64)
        scale = np.asarray(request.scale, dtype=np.float64)
        components = np.atleast_2d(np.asarray(request.components, dtype=np.float64))
        parts = [projections_csv(np.zeros((0, len(components))))]  # the header
        for x in self._batches(data, params, ctx):
            parts.append(projections_csv(((x - mean) / scale) @ components.T, header=False))
        ctx.outputs["projections.csv"] = b"".join(parts)
        return Empty()

    # -- coordinator --------------------------------------------------------------------------
    def aggregate_factor(
        self, replies: Mapping[str, CentredFactor], params: PCAParams, ctx: CoordinatorContext
    ) -> Step:
        parts = [(float(r.n), np.asarray(r.mean), np.asarray(r.r)) for r in replies.values()]
        n, mean, r = merge_centered_factors(parts)
        return self._decompose(n, mean, r, params, ctx)

    def aggregate_gram(
        self, replies: Mapping[str, Gram], params: PCAParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, Gram)
        mean, r = gram_factor(int(total.n), total.gram, len(params.columns or []))
        return self._decompose(float(total.n), mean, r, params, ctx)

    def _decompose(
        self, n: float, mean: np.ndarray, r: np.ndarray, params: PCAParams, ctx: CoordinatorContext
    ) -> Step:
        """The result from the pooled count, mean and R of the centred rows (the SVD of R)."""
        columns = list(params.columns or [])
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
        """The sites wrote their scores; the result is the one of the phase before."""
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
