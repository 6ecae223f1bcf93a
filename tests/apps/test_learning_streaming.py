"""kmeans and pca read a site's rows only batch by batch (``streaming = True``), and tiny
batches give the result of one batch; random-forest needs every row and says so.

``BatchesOnly`` is a site table whose whole columns cannot be read at all (``[]``, ``matrix``,
``select`` and ``to_pandas`` fail): an app that reads anything but ``batches()`` and ``n_rows``
fails here. Its ``rows`` sets the default batch size, so no monkeypatching is needed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps.base import Table
from fedflow.results.compare import Tolerance, compare_results
from tests.apps.fidelity import dataset, split
from tests.apps.test_learning_secure import _IRIS, _WINE, drive


class BatchesOnly(Table):
    """A table readable only through ``batches()``, in batches of ``rows`` rows by default;
    ``calls`` counts the passes over it."""

    def __init__(self, table: Table, rows: int) -> None:
        super().__init__({c: table[c] for c in table.columns})
        self.rows = rows
        self.calls = 0

    def batches(
        self, names: Sequence[str] | None = None, rows: int | None = None
    ) -> Iterator[Table]:  # type: ignore[override]
        self.calls += 1
        yield from super().batches(names, self.rows if rows is None else rows)

    def __getitem__(self, name: str) -> np.ndarray:
        raise AssertionError(f"an app read the whole column {name!r}")

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        raise AssertionError("an app read the whole table as a matrix")

    def select(self, rows: np.ndarray) -> Table:
        raise AssertionError("an app selected rows of the whole table")

    def to_pandas(self) -> pd.DataFrame:
        raise AssertionError("an app read the whole table as a DataFrame")


def _tables(name: str, n_sites: int, columns: list[str]) -> dict[str, Table]:
    parts = split(dataset(name), n_sites, "unbalanced") if n_sites > 1 else [dataset(name)]
    return {f"site-{i + 1}": Table.from_pandas(p[columns]) for i, p in enumerate(parts)}


def _batched(tables: dict[str, Table], rows: int) -> dict[str, BatchesOnly]:
    return {name: BatchesOnly(t, rows) for name, t in tables.items()}


def test_both_apps_declare_streaming_and_the_forest_does_not() -> None:
    assert get_app("kmeans").streaming is True
    assert get_app("pca").streaming is True
    forest = get_app("random-forest")
    assert forest.streaming is False
    import fedflow.apps.forest as module

    assert "memory_limit" in (module.__doc__ or "")  # the docstring says why, and what refuses it


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("min_count", [1, 5])
def test_kmeans_tiny_batches_give_the_one_batch_result(secure: bool, min_count: int) -> None:
    """Every sum a site sends is exact then rounded once, so 7-row batches give the same bits
    as one batch; each phase reads the rows once."""
    tables = _tables("iris", 3, _IRIS)
    raw = {"columns": _IRIS, "k": 4, "seed": 1, "tol": 0.0}
    whole = drive("kmeans", raw, tables, secure=secure, min_count=min_count)
    batched = _batched(tables, 7)
    tiny = drive("kmeans", raw, batched, secure=secure, min_count=min_count)
    assert tiny.result == whole.result
    assert tiny.notes == whole.notes
    if min_count == 5:
        assert whole.result["withheld"] > 0  # the release rule was exercised
    for table in batched.values():
        assert table.calls == len(tiny.phases)  # one pass over the rows per phase


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("standardize", [False, True])
def test_pca_tiny_batches_give_the_one_batch_result(secure: bool, standardize: bool) -> None:
    tables = _tables("wine", 3, _WINE)
    raw = {"columns": _WINE, "standardize": standardize, "projections": True}
    whole = drive("pca", raw, tables, secure=secure)
    batched = _batched(tables, 7)
    tiny = drive("pca", raw, batched, secure=secure)
    comparison = compare_results(tiny.result, whole.result, tolerances=Tolerance(1e-11, 1e-13))
    assert comparison.status == "match", [i.path for i in comparison.mismatches][:5]
    for name, table in batched.items():
        assert table.calls == len(tiny.phases)
        mine = pd.read_csv(io.BytesIO(tiny.sites[name].outputs["projections.csv"]))
        theirs = pd.read_csv(io.BytesIO(whole.sites[name].outputs["projections.csv"]))
        assert list(mine.columns) == list(theirs.columns) and len(mine) == table.n_rows
        np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=1e-10, atol=1e-12)


def test_pca_factor_of_one_row_batches() -> None:
    """Batches of one row (each with a zero factor) still merge to the pooled factor."""
    tables = _tables("iris", 3, _IRIS)
    raw: dict[str, Any] = {"columns": _IRIS}
    whole = drive("pca", raw, tables, secure=False)
    ones = drive("pca", raw, _batched(tables, 1), secure=False)
    comparison = compare_results(ones.result, whole.result, tolerances=Tolerance(1e-11, 1e-13))
    assert comparison.status == "match", [i.path for i in comparison.mismatches][:5]


def test_kmeans_site_keeps_labels_not_rows() -> None:
    """Between rounds a streaming site keeps one small integer per row (the cluster it
    released the row in), never the rows themselves."""
    tables = _tables("iris", 1, _IRIS)
    driven = drive("kmeans", {"columns": _IRIS, "k": 3}, _batched(tables, 16), secure=False)
    state = driven.sites["site-1"].state
    assert set(state) == {"published"}  # min_count = 1: no released sets to remember
    assert state["published"].dtype == np.int16 and len(state["published"]) == 150
    assert not any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in state.values())
