"""``fedflow run --trace``: trace.jsonl holds every message the coordinator received, in order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import fedflow
from fedflow.connectors.memory import MemoryConnector
from fedflow.results.trace import TraceWriter, to_json
from fedflow.wire import Reply
from tests.helpers import SITES, copy_quickstart
from tests.helpers import fedflow as cli


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_traced_run_records_every_received_message_with_its_site(tmp_path: Path) -> None:
    study = fedflow.load_study(copy_quickstart(tmp_path))
    run = fedflow.run(
        study,
        app="stats",
        params={"columns": ["radius"]},
        connectors={name: MemoryConnector(name) for name in SITES},
        out=tmp_path / "r",
        trace=True,
    )
    assert run.status == "completed"
    lines = _lines(run.dir / "trace.jsonl")
    rounds = len(run.metrics["rounds"])
    assert rounds >= 1
    # Welcome, Ready, Prepared, one Reply per round, Bye — for every site
    assert len(lines) == len(SITES) * (4 + rounds)
    assert [line["seq"] for line in lines] == list(range(len(lines)))
    for site in SITES:
        mine = [line for line in lines if line["site"] == site]
        assert [m["type"] for m in mine] == ["welcome", "ready", "prepared"] + [
            "reply"
        ] * rounds + ["bye"]
        replies = [m for m in mine if m["type"] == "reply"]
        assert [m["round"] for m in replies] == [r["round"] for r in run.metrics["rounds"]]
        assert [m["phase"] for m in replies] == [r["phase"] for r in run.metrics["rounds"]]
        assert all(m["message"]["round"] == m["round"] for m in replies)
        assert all(m["round"] is None and m["phase"] is None for m in mine if m["type"] != "reply")
        assert mine[1]["message"]["rows"] > 0
    assert "trace" in " ".join(run.manifest["command"])


def test_without_trace_there_is_no_file(tmp_path: Path) -> None:
    study = fedflow.load_study(copy_quickstart(tmp_path))
    run = fedflow.run(
        study,
        app="stats",
        params={"columns": ["radius"]},
        connectors={name: MemoryConnector(name) for name in SITES},
        out=tmp_path / "r",
    )
    assert run.status == "completed"
    assert not (run.dir / "trace.jsonl").exists()


def test_the_cli_flag_writes_the_trace(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    done = cli("run", str(study), "--trace", "-q", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = _lines(tmp_path / "run" / "trace.jsonl")
    assert {line["site"] for line in lines} == set(SITES)
    assert lines[-1]["type"] == "bye"
    replies = [line for line in lines if line["type"] == "reply"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(replies) == len(SITES) * len(metrics["rounds"])


def test_arrays_become_dtype_shape_and_exact_values(tmp_path: Path) -> None:
    values = np.array([[0.1, -2.5e-310], [np.nan, np.inf]])
    message = Reply(
        round=2, payload={"m": values, "n": np.int64(7), "c": np.arange(3, dtype=np.int32)}
    )
    writer = TraceWriter(tmp_path / "t.jsonl")
    writer.record("berlin", message, round=2, phase="moments")
    (line,) = _lines(tmp_path / "t.jsonl")
    assert line["site"] == "berlin" and line["round"] == 2 and line["phase"] == "moments"
    m = line["message"]["payload"]["m"]
    assert m["dtype"] == "float64" and m["shape"] == [2, 2]
    assert m["data"][0] == [0.1, -2.5e-310] and m["data"][1] == ["nan", "inf"]
    assert line["message"]["payload"]["n"] == 7
    assert line["message"]["payload"]["c"] == {"dtype": "int32", "shape": [3], "data": [0, 1, 2]}
    assert to_json({"x": np.float64(1.0)}) == {"x": 1.0}
