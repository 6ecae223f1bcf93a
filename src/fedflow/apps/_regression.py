"""Shared pieces of the regression apps: parameters, feature defaults, the coefficients payload,
coefficient tables, the design read batch by batch, and the exact least-squares solve of their
secure formulations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
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

    Blocks are written into one Fortran-order buffer below the current R, so LAPACK factors
    them in place: no stacking, no copy. Blocks of ``LAPACK_ROWS`` rows or more go to scipy's
    ``dgeqrf`` directly (five times faster than ``numpy.linalg.qr`` on a 65,536 × 7 block here,
    with the same digits: both are LAPACK's Householder QR); smaller ones to numpy, so a site
    with few rows never imports scipy.linalg.
    """

    def __init__(self, columns: int, *, rows: int | None = None) -> None:
        """``rows``: the rows the caller will add, when it knows them. A fold of fewer than
        ``SCIPY_ROWS`` rows stays with numpy's QR (the same digits) and never imports scipy.linalg,
        whose import costs a site about 23 MiB of memory and 0.25 s; more, or unknown (an
        iterative app folds its rows once per iteration), and large blocks go to scipy."""
        self._columns = columns
        self._scipy = rows is None or rows >= SCIPY_ROWS
        self._buffer = np.zeros((columns, columns), order="F")
        """Rows [0, held) hold R; a block is written below them and factored with them."""
        self._held = 0
        self._below = np.tril_indices(columns, -1)
        """Where R's zeros are: LAPACK leaves its reflectors there."""
        self._restore_blas: Callable[[], None] | None = None
        """Set while BLAS runs on one thread for the folds: from the first LAPACK fold until
        ``r`` is read (limiting it at each fold cost about 0.3 s over 100M rows, under cProfile)."""

    @property
    def r(self) -> np.ndarray:
        """R so far: min(rows added, columns) × columns, upper triangular."""
        self._release_blas()
        return self._buffer[: self._held].copy()

    def _release_blas(self) -> None:
        restore, self._restore_blas = self._restore_blas, None
        if restore is not None:
            restore()

    def __del__(self) -> None:  # an accumulator left before its R was read
        with contextlib.suppress(Exception):
            self._release_blas()

    def add(self, block: np.ndarray) -> None:
        """Fold the rows of ``block`` (rows × columns) in."""
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != self._columns:
            raise ValueError(f"a block of {self._columns} columns expected, got {block.shape}")
        if len(block):
            self._space(len(block))[:] = block
            self._fold(len(block))

    def add_columns(self, columns: Sequence[np.ndarray | float], rows: int) -> None:
        """Fold in a block of ``rows`` rows given column by column (arrays of ``rows`` numbers,
        or a number repeated, e.g. 1.0 for an intercept), written straight into the buffer."""
        if len(columns) != self._columns:
            raise ValueError(f"{self._columns} columns expected, got {len(columns)}")
        if rows:
            space = self._space(rows)
            for j, column in enumerate(columns):
                space[:, j] = column
            self._fold(rows)

    def _space(self, rows: int) -> np.ndarray:
        """Return the ``rows`` buffer rows below R (the buffer grows to hold them)."""
        end = self._held + rows
        if end > len(self._buffer):
            grown = np.zeros((self._columns + rows, self._columns), order="F")
            grown[: self._held] = self._buffer[: self._held]
            self._buffer = grown
        return self._buffer[self._held : end]

    def _fold(self, rows: int) -> None:
        total = self._held + rows
        stacked = self._buffer[:total]
        large = rows >= LAPACK_ROWS
        lapack = _scipy_lapack() if large and self._scipy else None
        if large and self._restore_blas is None:
            self._restore_blas = _one_blas_thread()  # after scipy's import: its BLAS too
        if lapack is not None:
            # in place when ``stacked`` is the whole buffer (every full block but the first)
            factored, _, _, info = lapack.dgeqrf(stacked, overwrite_a=True)
            if info != 0:
                raise ValueError(f"LAPACK dgeqrf failed (info = {info})")
        else:
            factored = np.linalg.qr(stacked, mode="r")
        held = min(total, self._columns)
        self._buffer[:held] = factored[:held]  # the same memory when factored in place
        self._buffer[self._below] = 0.0  # R is upper triangular: np.triu, without its copies
        self._held = held


LAPACK_ROWS = 1 << 14
"""Blocks of at least this many rows are factored by scipy's LAPACK in place (see
``FactorAccumulator``); below, by ``numpy.linalg.qr``."""
SCIPY_ROWS = 1 << 22
"""A fold of fewer rows (given to ``FactorAccumulator``) stays with numpy: a 1M-row site's fold
took 0.043 s so against 0.029 s with scipy's in-place ``dgeqrf`` (about 1 ms more per 65,536-row
block), so about 0.06 s at this many rows, against the 23 MiB and 0.25 s that importing
scipy.linalg costs a site."""


def _scipy_lapack() -> Any:
    from scipy.linalg import lapack

    return lapack


def _one_blas_thread() -> Callable[[], None]:
    """Run BLAS on one thread until the returned function is called: a Householder step on
    7 columns is memory-bound, and OpenBLAS's threads spin while other processes hold the cores
    (a 10M-row fold took 4.8 s of CPU and 15 s of wall on 2 loaded cores with threads, 1.6 s and
    4.3 s without; same digits). Limits the BLAS libraries loaded now (threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; without it BLAS keeps its threads
        return lambda: None
    libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    changed = [(lib, lib.num_threads) for lib in libraries if lib.num_threads != 1]
    for lib, _ in changed:
        lib.set_num_threads(1)

    def restore() -> None:
        for lib, threads in changed:
            lib.set_num_threads(threads)

    return restore


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
