"""secure = true over SSH sites (real sshd servers): the same result as plaintext and as local
sites, only masked sums in the rounds of trace.jsonl, and a site killed during a
secure round ends the run naming it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from fedflow.errors import SiteError
from fedflow.runtime import arun_study
from fedflow.study.load import load_study
from tests.ssh.sshd import SSHLab, ssh_quickstart
from tests.ssh.test_ssh import _AtRound, prepared, wait_until  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def _result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def test_secure_over_ssh_matches_plaintext_and_traces_only_masked_messages(
    prepared: SSHLab,  # noqa: F811
    trusted: Path,
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "secure").mkdir()
    plain = load_study(ssh_quickstart(prepared, tmp_path / "plain"))
    secure = load_study(ssh_quickstart(prepared, tmp_path / "secure", secure=True))
    asyncio.run(arun_study(plain, out=tmp_path / "run-plain", command=["test"]))
    run = asyncio.run(arun_study(secure, out=tmp_path / "run-secure", command=["t"], trace=True))
    assert run.status == "completed"
    got, want = _result(tmp_path / "run-secure"), _result(tmp_path / "run-plain")
    assert got["rounds"] == want["rounds"]
    for name, value in want["result"]["coefficients"].items():
        assert got["result"]["coefficients"][name] == pytest.approx(value, rel=1e-8)
    lines = [
        json.loads(x) for x in (tmp_path / "run-secure" / "trace.jsonl").read_text().splitlines()
    ]
    in_rounds = [m for m in lines if m["round"] is not None]
    assert in_rounds and {m["type"] for m in in_rounds} == {"masked_sum"}
    for site in ("berlin", "vienna", "zurich"):
        mine = [m["round"] for m in in_rounds if m["site"] == site]
        assert sorted(set(mine)) == list(range(1, got["rounds"] + 1))
    manifest = json.loads((tmp_path / "run-secure" / "manifest.json").read_text())
    assert manifest["secure"] is True
    rounds = json.loads((tmp_path / "run-secure" / "metrics.json").read_text())["rounds"]
    assert all(r["exchanges"] in (1, 2) for r in rounds)
    for site in prepared.sites:
        assert wait_until(lambda s=site: not s.pids())


def test_a_site_killed_during_a_secure_round_ends_the_run_naming_it(
    prepared: SSHLab,  # noqa: F811
    trusted: Path,
    tmp_path: Path,
) -> None:
    study = load_study(ssh_quickstart(prepared, tmp_path, secure=True))
    victim = prepared.sites[1]

    def kill() -> None:
        for pid in victim.pids():
            os.kill(pid, 9)

    with pytest.raises(SiteError, match=r"site 'vienna': .*(killed by SIGKILL|exit)"):
        asyncio.run(
            arun_study(study, out=tmp_path / "run", observer=_AtRound(2, kill), command=["t"])
        )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["site"] == "vienna"
    for site in prepared.sites:
        assert wait_until(lambda s=site: not s.pids())
