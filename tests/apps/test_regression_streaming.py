"""linear-regression, glm and logistic-regression stream (``App.streaming``): every site step
reads rows only through ``data.batches`` and ``data.n_rows``, and the results with tiny batches
(7 rows, fewer than the columns of some designs) equal the one-batch results within tolerance,
plaintext and secure.

``TinyBatches`` is a site table that hands out its rows only in batches of 7 and refuses every
other access to its rows, so a site step that reads a whole column fails here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps.base import BATCH_ROWS, Table
from tests.apps.fidelity import dataset, split
from tests.apps.test_linear import CERTIFIED_COEFFICIENTS, CERTIFIED_STD_ERRORS
from tests.apps.test_regression_secure import LONGLEY, converse


class TinyBatches(Table):
    """A table whose rows come only through ``batches``, ``rows`` at a time (whatever the app
    asks for); reading a column or the matrix directly fails."""

    __slots__ = ("batch_rows", "batches_read")

    def __init__(self, table: Table, rows: int = 7) -> None:
        super().__init__({c: table[c] for c in table.columns})
        self.batch_rows = rows
        self.batches_read = 0

    def batches(
        self, names: Sequence[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[Table]:
        for batch in super().batches(names, rows=self.batch_rows):
            self.batches_read += 1
            yield batch

    def __getitem__(self, name: str) -> np.ndarray:
        raise AssertionError(f"a streaming app read column {name!r} whole")

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        raise AssertionError("a streaming app built the whole design matrix")


def _sites(frame: pd.DataFrame, n: int = 3, mode: str = "iid") -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, n, mode))}


def _poisson_frame(seed: int = 1, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    y = rng.poisson(np.exp(0.3 + 0.5 * x1 - 0.8 * x2))
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("linear-regression", {"target": "target"}, "diabetes"),
    ("linear-regression", {"target": "target", "intercept": False}, "diabetes"),
    ("logistic-regression", {"target": "GRADE"}, "spector"),
    ("glm", {"target": "target", "family": "gaussian"}, "diabetes"),
    ("glm", {"target": "GRADE", "family": "binomial"}, "spector"),
    ("glm", {"target": "y", "family": "poisson"}, "poisson"),
]


def _frame(name: str) -> pd.DataFrame:
    return _poisson_frame() if name == "poisson" else dataset(name)


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    """Every number of a result, flattened (coefficient tables included)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": float(v) for k, v in value.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "secure"])
@pytest.mark.parametrize("app, params, name", CASES, ids=[f"{a}-{n}" for a, _, n in CASES])
def test_tiny_batches_give_the_one_batch_results(
    app: str, params: dict[str, Any], name: str, secure: bool
) -> None:
    sites = _sites(_frame(name))
    whole = converse(app, params, sites, secure=secure, min_count=1)
    views: list[TinyBatches] = []

    def tiny(table: Table) -> Table:
        views.append(TinyBatches(table))
        return views[-1]

    batched = converse(app, params, sites, secure=secure, min_count=1, view=tiny)
    assert batched.phases == whole.phases
    assert views and all(v.batches_read > 1 for v in views)  # it did read in batches
    expected = _numbers(whole.result)
    got = _numbers(batched.result)
    assert got.keys() == expected.keys()
    # secure linear regression sums exactly: the same digits however the rows are cut
    rel = 0.0 if secure and app == "linear-regression" else 1e-10
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-13), key


@pytest.mark.parametrize("rows", [1, 7, 100])
def test_longley_in_tiny_batches_keeps_the_certified_digits(rows: int) -> None:
    sites = _sites(dataset("longley"), 3)
    run = converse(
        "linear-regression", LONGLEY, sites, secure=False, view=lambda t: TinyBatches(t, rows)
    )
    coef = np.array(list(run.result["coefficients"].values()))
    se = np.array(list(run.result["std_errors"].values()))
    np.testing.assert_allclose(coef, CERTIFIED_COEFFICIENTS, rtol=1e-9)
    np.testing.assert_allclose(se, CERTIFIED_STD_ERRORS, rtol=1e-9)


def test_a_site_with_fewer_rows_than_columns_still_streams() -> None:
    # 3 rows at a site for 7 coefficients: its factor is 3 × 8, and the pooled fit still works
    frame = dataset("longley")
    sites = {"small": Table.from_pandas(frame.iloc[:3]), "rest": Table.from_pandas(frame.iloc[3:])}
    run = converse("linear-regression", LONGLEY, sites, secure=False, view=TinyBatches)
    np.testing.assert_allclose(
        list(run.result["coefficients"].values()), CERTIFIED_COEFFICIENTS, rtol=1e-9
    )
