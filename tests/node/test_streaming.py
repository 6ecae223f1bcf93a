"""Streaming tables: a streaming app's rows re-read from the site's source batch by batch, equal
to the whole table a non-streaming app gets, with the same checks and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow._version import __version__
from fedflow.errors import AppError, DataError
from fedflow.node import data
from fedflow.node.agent import NodeAgent
from fedflow.node.data import (
    Source,
    StreamedTable,
    open_files,
    prepare_source,
    prepare_streamed,
)
from fedflow.node.databases import QuerySource
from fedflow.node.siteconfig import SiteConfig
from fedflow.wire import PROTOCOL_VERSION, Failure, Hello, Prepare, Prepared, Setup, Task

NEEDED = {"x": "numeric", "y": "numeric", "flag": "binary", "group": "any"}
PLENTY = 1 << 40


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few rows, so every file streams in several."""
    monkeypatch.setattr(data, "_BLOCK", 64)
    monkeypatch.setattr(data, "_BATCH", 7)


def _rows(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        x = "NA" if i % 9 == 4 else str(int(rng.integers(-50, 50)))
        y = "" if i % 11 == 7 else f"{rng.normal():.6f}"
        lines.append(f"{x},{y},{i % 2},g{i % 3}\n")
    return "".join(lines)


def _csv_files(folder: Path) -> list[Path]:
    a = folder / "a.csv"
    a.write_text("x,y,flag,group\n" + _rows(40, 1))
    b = folder / "b.csv"
    b.write_text("x,y,flag,group\n" + _rows(33, 2))
    return [a, b]


def _parquet(folder: Path, rows: int = 50) -> Path:
    rng = np.random.default_rng(3)
    y = rng.normal(size=rows)
    y[::6] = np.nan
    x = pa.array(rng.integers(-9, 9, size=rows), mask=np.arange(rows) % 8 == 3)
    table = pa.table(
        {
            "x": x,
            "y": y,
            "flag": np.arange(rows) % 2,
            "group": np.array([f"g{i % 4}" for i in range(rows)]),
        }
    )
    path = folder / "site.parquet"
    pq.write_table(table, path, row_group_size=16)
    return path


def _duckdb(folder: Path) -> Source:
    duckdb = pytest.importorskip("duckdb")
    database = folder / "site.duckdb"
    if not database.exists():
        files = _csv_files(folder)
        con = duckdb.connect(str(database))
        con.execute(f"CREATE TABLE cohort AS SELECT * FROM read_csv_auto('{files[0]}')")
        con.close()
    from fedflow.node.databases import _duckdb as batches
    from fedflow.node.siteconfig import Dataset

    dataset = Dataset(
        name="c", paths=[], duckdb=str(database), query="SELECT * FROM cohort ORDER BY y, x"
    )
    return QuerySource("c", batches(dataset), site="s")


def _concat(table: StreamedTable, rows: int) -> dict[str, np.ndarray]:
    parts = list(table.batches(rows=rows))
    assert all(p.n_rows == rows for p in parts[:-1]) and 0 < parts[-1].n_rows <= rows
    return {n: np.concatenate([p[n] for p in parts]) for n in table.columns}


def _assert_same(eager: Any, streamed: dict[str, np.ndarray]) -> None:
    assert list(streamed) == eager.columns
    for name in eager.columns:
        assert streamed[name].dtype == eager[name].dtype, name
        assert streamed[name].tolist() == eager[name].tolist(), name


def _opener(folder: Path, kind: str) -> Any:
    """Write a site's data once; return a function opening it as Setup does."""
    if kind == "duckdb":
        return lambda: _duckdb(folder)
    files = _csv_files(folder) if kind == "csv" else [_parquet(folder)]
    return lambda: open_files(files, site="s")


@pytest.mark.parametrize("kind", ["csv", "parquet", "duckdb"])
@pytest.mark.parametrize("memory_limit", [PLENTY, 0])
def test_streamed_batches_equal_the_whole_table(
    tmp_path: Path, kind: str, memory_limit: int
) -> None:
    make = _opener(tmp_path, kind)
    eager = prepare_source(make(), NEEDED, dropna=True, min_count=5)
    streamed = prepare_streamed(make(), NEEDED, dropna=True, min_count=5, memory_limit=memory_limit)
    assert 0 < streamed.n_rows == eager.n_rows < make().rows  # rows with a missing value dropped
    assert not streamed.cached  # a text column: re-read at every pass
    for rows in (5, 64, 10_000):
        _assert_same(eager, _concat(streamed, rows))
        _assert_same(eager, _concat(streamed, rows))  # every pass re-reads the same rows


@pytest.mark.parametrize("memory_limit", [PLENTY, 0])
def test_numeric_csv_columns_are_cached_within_the_memory_limit(
    tmp_path: Path, memory_limit: int
) -> None:
    needed = {"x": "numeric", "y": "numeric"}
    files = _csv_files(tmp_path)
    eager = prepare_source(open_files(files), needed, dropna=True, min_count=5)
    streamed = prepare_streamed(
        open_files(files),
        needed,
        dropna=True,
        min_count=5,
        memory_limit=memory_limit,
    )
    assert streamed.cached == (memory_limit == PLENTY)
    _assert_same(eager, _concat(streamed, 8))
    # only the columns asked for, in the order asked
    assert [b.columns for b in streamed.batches(["y"], rows=1000)] == [["y"]]


def test_kinds_wider_than_setups_sample_restart_the_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_SAMPLE", 200)  # the sample sees integers in x, floats in y
    path = tmp_path / "a.csv"
    rows = "".join(f"{i},{i}.5\n" for i in range(60))
    path.write_text("x,y\n" + rows + "7,2.5\n8,NA\n2.5,text\n1_000,3\n")
    needed = {"x": "numeric", "y": "any"}
    assert open_files([path]).kinds == {"x": "int", "y": "float"}
    eager = prepare_source(open_files([path]), needed, dropna=True, min_count=5)
    streamed = prepare_streamed(
        open_files([path]), needed, dropna=True, min_count=5, memory_limit=0
    )
    assert eager["x"].dtype == np.float64 and eager["y"].dtype == object
    _assert_same(eager, _concat(streamed, 9))


def _bad(folder: Path, name: str) -> list[Path]:
    ok = "".join(f"{i},{i % 2},{i}.25\n" for i in range(30))
    late = {
        "non-finite": ok + "31,1,inf\n32,0,-inf\n",
        "not-binary": ok + "31,2,1.5\n",
        "not-numeric": ok + "31,1,abc\n",
        "missing": ok + "31,1,NA\n32,,3\n",
        "few-rows": "1,1,NA\n2,0,NA\n3,1,2\n",
    }[name]
    first = folder / "first.csv"
    first.write_text("x,flag,y\n" + "".join(f"{i},1,0.5\n" for i in range(20)))
    second = folder / "second.csv"
    second.write_text("x,flag,y\n" + late)
    return [first, second]


def _outcome(prepare: Any) -> tuple[Any, ...]:
    try:
        return ("rows", prepare().n_rows)
    except DataError as exc:
        return ("error", exc.message, exc.file, exc.column)


@pytest.mark.parametrize("case", ["non-finite", "not-binary", "not-numeric", "missing", "few-rows"])
@pytest.mark.parametrize("dropna", [True, False])
def test_errors_found_in_a_later_batch_are_the_whole_tables(
    tmp_path: Path, case: str, dropna: bool
) -> None:
    files = _bad(tmp_path, case)
    needed = {"x": "numeric", "flag": "binary", "y": "numeric"}
    eager = _outcome(lambda: prepare_source(open_files(files), needed, dropna=dropna, min_count=25))
    streamed = _outcome(
        lambda: prepare_streamed(
            open_files(files), needed, dropna=dropna, min_count=25, memory_limit=0
        )
    )
    assert streamed == eager
    assert eager[0] == "error" or (case == "missing" and dropna)
    if case == "non-finite":
        assert streamed[1].startswith(
            "second.csv: column 'y' holds the non-finite value inf in row 31 and 1 more"
        )


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_file_changed_between_passes_is_refused(tmp_path: Path, kind: str) -> None:
    files = _csv_files(tmp_path) if kind == "csv" else [_parquet(tmp_path)]
    table = prepare_streamed(
        open_files(files, site="s"), NEEDED, dropna=True, min_count=5, memory_limit=0
    )
    assert sum(b.n_rows for b in table.batches()) == table.n_rows
    stat = files[-1].stat()
    content = files[-1].read_bytes()
    files[-1].write_bytes(content)  # the same rows, written again
    os.utime(files[-1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=f"{files[-1].name} changed since the site opened it"):
        list(table.batches())


def test_whole_columns_of_a_streamed_table_are_refused(tmp_path: Path) -> None:
    table = prepare_streamed(
        open_files([_parquet(tmp_path)]), NEEDED, dropna=True, min_count=5, memory_limit=PLENTY
    )
    assert table.columns == ["x", "y", "flag", "group"] and "y" in table
    assert table.is_numeric("y") and not table.is_numeric("group")
    for access in (
        lambda: table["y"],
        lambda: table.matrix(["x", "y"]),
        lambda: table.select(np.arange(3)),
    ):
        with pytest.raises(AppError, match=r"reads the site's rows only through data\.batches"):
            access()
    with pytest.raises(KeyError, match="no column 'z'"):
        next(table.batches(["z"]))


# -- at the site: streaming apps stream, the others are refused above memory_limit ---------------
def _agent(path: Path, memory_limit: int) -> NodeAgent:
    agent = NodeAgent("berlin", SiteConfig(memory_limit=memory_limit), owned=True)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="berlin"))
    agent.handle(Setup(data=[str(path)], min_count=5, dropna=True))
    return agent


def test_a_streaming_app_runs_on_a_streamed_table_and_others_meet_the_memory_limit(
    tmp_path: Path,
) -> None:
    path = _parquet(tmp_path, rows=200)
    streaming = _agent(path, memory_limit=100)
    params = {"columns": ["y"]}
    reply = streaming.handle(
        Prepare(app="tests.node.streaming_app:BatchSums", params=params, columns={"y": "numeric"})
    )
    assert isinstance(reply, Prepared) and isinstance(streaming._table, StreamedTable)
    answer = streaming.handle(Task(round=1, phase="sums", payload={}))
    assert not isinstance(answer, Failure), answer
    y = pq.read_table(path).column("y").to_numpy()
    kept = y[~np.isnan(y)]
    from fedflow.apps.base import decode_payload
    from tests.node.streaming_app import Sums

    sums = decode_payload(answer.payload, Sums)  # type: ignore[union-attr]
    assert sums.rows == len(kept) == reply.rows
    assert sums.total == pytest.approx(kept.sum(), rel=1e-12)

    eager = _agent(path, memory_limit=100)
    refused = eager.handle(
        Prepare(app="tests.node.streaming_app:WholeSums", params=params, columns={"y": "numeric"})
    )
    assert isinstance(refused, Failure) and refused.kind == "policy"
    assert refused.message.startswith(
        "app 'tests.node.streaming_app:WholeSums' needs 200 rows × 1 column(s) (y) = 1.6 KiB as float64"
    )
    assert "above this site's memory_limit of 100 B" in refused.message


def test_the_data_path_never_imports_pandas(tmp_path: Path) -> None:
    csv = _csv_files(tmp_path)
    parquet = _parquet(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        from fedflow.node.data import open_files, prepare_source, prepare_streamed
        needed = {NEEDED!r}
        for files in ({[str(p) for p in csv]!r}, [{str(parquet)!r}]):
            prepare_source(open_files(files), needed, dropna=True, min_count=5)
            for limit in (0, 1 << 40):
                table = prepare_streamed(
                    open_files(files), needed, dropna=True, min_count=5, memory_limit=limit
                )
                assert sum(b.n_rows for b in table.batches()) == table.n_rows
        print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
