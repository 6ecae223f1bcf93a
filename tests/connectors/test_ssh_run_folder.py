"""An SSH site's run folder follows the run, not the connection: every connection of a run (a
restarted agent) and ``fedflow resume`` (the same run directory) use ``runs/<run>/``, and the
cleanup at close keeps it while its state folder holds files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fedflow.connectors import connector_for
from fedflow.connectors.ssh import SSHConnector
from fedflow.study.load import study_from_dict
from fedflow.study.schema import Study


def _study(names: list[str]) -> Study:
    return study_from_dict(
        {
            "name": "folder-tests",
            "app": "mean",
            "params": {"columns": ["x"]},
            "clients": [{"name": n, "hostname": "10.0.0.7", "data": ["x.csv"]} for n in names],
        }
    )


def _connector(tmp_path: Path, run: str, site: int = 0) -> SSHConnector:
    study = _study(["vienna", "graz"])
    client = study.clients[site]
    conn = connector_for(
        client,
        study,
        log_path=tmp_path / "logs" / f"{client.name}.log",
        output_dir=tmp_path / run / "sites" / client.name,
    )
    assert isinstance(conn, SSHConnector)
    return conn


def test_the_run_key_is_the_same_for_the_same_run_and_site_only(tmp_path: Path) -> None:
    first = _connector(tmp_path, "run-a").run_key()
    assert _connector(tmp_path, "run-a").run_key() == first  # a retry, or fedflow resume
    assert _connector(tmp_path, "run-b").run_key() != first  # another run
    assert _connector(tmp_path, "run-a", site=1).run_key() != first  # another site


def _cleanup(tmp_path: Path, with_state: bool) -> Path:
    conn = _connector(tmp_path, "run-a")
    run = tmp_path / "site" / "runs" / conn.run_key()
    conn.run_dir, conn.conn_dir, conn.output_dir = str(run), f"{run}/conn-1", f"{run}/out"
    (run / "conn-1").mkdir(parents=True)
    (run / "conn-2").mkdir()  # another connection of the run, still open
    (run / "out" / "state").mkdir(parents=True)
    if with_state:
        (run / "out" / "state" / "train-k-round-1.safetensors").write_bytes(b"c")
    subprocess.run(["sh", "-c", conn._cleanup_command()], check=True)
    return run


def test_close_keeps_the_run_folder_while_its_state_folder_holds_files(tmp_path: Path) -> None:
    run = _cleanup(tmp_path, with_state=True)
    assert (run / "out" / "state" / "train-k-round-1.safetensors").read_bytes() == b"c"
    assert not (run / "conn-1").exists() and (run / "conn-2").is_dir()


def test_close_removes_a_run_folder_without_state(tmp_path: Path) -> None:
    run = _cleanup(tmp_path, with_state=False)
    assert not run.exists() and run.parent.is_dir()


def test_a_connector_without_run_identity_has_a_folder_per_connection() -> None:
    study = _study(["vienna"])
    conn = SSHConnector(study.clients[0], study)
    conn.run_dir = conn.conn_dir = "/w/runs/20261201T000000-abcd"
    assert conn._cleanup_command() == "rm -rf -- /w/runs/20261201T000000-abcd"
