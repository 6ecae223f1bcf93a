"""Columnar sources: only the columns an app needs are loaded, globs, the site's memory limit,
and SQL datasets (DuckDB in-process; PostgreSQL from a real server the suite starts)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedflow._version import __version__
from fedflow.connectors.memory import MemoryConnector
from fedflow.errors import PolicyError
from fedflow.node.agent import NodeAgent
from fedflow.node.data import open_files, read_table
from fedflow.node.siteconfig import load_config, parse_bytes
from fedflow.runtime.coordinator import Coordinator
from fedflow.wire import PROTOCOL_VERSION, Failure, Hello, Prepare, Prepared, Ready, Setup

ROWS = "".join(f"{i},{(i * 7) % 11}.5,{i % 2},word{i % 3}\n" for i in range(40))


def _agent(config_text: str, tmp_path: Path, *, greet: bool = True) -> NodeAgent:
    """A defended agent under the site configuration ``config_text`` (greeted unless a
    coordinator will say hello itself)."""
    policy = tmp_path / "site-policy.toml"
    policy.write_text(config_text)
    agent = NodeAgent("h", load_config(policy), owned=False)
    if greet:
        agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
    return agent


def test_setup_reads_no_column_and_prepare_only_the_needed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.csv"
    path.write_text("x,y,event,group\n" + ROWS)
    source = open_files([path], site="s")
    assert source.kinds == {"x": "int", "y": "float", "event": "int", "group": "str"}
    assert source.rows == 40
    assert source.files[0].sha256 is None  # hashed while the site reads (fingerprints())
    assert source.fingerprints()[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.files[0].bytes == path.stat().st_size
    loaded = source.load(["group", "y"])
    assert loaded.table.columns == ["y", "group"]  # the file's order, nothing else
    assert list(loaded.table["group"][:3]) == ["word0", "word1", "word2"]
    # the category labels are shared strings, one per distinct value
    assert loaded.table["group"][0] is loaded.table["group"][3]


def test_kinds_widen_when_later_rows_disagree_with_the_sample(tmp_path: Path) -> None:
    from fedflow.node import data

    path = tmp_path / "a.csv"
    many = "".join(f"{i},{i}\n" for i in range(5000))
    path.write_text("x,y\n" + many + "7,2.5\n8,NA\n9,text\n")
    original = data._SAMPLE
    data._SAMPLE = 1 << 10  # the sample sees only integers
    try:
        source = open_files([path])
        assert source.kinds["x"] == "int"
        loaded = source.load(["x", "y"])
    finally:
        data._SAMPLE = original
    assert loaded.table["x"].dtype == np.int64
    assert loaded.table["y"].dtype == object and loaded.table["y"][-1] == "text"
    assert loaded.missing["y"].sum() == 1
    whole = read_table([path]).table
    assert list(whole["y"][-3:]) == ["2.5", None, "text"]


def test_globs_name_several_files(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"part-{i}.csv").write_text(f"x,y\n{i},1.5\n{i},2.5\n")
    loaded = read_table([tmp_path / "part-*.csv"], site="s")
    assert [f.name for f in loaded.files] == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert list(loaded.table["x"]) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(Exception, match=r"nothing-\*\.csv match no file"):
        read_table([tmp_path / "nothing-*.csv"], site="s")


def test_a_float_column_with_text_deep_in_the_file_is_text(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("x\n" + "".join(f"{i}.5\n" for i in range(20000)) + "oops\n")
    loaded = read_table([path])
    assert loaded.table["x"].dtype == object and loaded.table["x"][-1] == "oops"
    assert loaded.table["x"][0] == "0.5"


def test_memory_limit_is_parsed_and_refuses_before_loading(tmp_path: Path) -> None:
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("500 MB") == 500 * 10**6
    assert parse_bytes(1024) == 1024
    bad = tmp_path / "bad.toml"
    bad.write_text('memory_limit = "lots"\n')
    with pytest.raises(PolicyError, match="key 'memory_limit'"):
        load_config(bad)
    data = tmp_path / "a.csv"
    data.write_text("x,y,event,group\n" + ROWS)
    agent = _agent(f'memory_limit = 512\n[datasets.c]\npath = "{data}"\n', tmp_path)
    assert isinstance(agent.handle(Setup(dataset="c", min_count=5)), Ready)
    forest = {"target": "event", "features": ["x", "y"], "task": "classification"}
    reply = agent.handle(
        Prepare(
            app="random-forest",
            params=forest,
            columns={"event": "any", "x": "numeric", "y": "numeric"},
        )
    )
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "app 'random-forest' needs 40 rows × 3 column(s) (event, x, y)" in reply.message
    assert "960 B as float64, above this site's memory_limit of 512 B" in reply.message
    agent = _agent(f'memory_limit = "1MiB"\n[datasets.c]\npath = "{data}"\n', tmp_path)
    agent.handle(Setup(dataset="c", min_count=5))
    assert isinstance(
        agent.handle(
            Prepare(
                app="random-forest",
                params=forest,
                columns={"event": "any", "x": "numeric", "y": "numeric"},
            )
        ),
        Prepared,
    )


def test_query_datasets_are_checked_in_the_site_configuration(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    for text, message in (
        ('[datasets.c]\nduckdb = ":memory:"\n', "sets duckdb but no query"),
        ('[datasets.c]\nquery = "SELECT 1"\n', "has a query but no database"),
        ('[datasets.c]\nduckdb = ":memory:"\npostgres = "x"\nquery = "SELECT 1"\n', "give one"),
        ('[datasets.c]\npath = "a.csv"\nduckdb = ":memory:"\nquery = "SELECT 1"\n', "exclude"),
    ):
        path.write_text(text)
        with pytest.raises(PolicyError, match=message):
            load_config(path)


# -- SQL datasets ----------------------------------------------------------------------------
def _run_study(agents: dict[str, NodeAgent], app: str, params: dict[str, Any], dataset: str) -> Any:
    coordinator = Coordinator(
        app,
        params,
        {name: MemoryConnector(name, handler=agent.handle) for name, agent in agents.items()},
        min_count=5,
        setup={name: {"dataset": dataset} for name in agents},
    )
    return coordinator, asyncio.run(coordinator.run())


def _frame(seed: int, n: int = 200) -> Any:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x[:, 0],
            "x2": x[:, 1],
            "y": 1.0 + x @ [2.0, -1.0] + rng.normal(scale=0.1, size=n),
            "note": ["secret"] * n,
        }
    )


def test_a_duckdb_query_is_a_dataset(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    agents = {}
    frames = []
    for i, name in enumerate(("a", "b")):
        frame = _frame(i)
        frames.append(frame)
        database = tmp_path / f"{name}.duckdb"
        con = duckdb.connect(str(database))
        con.execute("CREATE TABLE cohort AS SELECT * FROM frame")
        con.close()
        home = tmp_path / name
        home.mkdir()
        agents[name] = _agent(
            f'[datasets.cohort]\nduckdb = "{database}"\n'
            'query = "SELECT id, x1, x2, y, note FROM cohort ORDER BY id"\n',
            home,
            greet=False,
        )
    coordinator, outcome = _run_study(
        agents, "linear-regression", {"target": "y", "features": ["x1", "x2"]}, "cohort"
    )
    pooled = pd.concat(frames)
    X = np.column_stack([np.ones(len(pooled)), pooled[["x1", "x2"]].to_numpy()])
    expected = np.linalg.lstsq(X, pooled["y"].to_numpy(), rcond=None)[0]
    coef = outcome.done.result["coefficients"]
    assert np.allclose([coef[k] for k in ("intercept", "x1", "x2")], expected, rtol=1e-9)
    ready = coordinator.sites["a"].ready
    assert ready.rows == 200 and ready.files[0].name == "query:cohort"
    assert {c.name: c.dtype for c in ready.columns}["note"] == "str"
    # the fingerprint is the result's, stable across runs
    again = _agent(
        f'[datasets.cohort]\nduckdb = "{tmp_path / "a.duckdb"}"\n'
        'query = "SELECT id, x1, x2, y, note FROM cohort ORDER BY id"\n',
        tmp_path / "a",
    ).handle(Setup(dataset="cohort", min_count=5))
    assert isinstance(again, Ready) and again.files[0].sha256 == ready.files[0].sha256


def test_a_duckdb_query_over_files_goes_through_the_same_checks(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    data = tmp_path / "a.csv"
    data.write_text("x,y\n1,2\n2,\n3,4\n4,5\n5,6\n6,7\n")
    agent = _agent(
        f'[datasets.c]\nduckdb = ":memory:"\nquery = "SELECT * FROM read_csv(\'{data}\')"\n',
        tmp_path,
    )
    ready = agent.handle(Setup(dataset="c", min_count=5))
    assert isinstance(ready, Ready) and ready.rows == 6
    assert {c.name: (c.dtype, c.missing) for c in ready.columns} == {
        "x": ("int", 0),
        "y": ("float", 1),
    }
    reply = agent.handle(Prepare(app="stats", params={"columns": ["y"]}, columns={"y": "numeric"}))
    assert (
        isinstance(reply, Failure) and "query:c: column 'y' has 1 missing value(s)" in reply.message
    )
    failing = _agent(
        '[datasets.c]\nduckdb = ":memory:"\nquery = "SELECT * FROM nowhere"\n', tmp_path
    )
    reply = failing.handle(Setup(dataset="c", min_count=5))
    assert isinstance(reply, Failure) and "dataset 'c': the query failed" in reply.message
    assert "\n" not in reply.message


def test_a_postgres_query_is_a_dataset(tmp_path: Path, postgres: Any) -> None:
    pd = pytest.importorskip("pandas")
    frames = {name: _frame(i, 150) for i, name in enumerate(("a", "b"))}
    agents = {}
    for name, frame in frames.items():
        postgres.load(f"cohort_{name}", frame)
        home = tmp_path / name
        home.mkdir()
        agents[name] = _agent(
            f'[datasets.cohort]\ndsn_env = "FEDFLOW_TEST_DSN"\n'
            f'query = "SELECT id, x1, x2, y, note FROM cohort_{name} ORDER BY id"\n',
            home,
            greet=False,
        )
    coordinator, outcome = _run_study(
        agents, "linear-regression", {"target": "y", "features": ["x1", "x2"]}, "cohort"
    )
    pooled = pd.concat(frames.values())
    X = np.column_stack([np.ones(len(pooled)), pooled[["x1", "x2"]].to_numpy()])
    expected = np.linalg.lstsq(X, pooled["y"].to_numpy(), rcond=None)[0]
    coef = outcome.done.result["coefficients"]
    assert np.allclose([coef[k] for k in ("intercept", "x1", "x2")], expected, rtol=1e-9)
    assert coordinator.sites["b"].ready.rows == 150


def test_a_postgres_dsn_comes_from_the_sites_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.delenv("FEDFLOW_NO_SUCH_DSN", raising=False)
    agent = _agent('[datasets.c]\ndsn_env = "FEDFLOW_NO_SUCH_DSN"\nquery = "SELECT 1"\n', tmp_path)
    reply = agent.handle(Setup(dataset="c", min_count=5))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "environment variable FEDFLOW_NO_SUCH_DSN" in reply.message


@pytest.mark.parametrize(
    "text",
    [
        "x,y\n1,2\n3,4\n",
        "x,y\n1,2\n3,4",
        "x,y\r\n1,2\r\n\r\n3,4\r\n",
        "x,y\n\n\n1,2\n\n3,4\n\n",
        'x,y\n1,"a\nb"\n3,4\n',
        "x,y\r1,2\r3,4\r",
        "x,y\n" + "1,2\n" * 70000 + "\n" * 5 + "3,4",
        '"x","y"\n"1","a,b"\n\n"3","c""d"\n',
        'x,y\n5",1\n6",2\n3,"4"\n',
        "x,y\n" + '1,"a\nb"\n' * 200_000,
        "x,y\r\n" + '1,"a""\r\n""b"\r\n' * 150_000 + '2,""\r\n',
        'x,y\n1,"a\nb\n',
    ],
    ids=[
        "lf",
        "no-final-newline",
        "crlf-blank",
        "blank-lines",
        "quoted-newline",
        "cr-only",
        "70k",
        "quoted-fields",
        "quote-inside-a-field",
        "quoted-newlines-across-chunks",
        "doubled-quotes-across-chunks",
        "unterminated-quote",
    ],
)
def test_rows_counted_while_hashing_match_the_csv_reader(tmp_path: Path, text: str) -> None:
    import csv

    path = tmp_path / "a.csv"
    path.write_bytes(text.encode())
    with path.open(newline="") as f:
        expected = sum(1 for row in csv.reader(f) if row) - 1
    source = open_files([path])
    assert source.rows == expected
    assert source.load(["x"]).table.n_rows == expected
