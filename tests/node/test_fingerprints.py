"""Fingerprints computed while the site reads (``Source.start_fingerprints``): a run's manifest
records the sha256 of every file's bytes (of a query's canonical result), computed here with
hashlib over the file as a reference; a file that changes between Setup and the end of the
site's reading fails clearly; a failed run still records the exact hashes of every site that
answers its Finish("failed"), and says unknown, never a wrong one, for the others."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow._version import __version__
from fedflow.connectors.local import LocalConnector
from fedflow.connectors.memory import MemoryConnector
from fedflow.errors import DataError, FedflowError
from fedflow.node import agent as agent_module
from fedflow.node import data
from fedflow.node.agent import NodeAgent
from fedflow.node.databases import CANONICAL_ROWS
from fedflow.node.siteconfig import load_config
from fedflow.results.run_compare import compare_runs
from fedflow.results.saved import load_run_dir
from fedflow.runtime import arun_study
from fedflow.runtime.coordinator import Coordinator, SiteRecord
from fedflow.study import load_study
from fedflow.wire import (
    PROTOCOL_VERSION,
    Bye,
    Failure,
    Finish,
    Hello,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Reply,
    Setup,
    Task,
)
from tests.helpers import write_study

PARAMS = {"target": "y", "features": ["x1", "x2"]}
NEEDED = {"x1": "numeric", "x2": "numeric", "y": "numeric"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _columns(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return {"x1": x[:, 0], "x2": x[:, 1], "y": 1.0 + x @ [2.0, -1.0] + rng.normal(size=n)}


def _csv(path: Path, seed: int, n: int = 300) -> Path:
    columns = _columns(seed, n)
    lines = ["x1,x2,y,note"] + [
        f"{a!r},{b!r},{c!r},row {i}"
        for i, (a, b, c) in enumerate(zip(*(v.tolist() for v in columns.values()), strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(path: Path, seed: int, n: int = 3000, group: int = 500) -> Path:
    columns = {k: pa.array(v) for k, v in _columns(seed, n).items()}
    table = pa.table({**columns, "note": pa.array([f"row {i}" for i in range(n)])})
    pq.write_table(table, path, row_group_size=group)  # several row groups
    return path


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash in chunks much smaller than the files, so a hash of part of a file shows."""
    monkeypatch.setattr(data, "_HASH_CHUNK", 1 << 10)


def _run(
    folder: Path,
    sites: dict[str, list[str]],
    params: dict[str, Any] = PARAMS,
    *,
    app: str = "linear-regression",
    min_count: int = 5,
    connectors: dict[str, Any] | None = None,
) -> Any:
    body = f'name = "fp"\napp = "{app}"\nmin_count = {min_count}\n[params]\n{_toml(params)}\n'
    for site, files in sites.items():
        body += f"\n[[clients]]\nname = {json.dumps(site)}\ndata = {json.dumps(files)}\n"
    study = load_study(write_study(folder, body))
    connectors = connectors or {name: MemoryConnector(name) for name in sites}
    out = folder / f"run-{time.monotonic_ns()}"
    with contextlib.suppress(FedflowError):  # a failed run still writes its manifest
        asyncio.run(arun_study(study, connectors=connectors, command=["test"], out=out))
    return json.loads((out / "manifest.json").read_text()), out


def _toml(params: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in params.items())


def test_the_manifest_records_each_files_sha256_csv_parquet_and_globs(tmp_path: Path) -> None:
    _csv(tmp_path / "berlin.csv", 1)
    _parquet(tmp_path / "vienna.parquet", 2)
    parts = [_csv(tmp_path / f"zurich-{i}.csv", 10 + i, 200) for i in range(3)]
    _parquet(tmp_path / "zurich-3.parquet", 13, 400, 100)  # a Parquet file with them
    manifest, _ = _run(
        tmp_path,
        {
            "berlin": ["berlin.csv"],
            "vienna": ["vienna.parquet"],
            "zurich": ["zurich-*.csv", "zurich-3.parquet"],
        },
    )
    assert manifest["status"] == "completed"
    expected = {
        "berlin": [tmp_path / "berlin.csv"],
        "vienna": [tmp_path / "vienna.parquet"],
        "zurich": [*parts, tmp_path / "zurich-3.parquet"],
    }
    for site, paths in expected.items():
        files = manifest["sites"][site]["files"]
        assert [f["name"] for f in files] == [p.name for p in paths]
        for f, path in zip(files, paths, strict=True):
            assert path.stat().st_size > 4 * data._HASH_CHUNK  # hashed in several chunks
            assert f["sha256"] == _sha256(path), (site, path.name)
            assert f["bytes"] == path.stat().st_size
            assert "sha256_unknown" not in f


def _canonical_sha256(database: str, query: str) -> str:
    """The canonical encoding of a query's result, written here from DuckDB's Arrow table:
    the Arrow IPC stream in record batches of ``CANONICAL_ROWS`` rows."""
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect(database, read_only=True)
    try:
        result = con.sql(query)
        fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
        table = fetch().combine_chunks()
    finally:
        con.close()
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=CANONICAL_ROWS):
            writer.write_batch(batch)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _defended(tmp_path: Path, config: str) -> NodeAgent:
    policy = tmp_path / "site-policy.toml"
    policy.write_text(config)
    return NodeAgent("h", load_config(policy), owned=False)


def test_a_query_and_a_file_dataset_are_fingerprinted_in_the_manifest(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    database = str(tmp_path / "cohort.duckdb")
    con = duckdb.connect(database)
    columns = {k: pa.array(v) for k, v in _columns(5, 70_000).items()}  # > one canonical batch
    rows = pa.table({"id": pa.array(np.arange(70_000)), **columns})
    con.register("rows", rows)
    con.execute("CREATE TABLE cohort AS SELECT * FROM rows")
    con.close()
    query = "SELECT id, x1, x2, y FROM cohort ORDER BY id"
    files = tmp_path / "files"
    files.mkdir()
    paths = [_parquet(files / "a.parquet", 7), _csv(files / "b.csv", 8)]
    for home in ("db", "fs"):
        (tmp_path / home).mkdir()
    agents = {
        "db": _defended(
            tmp_path / "db", f'[datasets.cohort]\nduckdb = "{database}"\nquery = "{query}"\n'
        ),
        "files": _defended(tmp_path / "fs", f'[datasets.cohort]\npath = "{files}/*"\n'),
    }
    coordinator = Coordinator(
        "linear-regression",
        PARAMS,
        {name: MemoryConnector(name, handler=agent.handle) for name, agent in agents.items()},
        min_count=5,
        setup={name: {"dataset": "cohort"} for name in agents},
    )
    asyncio.run(coordinator.run())
    db = coordinator.sites["db"].manifest()["files"]
    assert db == [
        {
            "name": "query:cohort",
            "sha256": _canonical_sha256(database, query),
            "bytes": db[0]["bytes"],
            "rows": 70_000,
        }
    ]
    fs = coordinator.sites["files"].manifest()["files"]
    assert [(f["name"], f["sha256"], f["bytes"]) for f in fs] == [
        (p.name, _sha256(p), p.stat().st_size) for p in paths
    ]


# -- a file that changes ----------------------------------------------------------------------
def _greeted(path: Path) -> NodeAgent:
    agent = NodeAgent("berlin")
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="berlin"))
    return agent


def _prepare(agent: NodeAgent, path: Path) -> Ready:
    ready = agent.handle(Setup(data=[str(path)], min_count=5))
    assert isinstance(ready, Ready), ready
    prepared = agent.handle(Prepare(app="linear-regression", params=PARAMS, columns=NEEDED))
    assert isinstance(prepared, Prepared), prepared
    return ready


def _task(agent: NodeAgent) -> Any:
    return agent.handle(Task(round=1, phase="factor", payload={}))


def _rewrite(path: Path, make: Any) -> None:
    """Replace ``path`` by a new file with other rows (a new inode, as most tools write)."""
    other = path.with_name("new-" + path.name)
    make(other)
    os.replace(other, path)


def _gate(monkeypatch: pytest.MonkeyPatch, only: str = "") -> threading.Event:
    """Hold the site's fingerprint thread until the returned event is set (or it is stopped);
    ``only``: just for files whose name starts so."""
    gate = threading.Event()
    real = data._hash_file

    def held(file: Any, stop: threading.Event) -> str | None:
        while file.path.name.startswith(only) and not gate.is_set() and not stop.is_set():
            time.sleep(0.005)
        return None if stop.is_set() else real(file, stop)

    monkeypatch.setattr(data, "_hash_file", held)
    return gate


def test_a_csv_file_replaced_after_setup_fails_prepare(tmp_path: Path) -> None:
    """CSV: Prepare's pass reads (and caches) the columns: it notices."""
    path = _csv(tmp_path / "berlin.csv", 3)
    agent = _greeted(path)
    assert isinstance(agent.handle(Setup(data=[str(path)], min_count=5)), Ready)
    _rewrite(path, lambda p: _csv(p, 4))
    reply = agent.handle(Prepare(app="linear-regression", params=PARAMS, columns=NEEDED))
    assert isinstance(reply, Failure) and reply.kind == "data"
    assert reply.message.startswith("berlin.csv changed since the site opened it")


def test_a_parquet_file_replaced_after_prepare_fails_the_round(tmp_path: Path) -> None:
    """Parquet: the round's pass reads the rows: it notices, and no reply leaves."""
    path = _parquet(tmp_path / "berlin.parquet", 3)
    agent = _greeted(path)
    _prepare(agent, path)
    _rewrite(path, lambda p: _parquet(p, 4))
    reply = _task(agent)
    assert isinstance(reply, Failure) and reply.kind == "data"
    assert reply.message.startswith("berlin.parquet changed since the site opened it")


def test_a_file_changed_after_the_apps_pass_but_before_it_was_hashed_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app read the old bytes; the hash would read the new ones: no reply, an error."""
    gate = _gate(monkeypatch)
    path = _parquet(tmp_path / "berlin.parquet", 3)
    source = data.open_files([path], site="berlin")
    source.start_fingerprints()
    table = data.prepare_streamed(
        source,
        dict.fromkeys(["x1", "y"], "numeric"),
        dropna=False,
        min_count=5,
        memory_limit=1 << 30,
        defer=True,
    )
    assert sum(len(b["x1"]) for b in table.batches(["x1", "y"], 700)) == 3000
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    gate.set()
    with pytest.raises(
        DataError, match=r"^site .berlin.: berlin.parquet changed since the site opened it"
    ) as e:
        source.fingerprints()
    assert e.value.site == "berlin" and e.value.file == "berlin.parquet"


def test_a_file_replaced_during_the_apps_pass_fails_at_the_end_of_its_pass(
    tmp_path: Path,
) -> None:
    path = _parquet(tmp_path / "berlin.parquet", 3)
    source = data.open_files([path], site="berlin")
    table = data.prepare_streamed(
        source,
        dict.fromkeys(["x1", "y"], "numeric"),
        dropna=False,
        min_count=5,
        memory_limit=1 << 30,
        defer=True,
    )
    batches = table.batches(["x1", "y"], 500)
    next(batches)
    _rewrite(path, lambda p: _parquet(p, 4))  # the site's open file still reads the old bytes
    with pytest.raises(DataError, match=r"^site .berlin.: berlin.parquet changed since the site"):
        for _ in batches:
            pass


def test_the_hash_is_complete_before_the_first_result_and_sent_with_bye(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _gate(monkeypatch)
    path = _csv(tmp_path / "berlin.csv", 3)
    agent = _greeted(path)
    ready = _prepare(agent, path)
    assert [(f.name, f.sha256, f.bytes, f.rows) for f in ready.files] == [
        ("berlin.csv", None, path.stat().st_size, 300)  # Setup does not wait for the hash
    ]
    threading.Timer(0.5, gate.set).start()
    reply = _task(agent)  # waits for the hash
    assert isinstance(reply, Reply)
    bye = agent.handle(Finish())
    assert isinstance(bye, Bye)
    assert [(f.name, f.sha256) for f in bye.files] == [("berlin.csv", _sha256(path))]


def test_a_site_that_ends_before_hashing_reports_its_hash_as_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gate(monkeypatch)  # never opened: the run ends first
    monkeypatch.setattr(agent_module, "FAILED_HASH_WAIT", 0.2)  # what a failed run waits
    path = _parquet(tmp_path / "berlin.parquet", 3)
    agent = _greeted(path)
    ready = _prepare(agent, path)
    bye = agent.handle(Finish(status="failed"))
    assert isinstance(bye, Bye) and [f.sha256 for f in bye.files] == [None]
    record = SiteRecord("berlin", MemoryConnector("berlin"), ready=ready, bye=bye)
    (entry,) = record.manifest()["files"]
    assert entry["sha256"] is None and entry["name"] == "berlin.parquet"
    assert "run ended before the site reported" in entry["sha256_unknown"]


def _exact(manifest: dict[str, Any], site: str, path: Path) -> None:
    (entry,) = manifest["sites"][site]["files"]
    assert entry["name"] == path.name and entry["sha256"] == _sha256(path), entry
    assert "sha256_unknown" not in entry


class _SlowReply(MemoryConnector):
    """Its reply to a task reaches the coordinator 0.2 s late (after another site failed)."""

    async def receive(self, timeout: float | None = None) -> bytes:
        if isinstance(self.received[-1], Task):
            await asyncio.sleep(0.2)
        return await super().receive(timeout)


def test_a_run_failing_at_round_1_records_every_sites_exact_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vienna raises in round 1 before its hash is complete; berlin's reply is still unread
    when the run fails: both sites' Bye (Finish "failed") carry the hashes."""
    gate = _gate(monkeypatch, only="vienna")
    vienna = NodeAgent("vienna")

    def handle(message: Any) -> Any:
        if isinstance(message, Finish):  # its hash completes only after Finish came
            assert not gate.is_set()
            threading.Timer(0.2, gate.set).start()
        return vienna.handle(message)

    paths = {s: _parquet(tmp_path / f"{s}.parquet", i) for i, s in enumerate(("berlin", "vienna"))}
    sites = {s: [p.name] for s, p in paths.items()}
    fault = {"site": "vienna", "round": 1, "mode": "raise"}
    connectors = {"berlin": _SlowReply("berlin"), "vienna": MemoryConnector("vienna", handle)}
    manifest, _ = _run(tmp_path, sites, fault, app="tests.plugins:Faulty", connectors=connectors)
    assert manifest["status"] == "failed"
    for site, path in paths.items():
        _exact(manifest, site, path)


def test_a_run_refused_at_prepare_records_every_sites_exact_sha256(tmp_path: Path) -> None:
    """vienna's 3 rows are fewer than min_count = 5: it refuses at Prepare, before any pass
    over its file; both sites still hash theirs and report them at Finish("failed")."""
    paths = {"berlin": _csv(tmp_path / "berlin.csv", 1), "vienna": _csv(tmp_path / "v.csv", 2, 3)}
    sites = {s: [p.name] for s, p in paths.items()}
    manifest, _ = _run(tmp_path, sites)
    assert manifest["status"] == "failed"
    assert "fewer than min_count = 5" in manifest["error"]["message"], manifest["error"]
    for site, path in paths.items():
        _exact(manifest, site, path)


def test_a_failed_run_at_prepare_with_a_data_error_records_the_sha256(tmp_path: Path) -> None:
    paths = {s: _csv(tmp_path / f"{s}.csv", 1) for s in ("berlin", "vienna")}
    sites = {s: [p.name] for s, p in paths.items()}
    bad = {"target": "y", "features": ["x1", "note"]}  # text where numbers are needed
    manifest, _ = _run(tmp_path, sites, bad)
    assert manifest["status"] == "failed"
    for site, path in paths.items():
        _exact(manifest, site, path)


class _KillAtRound2(LocalConnector):
    """A site process killed (SIGKILL) once it was sent round 2's task."""

    async def send(self, payload: bytes) -> None:
        await super().send(payload)
        message = MessageCodec().decode(payload)
        if isinstance(message, Task) and message.round == 2 and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)


def test_a_site_killed_mid_run_is_unknown_and_the_others_exact(tmp_path: Path) -> None:
    paths = {s: _parquet(tmp_path / f"{s}.parquet", i) for i, s in enumerate(("berlin", "vienna"))}
    sites = {s: [p.name] for s, p in paths.items()}
    hang = {"site": "vienna", "round": 2, "mode": "hang"}  # killed first
    connectors = {
        "berlin": LocalConnector("berlin", agent_args=["--owned"]),
        "vienna": _KillAtRound2("vienna", agent_args=["--owned"]),
    }
    manifest, _ = _run(tmp_path, sites, hang, app="tests.plugins:Faulty", connectors=connectors)
    assert manifest["status"] == "failed"
    assert "SIGKILL" in json.dumps(manifest["error"]), manifest["error"]
    _exact(manifest, "berlin", paths["berlin"])
    (entry,) = manifest["sites"]["vienna"]["files"]  # it never said goodbye: never a guess
    assert entry["sha256"] is None and entry["sha256_unknown"], entry


def test_a_failed_runs_manifest_says_an_unfinished_fingerprint_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gate(monkeypatch)  # the hashes never complete
    monkeypatch.setattr(agent_module, "FAILED_HASH_WAIT", 0.1)
    for site in ("berlin", "vienna"):
        _csv(tmp_path / f"{site}.csv", 1)
    sites = {"berlin": ["berlin.csv"], "vienna": ["vienna.csv"]}
    bad = {"target": "y", "features": ["x1", "note"]}  # text where numbers are needed
    runs = []
    for _ in range(2):
        manifest, out = _run(tmp_path, sites, bad)
        assert manifest["status"] == "failed"
        for site in sites:
            (entry,) = manifest["sites"][site]["files"]
            assert entry["sha256"] is None and entry["sha256_unknown"]
        runs.append(out)
    # two runs whose fingerprints are unknown are not said to hold the same data
    text = compare_runs(load_run_dir(runs[0]), load_run_dir(runs[1]))
    data_lines = text[text.index("data:") :].splitlines()
    assert not any("identical" in line for line in data_lines[:6]), data_lines
    assert any(line.split()[-2:] == ["unknown", "unknown"] for line in data_lines), data_lines


def test_a_file_removed_before_it_was_hashed_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _gate(monkeypatch)
    path = _csv(tmp_path / "berlin.csv", 3)
    source = data.open_files([path], site="berlin")
    source.start_fingerprints()
    path.unlink()
    gate.set()
    with pytest.raises(DataError, match=r"cannot read data file berlin.csv to hash it") as e:
        source.fingerprints()
    assert e.value.file == "berlin.csv"
    assert source.fingerprints(wait=False)[0].sha256 is None  # never a hash it did not compute


def test_a_file_touched_while_its_columns_load_fails_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apps that load whole columns (streaming = False): the same check around the load."""
    path = _csv(tmp_path / "berlin.csv", 3)
    source = data.open_files([path], site="berlin")
    real = data._DelimitedFile.read

    def read_then_touch(self: Any, names: list[str]) -> Any:
        out = real(self, names)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        return out

    monkeypatch.setattr(data._DelimitedFile, "read", read_then_touch)
    with pytest.raises(DataError, match=r"^site .berlin.: berlin.csv changed since the site"):
        source.load(["x1", "y"])
