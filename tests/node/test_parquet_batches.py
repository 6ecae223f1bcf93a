"""Streaming a Parquet site: row groups are read whole when small and in batches when large,
float columns without nulls are views of pyarrow's buffers (read-only: an app cannot write into
them), and ``batches`` re-cuts the record batches into tables of exactly the rows asked for,
copying only the tables that straddle two record batches. Every way gives the rows and types
of the whole table loaded at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow.node import data
from fedflow.node.data import open_files, prepare_source, prepare_streamed

NEEDED = {"a": "numeric", "b": "numeric", "k": "numeric", "label": "any"}


def _file(folder: Path, rows: int = 1000) -> Path:
    rng = np.random.default_rng(7)
    b = rng.normal(size=rows)
    b[::97] = np.nan  # missing, dropped
    table = pa.table(
        {
            "a": rng.normal(size=rows),
            "b": b,
            "k": pa.array(rng.integers(0, 5, size=rows), mask=np.arange(rows) % 89 == 4),
            "label": np.array([f"l{i % 3}" for i in range(rows)]),
        }
    )
    path = folder / "site.parquet"
    pq.write_table(table, path, row_group_size=300)
    return path


@pytest.mark.parametrize("group_bytes", [1 << 27, 0])  # whole row groups, or batches in each
@pytest.mark.parametrize("batch", [1 << 18, 64])
def test_streamed_parquet_equals_the_whole_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_bytes: int, batch: int
) -> None:
    monkeypatch.setattr(data, "_ROW_GROUP_BYTES", group_bytes)
    monkeypatch.setattr(data, "_BATCH", batch)
    path = _file(tmp_path)
    eager = prepare_source(open_files([path]), NEEDED, dropna=True, min_count=5)
    streamed = prepare_streamed(
        open_files([path]), NEEDED, dropna=True, min_count=5, memory_limit=1 << 40
    )
    assert streamed.n_rows == eager.n_rows < 1000
    for rows in (1, 7, 300, 301, 5000):
        parts = list(streamed.batches(rows=rows))
        assert [p.n_rows for p in parts[:-1]] == [rows] * (len(parts) - 1)
        for name in NEEDED:
            joined = np.concatenate([p[name] for p in parts])
            assert joined.dtype == eager[name].dtype, name
            assert joined.tolist() == eager[name].tolist(), name


def test_float_columns_are_read_only_views_and_cut_without_copies(tmp_path: Path) -> None:
    path = _file(tmp_path)
    streamed = prepare_streamed(
        open_files([path]), {"a": "numeric"}, dropna=False, min_count=5, memory_limit=1 << 40
    )
    parts = list(streamed.batches(["a"], rows=100))
    first = parts[0]["a"]
    assert not first.flags.writeable  # pyarrow's buffer itself
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1.0
    # row groups of 300 rows cut into tables of 100: each lies within one group, a view of it
    assert not any(p["a"].flags.writeable for p in parts)


def test_a_table_straddling_record_batches_holds_both_parts(tmp_path: Path) -> None:
    path = _file(tmp_path)
    streamed = prepare_streamed(
        open_files([path]), {"a": "numeric"}, dropna=False, min_count=5, memory_limit=1 << 40
    )
    whole = pq.read_table(path, columns=["a"]).column("a").to_pylist()
    parts = list(streamed.batches(["a"], rows=250))  # 250 + 50 of the first group, ...
    assert [p.n_rows for p in parts] == [250, 250, 250, 250]
    assert parts[1]["a"].tolist() == whole[250:500]
    assert parts[1]["a"].flags.writeable  # joined from two row groups: a new array


@pytest.mark.parametrize("dropna", [True, False])
def test_non_finite_and_overflowing_floats_are_told_apart(tmp_path: Path, dropna: bool) -> None:
    # a column's values are checked from their sum first: an infinity, a NaN and a sum that
    # overflows (finite values) must still be told apart value by value
    big = np.full(600, 1e308)  # finite, but their sum overflows
    with_nan = np.arange(600.0)
    with_nan[450] = np.nan  # missing: dropped, or refused without dropna
    with_inf = np.arange(600.0)
    with_inf[451] = np.inf
    path = tmp_path / "site.parquet"
    pq.write_table(pa.table({"big": big, "n": with_nan, "i": with_inf}), path, row_group_size=300)

    def prepare(needed: dict[str, str]) -> data.StreamedTable:
        return prepare_streamed(
            open_files([path]), needed, dropna=dropna, min_count=5, memory_limit=1 << 40
        )

    table = prepare({"big": "numeric"})
    assert table.n_rows == 600
    assert np.concatenate([b["big"] for b in table.batches(rows=64)]).tolist() == big.tolist()
    if dropna:
        assert prepare({"n": "numeric"}).n_rows == 599
    else:
        with pytest.raises(data.DataError, match="column 'n' has 1 missing value"):
            prepare({"n": "numeric"})
    with pytest.raises(
        data.DataError, match="column 'i' holds the non-finite value inf in row 452"
    ):
        prepare({"i": "numeric"})
