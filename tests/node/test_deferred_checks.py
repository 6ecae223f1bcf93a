"""A Parquet site's per-value checks made by the app's first pass instead of a pass of their own
at Prepare (``prepare_streamed(..., defer=True)``, what the site agent asks): the same one-line
errors, raised before any reply; the app never sees a refused value; nothing else deferred."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow._version import __version__
from fedflow.apps.base import (
    App,
    ColumnKind,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Table,
)
from fedflow.errors import DataError
from fedflow.node import data
from fedflow.node.agent import NodeAgent
from fedflow.node.data import StreamedTable, open_files, prepare_streamed
from fedflow.node.siteconfig import SiteConfig
from fedflow.wire import PROTOCOL_VERSION, Failure, Hello, Prepare, Prepared, Setup, Task
from tests.helpers import fedflow, write_study

PLENTY = 1 << 40
ROWS = 600


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record batches of a few rows, so a file streams in many."""
    monkeypatch.setattr(data, "_BATCH", 37)


def _columns(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=ROWS)
    return {
        "x": x,
        "y": 2.0 * x + rng.normal(size=ROWS),
        "flag": (np.arange(ROWS) % 2).astype(np.int64),
        "n": np.arange(ROWS, dtype=np.int64),
    }


def _parquet(path: Path, columns: Mapping[str, Any]) -> Path:
    pq.write_table(pa.table(dict(columns)), path, row_group_size=200)
    return path


NEEDED = {"x": "numeric", "y": "numeric", "flag": "binary", "n": "numeric"}


def _bad(case: str) -> dict[str, Any]:
    columns: dict[str, Any] = _columns()
    if case == "nan-last-row":
        columns["y"][-1] = np.nan
    elif case == "infinities":
        columns["x"][250] = np.inf
        columns["x"][-3] = -np.inf
    elif case == "not-binary":
        columns["flag"][-1] = 2
    elif case == "null-integers":
        n = columns["n"].tolist()
        n[598] = None
        columns["n"] = pa.array(n, type=pa.int64())
    elif case == "several":  # Prepare's order: missing values before infinities
        columns["x"][300] = np.inf
        columns["y"][-1] = np.nan
    return columns


def _prepare(path: Path, *, defer: bool, dropna: bool = False, min_count: int = 5) -> Any:
    source = open_files([path], site="berlin")
    return prepare_streamed(
        source, NEEDED, dropna=dropna, min_count=min_count, memory_limit=PLENTY, defer=defer
    )


@pytest.mark.parametrize(
    "case", ["nan-last-row", "infinities", "not-binary", "null-integers", "several"]
)
def test_the_first_pass_raises_prepares_error_and_yields_no_refused_value(
    tmp_path: Path, case: str
) -> None:
    path = _parquet(tmp_path / "site.parquet", _bad(case))
    with pytest.raises(DataError) as at_prepare:
        _prepare(path, defer=False)
    table = _prepare(path, defer=True)  # Prepare reads no value then
    assert isinstance(table, StreamedTable) and not table.checked
    assert table.n_rows == ROWS
    seen: list[Table] = []
    with pytest.raises(DataError) as in_pass:
        for batch in table.batches(["x", "y", "flag", "n"], rows=50):
            seen.append(batch)
    ours, theirs = in_pass.value, at_prepare.value
    assert (ours.message, ours.file, ours.column, ours.site) == (
        theirs.message,
        theirs.file,
        theirs.column,
        theirs.site,
    )
    assert ours.site == "berlin" and "site.parquet" in str(ours)
    assert seen, "the batches before the refused value are read"
    for batch in seen:  # the app never holds a value Prepare refuses
        assert np.isfinite(batch.matrix(["x", "y", "n"])).all()
        assert np.isin(batch["flag"], (0, 1)).all()
    assert not table.checked
    with pytest.raises(DataError, match=re.escape(theirs.message)):
        table.ensure_checked()  # and every later pass says it again


def test_the_last_rows_nan_is_named_with_its_count() -> None:
    # the message the study test below expects, as loading the whole table words it
    loaded = data.LoadedData(
        Table({"y": np.array([1.0, np.nan])}),
        [data.FileFingerprint("berlin.parquet", "0" * 64, 1, 2)],
        missing={"y": np.array([False, True])},
    )
    with pytest.raises(DataError) as raised:
        data.prepare_table(loaded, {"y": "numeric"}, dropna=False, min_count=1)
    assert raised.value.message == (
        "berlin.parquet: column 'y' has 1 missing value(s) "
        "(set dropna = true in the study to drop those rows)"
    )


def test_a_kind_the_schema_statistics_hid_fails_as_prepare_does(tmp_path: Path) -> None:
    # row-group statistics that omit a null: Setup takes the column for integers; Prepare's pass
    # widens it to floats and refuses the missing value, and so does the deferred first pass
    path = _parquet(tmp_path / "site.parquet", _bad("null-integers"))
    errors = []
    for defer in (False, True):
        source = open_files([path], site="berlin")
        source.kinds["n"] = "int"
        try:
            table = prepare_streamed(
                source, NEEDED, dropna=False, min_count=5, memory_limit=PLENTY, defer=defer
            )
            assert defer and not table.checked
            for _ in table.batches(rows=100):
                pass
        except DataError as exc:
            errors.append((exc.message, exc.file, exc.column, exc.site))
    assert len(errors) == 2 and errors[0] == errors[1], errors
    assert errors[0][0].startswith("site.parquet: column 'n' has 1 missing value(s)")


def test_a_clean_file_streams_the_same_rows_and_is_checked_after_one_pass(tmp_path: Path) -> None:
    columns = _columns()
    path = _parquet(tmp_path / "site.parquet", columns)
    eager, deferred = _prepare(path, defer=False), _prepare(path, defer=True)
    assert eager.checked and not deferred.checked
    assert deferred.n_rows == eager.n_rows == ROWS
    names = ["y", "x"]
    partial = deferred.batches(names, rows=64)
    next(partial)
    partial.close()  # a pass the app leaves early checks nothing
    assert not deferred.checked
    ours = [b.matrix(names) for b in deferred.batches(names, rows=64)]
    assert deferred.checked
    theirs = [b.matrix(names) for b in eager.batches(names, rows=64)]
    assert len(ours) == len(theirs) == 10
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(np.concatenate(ours)[:, 1], columns["x"])


def test_only_parquet_numbers_without_dropna_and_enough_rows_are_deferred(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "site.parquet", _bad("nan-last-row"))
    dropped = _prepare(path, defer=True, dropna=True)  # rows dropped: counted at Prepare
    assert dropped.checked and dropped.n_rows == ROWS - 1
    with pytest.raises(DataError, match="column 'y' has 1 missing value"):
        _prepare(path, defer=True, min_count=ROWS + 1)  # maybe too few rows: Prepare's pass
    csv = tmp_path / "site.csv"
    csv.write_text(
        "x,y,flag,n\n" + "".join(f"{i},{i}.5,{i % 2},{i}\n" for i in range(20)) + "1,NA,0,1\n"
    )
    with pytest.raises(DataError, match="site.csv: column 'y' has 1 missing value"):
        _prepare(csv, defer=True)  # delimited text is typed in a pass at Prepare
    text = _columns()
    text["g"] = np.array([f"g{i % 3}" for i in range(ROWS)], dtype=object)
    mixed = _parquet(tmp_path / "text.parquet", text)
    source = open_files([mixed])
    table = prepare_streamed(
        source, {**NEEDED, "g": "any"}, dropna=False, min_count=5, memory_limit=PLENTY, defer=True
    )
    assert table.checked  # a text column may widen a kind: Prepare's pass


# -- at the site: no reply leaves before every value is checked ----------------------------------
class FirstRows(Payload, frozen=True):
    total: float


class FirstBatch(App[Params]):
    """Sums only the first batch of y, then stops reading (a pass left early)."""

    name = "first-batch"
    reference = "numpy sum"
    phases = {"sums": Phase(Empty, FirstRows)}
    streaming = True

    def columns(self, params: Params) -> dict[str, ColumnKind]:
        return {"y": "numeric"}

    def local_sums(
        self, data: Table, params: Params, request: Empty, ctx: SiteContext
    ) -> FirstRows:
        for batch in data.batches(["y"], rows=10):
            return FirstRows(total=float(batch["y"].sum()))
        return FirstRows(total=0.0)

    def aggregate_sums(
        self, replies: Mapping[str, FirstRows], params: Params, ctx: CoordinatorContext
    ) -> Done:
        return Done({"total": sum(r.total for r in replies.values())})

    def centralized(self, pooled: Any, params: Params) -> dict[str, Any]:
        return {"total": float(pooled["y"].to_numpy()[:10].sum())}


def _agent(path: Path) -> NodeAgent:
    agent = NodeAgent("berlin", SiteConfig(), owned=True)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="berlin"))
    agent.handle(Setup(data=[str(path)], min_count=5, dropna=False))
    return agent


@pytest.mark.parametrize("bad", [True, False])
def test_a_site_checks_every_value_before_it_replies(tmp_path: Path, bad: bool) -> None:
    columns = _bad("nan-last-row") if bad else _columns()
    path = _parquet(tmp_path / "site.parquet", columns)
    agent = _agent(path)
    prepared = agent.handle(
        Prepare(app=f"{__name__}:FirstBatch", params={}, columns={"y": "numeric"})
    )
    assert isinstance(prepared, Prepared) and prepared.rows == ROWS
    assert isinstance(agent._table, StreamedTable) and not agent._table.checked
    answer = agent.handle(Task(round=1, phase="sums", payload={}))
    if bad:  # the app read one clean batch and stopped: the site read on and refused
        assert isinstance(answer, Failure) and answer.kind == "data"
        assert answer.message == (
            "site.parquet: column 'y' has 1 missing value(s) "
            "(set dropna = true in the study to drop those rows)"
        )
        assert (answer.file, answer.column) == ("site.parquet", "y")
    else:
        assert not isinstance(answer, Failure), answer
        assert agent._table.checked


# -- end to end: a NaN in the last row fails the study, with Prepare's error and no result ------
@pytest.mark.slow
def test_a_nan_in_the_last_row_fails_the_study_with_no_result(tmp_path: Path) -> None:
    columns = _columns()
    columns["y"][-1] = np.nan
    pq.write_table(pa.table(columns), tmp_path / "berlin.parquet", row_group_size=100)
    clean = _columns(1)
    pq.write_table(pa.table(clean), tmp_path / "vienna.parquet", row_group_size=100)
    study = write_study(
        tmp_path,
        """
        name = "last-row"
        app = "linear-regression"
        seed = 1
        [params]
        target = "y"
        features = ["x", "n"]
        """,
        {"vienna": "vienna.parquet", "berlin": "berlin.parquet"},
    )
    proc = fedflow("run", str(study), cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedflow: error")]
    assert errors == [
        "fedflow: error: site 'berlin': berlin.parquet: column 'y' has 1 missing value(s) "
        "(set dropna = true in the study to drop those rows)"
    ], proc.stderr
    runs = list((tmp_path / "results" / "last-row").iterdir())
    assert len(runs) == 1
    written = {p.name for p in runs[0].iterdir()}
    assert "result.json" not in written and "manifest.json" in written, written
    assert json.loads((runs[0] / "manifest.json").read_text())
