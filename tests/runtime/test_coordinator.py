"""Full runs over in-memory connectors: results, metrics, the run directory, and every failure path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fedflow._version import __version__
from fedflow.connectors.memory import MemoryConnector
from fedflow.errors import DataError, RemoteProtocolError, SiteError, SiteTimeout
from fedflow.node.agent import NodeAgent
from fedflow.runtime import arun_study
from fedflow.study import load_study
from fedflow.wire import Failure, Hello, Reply, Task, Welcome
from tests.helpers import SITES, copy_quickstart


@pytest.fixture()
def study(tmp_path: Path):
    return load_study(copy_quickstart(tmp_path))


def memory_sites(**handlers):
    return {name: MemoryConnector(name, handlers.get(name)) for name in SITES}


def run(study, connectors, **kwargs):
    return asyncio.run(arun_study(study, connectors=connectors, command=["test"], **kwargs))


def test_full_run_writes_a_complete_run_directory(study, tmp_path: Path) -> None:
    result = run(study, memory_sites(), out=tmp_path / "run", compare=True)
    assert result.status == "completed" and result.matches is True
    assert result.result["converged"] is True
    assert set(result.result["coefficients"]) == {
        "intercept",
        "radius",
        "texture",
        "smoothness",
        "concavity",
        "symmetry",
    }
    folder = tmp_path / "run"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["error"] is None
    assert manifest["fedflow"] == __version__
    assert manifest["study"]["sha256"]
    assert (folder / "study.original.toml").read_text() == study.source_text
    berlin = manifest["sites"]["berlin"]
    assert berlin["rows"] == 280 and berlin["files"][0]["name"] == "berlin.csv"
    assert len(berlin["files"][0]["sha256"]) == 64
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [p["name"] for p in metrics["phases"]][:4] == [
        "start sites",
        "stage data",
        "handshake",
        "prepare",
    ]
    assert len(metrics["rounds"]) == result.result["iterations"]
    assert metrics["rounds"][0]["sites"]["vienna"]["bytes_from_site"] > 0
    saved = json.loads((folder / "result.json").read_text())
    assert saved["app"] == "logistic-regression" and saved["result"] == result.result
    comparison = json.loads((folder / "comparison.json").read_text())
    assert comparison["status"] == "match" and comparison["compared"] > 20


def test_a_site_that_dies_ends_the_run_naming_it(study, tmp_path: Path) -> None:
    agent = NodeAgent("vienna")

    def dies_in_round_two(message):
        if isinstance(message, Task) and message.round == 2:
            raise RuntimeError("segfault")
        return agent.handle(message)

    with pytest.raises(SiteError, match="site 'vienna': node agent exited") as info:
        run(study, memory_sites(vienna=dies_in_round_two), out=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["site"] == "vienna"
    assert info.value.run_dir == tmp_path / "run"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][0]["round"] == 1


def test_a_silent_site_times_out(study, tmp_path: Path) -> None:
    study.timeout = 0.2
    agent = NodeAgent("zurich")

    def stalls(message):
        return None if isinstance(message, Task) else agent.handle(message)

    with pytest.raises(SiteTimeout, match="site 'zurich': no answer within 0.2 s"):
        run(study, memory_sites(zurich=stalls), out=tmp_path / "run")


def test_site_errors_keep_their_kind(study, tmp_path: Path) -> None:
    agent = NodeAgent("berlin")

    def data_error(message):
        if isinstance(message, Task):
            return Failure(
                kind="data", message="column 'x' exploded", file="berlin.csv", column="x"
            )
        return agent.handle(message)

    with pytest.raises(DataError, match="site 'berlin': column 'x' exploded") as info:
        run(study, memory_sites(berlin=data_error), out=tmp_path / "run")
    assert info.value.file == "berlin.csv"


def test_version_mismatch_is_reported(study, tmp_path: Path) -> None:
    def old(message):
        assert isinstance(message, Hello)
        return Welcome(protocol=1, version="0.0.1", site="vienna", python="3.11", pid=1, host="h")

    with pytest.raises(SiteError, match="site 'vienna': runs fedflow 0.0.1"):
        run(study, memory_sites(vienna=old), out=tmp_path / "run")


def test_unexpected_reply_is_the_sites_fault(study, tmp_path: Path) -> None:
    with pytest.raises(RemoteProtocolError, match="site 'berlin': expected Welcome, got Reply"):
        run(study, memory_sites(berlin=lambda m: Reply(round=0, payload={})), out=tmp_path / "run")


def test_a_missing_column_at_one_site(study, tmp_path: Path) -> None:
    csv = tmp_path / "zurich.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop 'malignant'
    with pytest.raises(
        DataError, match="site 'zurich': column 'malignant' is missing in zurich.csv"
    ):
        run(study, memory_sites(), out=tmp_path / "run")


def test_out_folder_must_be_empty_unless_forced(study, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    from fedflow.errors import StudyError

    with pytest.raises(StudyError, match="not empty"):
        run(study, memory_sites(), out=out)
    assert run(study, memory_sites(), out=out, force=True).status == "completed"
    assert (out / "keep.txt").exists()


def test_default_run_directory_is_outdir_name_timestamp(study) -> None:
    first = run(study, memory_sites())
    second = run(study, memory_sites())
    assert first.dir.parent == study.folder / "results" / "breast-cancer"
    assert first.dir != second.dir
