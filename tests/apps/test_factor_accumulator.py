"""``FactorAccumulator`` (linear-regression's and glm's site factor): R of a tall matrix folded
block by block, through numpy for small blocks and scipy's LAPACK in place for large ones, must
be the factor of the whole matrix: RᵀR equals the exact Gram matrix (integer data, so the Gram
is exact in int64), and linear-regression's site factor on a streamed Parquet file large enough
for the LAPACK path gives statsmodels' OLS fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow.apps._regression import LAPACK_ROWS, FactorAccumulator
from fedflow.apps.base import CoordinatorContext, Empty, SiteContext, SiteInfo
from fedflow.apps.linear import LinearRegression
from fedflow.node.data import open_files, prepare_streamed


def _integers(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-50, 50, size=(rows, columns)).astype(np.float64)


def _fold(matrix: np.ndarray, block: int, by_columns: bool = False) -> np.ndarray:
    factor = FactorAccumulator(matrix.shape[1])
    for start in range(0, len(matrix), block):
        part = matrix[start : start + block]
        if by_columns:
            factor.add_columns([part[:, j] for j in range(part.shape[1])], len(part))
        else:
            factor.add(part)
    return factor.r


@pytest.mark.parametrize("block", [7, 1000, LAPACK_ROWS, 3 * LAPACK_ROWS])
def test_the_folded_factor_is_the_factor_of_the_whole_matrix(block: int) -> None:
    matrix = _integers(3 * LAPACK_ROWS + 123, 5)
    gram = matrix.astype(np.int64).T @ matrix.astype(np.int64)  # exact
    r = _fold(matrix, block)
    assert r.shape == (5, 5)
    assert np.array_equal(r, np.triu(r))  # exactly triangular: no reflector left below
    np.testing.assert_allclose(r.T @ r, gram, rtol=1e-13, atol=1e-13 * np.abs(gram).max())
    # given column by column (linear-regression's path) the same numbers, to the bit
    assert np.array_equal(_fold(matrix, block, by_columns=True), r)


def test_numpy_and_lapack_paths_agree() -> None:
    matrix = _integers(2 * LAPACK_ROWS, 4, seed=1)
    small = _fold(matrix, LAPACK_ROWS - 1)  # numpy.linalg.qr throughout
    large = _fold(matrix, LAPACK_ROWS)  # scipy's dgeqrf in place
    signs = np.sign(np.diag(small)) * np.sign(np.diag(large))
    np.testing.assert_allclose(large * signs[:, None], small, rtol=1e-12, atol=1e-9)


def test_fewer_rows_than_columns_give_a_short_factor() -> None:
    factor = FactorAccumulator(4)
    assert factor.r.shape == (0, 4)
    factor.add(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 1.0]]))
    assert factor.r.shape == (2, 4)
    factor.add_columns([np.array([2.0]), 1.0, np.array([0.5]), np.array([1.0])], 1)
    r = factor.r
    assert r.shape == (3, 4)
    rows = np.array([[1.0, 2, 3, 4], [0, 1, 1, 1], [2, 1, 0.5, 1]])
    np.testing.assert_allclose(r.T @ r, rows.T @ rows, atol=1e-12)
    with pytest.raises(ValueError, match="4 columns expected"):
        factor.add_columns([1.0, 2.0], 1)


@pytest.mark.slow
def test_site_factor_of_a_large_parquet_file_gives_statsmodels_ols(tmp_path: Path) -> None:
    sm = pytest.importorskip("statsmodels.api")
    rows = 3 * LAPACK_ROWS + 77  # several full blocks through LAPACK, row groups straddled
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 3)) * [1.0, 1e3, 1e-3] + [0.0, 5e3, 2.0]
    y = 0.25 + x @ np.array([1.5, -2e-3, 4e2]) + rng.normal(size=rows)
    path = tmp_path / "site.parquet"
    pq.write_table(
        pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}), path, row_group_size=30_001
    )
    app = LinearRegression()
    params = app.parse_params({"target": "y", "features": ["a", "b", "c"]})
    table = prepare_streamed(
        open_files([path], site="s"),
        app.columns(params),
        dropna=False,
        min_count=5,
        memory_limit=1 << 30,
    )
    reply = app.local_factor(table, params, Empty(), SiteContext("s"))
    assert reply.n == rows
    info = SiteInfo("s", rows, dict.fromkeys(["a", "b", "c", "y"], "float"))
    result = app.aggregate_factor({"s": reply}, params, CoordinatorContext({"s": info})).result
    fit = sm.OLS(y, sm.add_constant(x)).fit()
    np.testing.assert_allclose(list(result["coefficients"].values()), fit.params, rtol=1e-9)
    np.testing.assert_allclose(list(result["std_errors"].values()), fit.bse, rtol=1e-9)
    assert result["r_squared"] == pytest.approx(fit.rsquared, rel=1e-12)
    assert result["rss"] == pytest.approx(fit.ssr, rel=1e-9)


def test_blas_runs_on_one_thread_while_folding_and_gets_its_threads_back() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from scipy.linalg import lapack  # noqa: F401  (its BLAS is among those limited)

    controller = threadpoolctl.ThreadpoolController()

    def threads() -> set[int]:
        return {lib.num_threads for lib in controller.select(user_api="blas").lib_controllers}

    rows = np.random.default_rng(3).normal(size=(LAPACK_ROWS, 4))
    with controller.limit(limits=2, user_api="blas"):
        factor = FactorAccumulator(4)
        factor.add(rows)  # LAPACK from here on
        assert threads() == {1}
        factor.add(rows)
        assert threads() == {1}
        r = factor.r
        assert threads() == {2}
        left = FactorAccumulator(4)
        left.add(rows)
        assert threads() == {1}
        del left  # abandoned before its R was read
        assert threads() == {2}
    np.testing.assert_allclose(r.T @ r, 2 * rows.T @ rows, rtol=1e-12)


def test_a_fold_of_fewer_than_scipy_rows_stays_with_numpy_with_the_same_digits() -> None:
    """Given its rows, a fold below ``SCIPY_ROWS`` uses numpy's QR for large blocks too (no
    scipy.linalg import, 23 MiB less at a site): the same R to the bit as scipy's dgeqrf."""
    import subprocess
    import sys

    from fedflow.apps._regression import SCIPY_ROWS

    matrix = np.random.default_rng(5).normal(size=(3 * LAPACK_ROWS + 11, 6)) * [1, 10, 1e3, 1, 1, 5]
    small, large = FactorAccumulator(6, rows=len(matrix)), FactorAccumulator(6)
    assert len(matrix) < SCIPY_ROWS
    for start in range(0, len(matrix), LAPACK_ROWS):
        small.add(matrix[start : start + LAPACK_ROWS])
        large.add(matrix[start : start + LAPACK_ROWS])
    assert np.array_equal(small.r, large.r)
    code = (
        "import sys, numpy as np\n"
        "from fedflow.apps._regression import FactorAccumulator, LAPACK_ROWS\n"
        "f = FactorAccumulator(3, rows=2 * LAPACK_ROWS)\n"
        "f.add(np.ones((LAPACK_ROWS, 3))); f.add(np.ones((LAPACK_ROWS, 3))); f.r\n"
        "print('scipy.linalg' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["False"]
