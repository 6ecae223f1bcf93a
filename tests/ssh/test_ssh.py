"""SSH sites against real sshd servers: connect, prepare, stage, run, collect, and every failure."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fedflow._version import __version__
from fedflow.connectors.hostkeys import trust_hosts
from fedflow.connectors.siteprep import MARKER
from fedflow.connectors.ssh import SSHConnector
from fedflow.errors import SiteError
from fedflow.runtime import arun_study
from fedflow.runtime.observer import Observer
from fedflow.study.load import load_study, study_from_dict
from fedflow.wire import PROTOCOL_VERSION, Hello, MessageCodec, Welcome
from tests.helpers import QUICKSTART, SITES
from tests.ssh.sshd import Site, SSHLab, ssh_quickstart

pytestmark = pytest.mark.ssh
codec = MessageCodec()


def study_for(
    lab: SSHLab, sites: list[Site] | None = None, client: dict[str, Any] | None = None, **keys: Any
):
    clients = [
        {**s.client_entry(lab.client_key), **(client or {})} for s in (sites or lab.sites[:1])
    ]
    return study_from_dict({"name": "ssh-tests", "app": "mean", "clients": clients, **keys})


async def handshake(conn: SSHConnector) -> Welcome:
    await conn.send(
        codec.encode(Hello(protocol=PROTOCOL_VERSION, version=__version__, site=conn.site))
    )
    welcome = codec.decode(await conn.receive(30))
    assert isinstance(welcome, Welcome)
    return welcome


def run_connector(study, tmp_path: Path, body, client: int = 0):
    async def go():
        conn = SSHConnector(study.clients[client], study, log_path=tmp_path / "site.log")
        try:
            await conn.start()
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def wait_until(check, seconds: float = 20.0) -> bool:
    """Poll ``check`` until it is true or ``seconds`` pass; return its last value."""
    deadline = time.monotonic() + seconds
    while not (ok := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return bool(ok)


@pytest.fixture(scope="package")
def prepared(lab: SSHLab, coordinator_home: Path) -> SSHLab:
    """Prepare every lab site's venv once (fresh, offline wheels, concurrently) for the session."""
    folder = lab.root / "prepare-logs"
    folder.mkdir(exist_ok=True)
    kh = coordinator_home / ".config" / "fedflow" / "known_hosts"
    kh.parent.mkdir(parents=True, exist_ok=True)
    kh.write_text(lab.known_hosts.read_text())
    study = study_for(lab, lab.sites)

    async def one(i: int) -> None:
        conn = SSHConnector(study.clients[i], study, log_path=folder / f"site{i}.log")
        try:
            await conn.start()
            await handshake(conn)
        finally:
            await conn.close()

    async def every() -> None:
        await asyncio.gather(*(one(i) for i in range(len(lab.sites))))

    try:
        asyncio.run(every())
    finally:
        kh.unlink(missing_ok=True)
    return lab


# -- connecting and preparing -------------------------------------------------------------------


def test_agent_runs_over_ssh_in_a_private_prepared_venv(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]
    study = study_for(prepared)

    async def body(conn: SSHConnector):
        welcome = await handshake(conn)
        assert welcome.site == site.name and welcome.version == __version__
        assert conn.output_dir and conn.output_dir.startswith(str(site.home))
        return conn.info

    info = run_connector(study, tmp_path, body)
    workdir = Path(info.workdir)
    assert workdir == site.home / ".fedflow" / "ssh-tests"
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    marker = json.loads((workdir / "venv" / MARKER).read_text())
    assert marker["install"] == "wheels"
    assert stat.S_IMODE((workdir / "venv" / MARKER).stat().st_mode) == 0o600
    assert workdir.stat().st_uid == site.home.stat().st_uid
    log = (tmp_path / "site.log").read_text()
    assert "creating the venv" not in log  # reused
    assert "node agent started" in log  # the agent's stderr reached the local log
    assert not (workdir / "runs").exists() or not any(
        (workdir / "runs").iterdir()
    )  # run folder removed
    assert wait_until(lambda: not site.pids())


def test_fresh_site_was_prepared_offline_from_uploaded_wheels(prepared: SSHLab) -> None:
    for i, site in enumerate(prepared.sites):
        log = (prepared.root / "prepare-logs" / f"site{i}.log").read_text()
        assert "creating the venv" in log and "(offline wheels)" in log
        wheels = sorted(p.name for p in (site.home / ".fedflow" / "ssh-tests" / "wheels").iterdir())
        assert any(w.startswith("fedflow_studies-") for w in wheels)
        assert any(w.startswith("numpy-") for w in wheels) and any(
            w.startswith("msgspec-") for w in wheels
        )


def test_outdated_fedflow_in_the_venv_is_replaced(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]
    marker_path = site.home / ".fedflow" / "ssh-tests" / "venv" / MARKER
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "build": "0.0.1+old"}))

    async def body(conn: SSHConnector):
        return (await handshake(conn)).version

    assert run_connector(study_for(prepared), tmp_path, body) == __version__
    assert "updating fedflow in the prepared venv" in (tmp_path / "site.log").read_text()
    assert json.loads(marker_path.read_text())["build"] == marker["build"]


def test_stage_uploads_verified_resumes_and_skips_unchanged(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]
    data = tmp_path / "cohort.csv"
    data.write_bytes(b"x,y\n" + b"".join(f"{i},{i * 2}\n".encode() for i in range(200_000)))
    study = study_for(prepared)
    seen: list[tuple[str, int, int]] = []

    async def body(conn: SSHConnector):
        conn.progress = lambda name, done, total: seen.append((name, done, total))
        first = await conn.stage([str(data)])
        target = Path(first[0])
        assert target.read_bytes() == data.read_bytes()
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        sent = conn.bytes_sent
        # unchanged: not sent again
        assert await conn.stage([str(data)]) == first and conn.bytes_sent == sent
        # an interrupted copy is resumed from where it stopped, then verified
        target.unlink()
        part = target.with_name(target.name + ".part")
        part.write_bytes(data.read_bytes()[:500_000])
        shutil.chown(part, site.user, site.user)
        await conn.stage([str(data)])
        assert target.read_bytes() == data.read_bytes() and not part.exists()
        assert conn.bytes_sent - sent == data.stat().st_size - 500_000
        # a corrupt partial copy is caught by the checksum and removed
        target.unlink()
        part.write_bytes(b"garbage" * 10)
        shutil.chown(part, site.user, site.user)
        with pytest.raises(SiteError, match="checksum mismatch"):
            await conn.stage([str(data)])
        assert not part.exists()
        return first

    staged = run_connector(study, tmp_path, body)
    assert staged[0] == f"{site.home}/.fedflow/ssh-tests/data/cohort.csv"
    assert seen[-1][0].endswith("cohort.csv") and seen[-1][1] == seen[-1][2] == data.stat().st_size


def test_skip_data_transfer_uses_site_paths_and_copies_nothing(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    study = study_for(prepared, skip_data_transfer=True)

    async def body(conn: SSHConnector):
        return await conn.stage(["/srv/cohort/at-the-site.csv"]), conn.bytes_sent

    assert run_connector(study, tmp_path, body) == (["/srv/cohort/at-the-site.csv"], 0)


def test_collect_fetches_outputs_unless_skipped(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]

    async def body(conn: SSHConnector):
        await handshake(conn)  # the agent is up: its output folder exists
        out = Path(conn.output_dir)
        (out / "projection.csv").write_text("pc1,pc2\n1,2\n")
        shutil.chown(out / "projection.csv", site.user, site.user)
        got = await conn.collect(["projection.csv"], tmp_path / "sites" / conn.site)
        with pytest.raises(SiteError, match="outside its folder"):
            await conn.collect(["../../venv/fedflow-ready.json"], tmp_path / "evil")
        return got

    got = run_connector(study_for(prepared), tmp_path, body)
    assert got == [tmp_path / "sites" / "site1" / "projection.csv"]
    assert got[0].read_text() == "pc1,pc2\n1,2\n"

    skipped = study_for(prepared, skip_result_transfer=True)

    async def body2(conn: SSHConnector):
        await handshake(conn)
        (Path(conn.output_dir) / "x.csv").write_text("1\n")
        return await conn.collect(["x.csv"], tmp_path / "skipped")

    assert run_connector(skipped, tmp_path, body2) == [] and not (tmp_path / "skipped").exists()


def test_provision_script_runs_first_and_its_failure_names_the_site(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\necho provisioned > provisioned.txt\n")
    study = study_from_dict(
        {
            "name": "ssh-tests",
            "app": "mean",
            "provision_script": str(script),
            "clients": [site.client_entry(prepared.client_key)],
        }
    )

    async def body(conn: SSHConnector):
        return (await handshake(conn)).version

    assert run_connector(study, tmp_path, body) == __version__
    assert (site.home / ".fedflow" / "ssh-tests" / "provisioned.txt").read_text() == "provisioned\n"
    script.write_text("#!/bin/sh\necho 'no docker here' >&2\nexit 3\n")
    with pytest.raises(
        SiteError,
        match=r"site 'site1': provision script setup.sh failed \(exit status 3\): no docker here",
    ):
        run_connector(study, tmp_path, body)


def test_ssh_config_alias_and_ssh_agent(
    prepared: SSHLab, trusted: Path, coordinator_home: Path, tmp_path: Path
) -> None:
    if not shutil.which("ssh-agent") or not shutil.which("ssh-add"):
        pytest.skip("ssh-agent/ssh-add not installed")
    site = prepared.sites[0]
    config = coordinator_home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700, exist_ok=True)
    config.write_text(
        f"Host vienna-node\n  HostName {site.host}\n  Port {site.port}\n  User {site.user}\n"
    )
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        assert wait_until(sock.exists, 5)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(
            ["ssh-add", str(prepared.client_key)], env=env, check=True, capture_output=True
        )
        study = study_from_dict(
            {
                "name": "ssh-tests",
                "app": "mean",
                "clients": [{"name": "vienna", "hostname": "vienna-node"}],
            }
        )
        os.environ["SSH_AUTH_SOCK"] = str(sock)

        async def body(conn: SSHConnector):
            return (await handshake(conn)).site, conn.describe()["host"]

        assert run_connector(study, tmp_path, body) == (
            "vienna",
            site.host if site.port == 22 else f"[{site.host}]:{site.port}",
        )
    finally:
        os.environ.pop("SSH_AUTH_SOCK", None)
        agent.terminate()
        agent.wait(5)
        config.unlink()


# -- host keys ---------------------------------------------------------------------------------


def test_unknown_host_key_stops_with_its_fingerprint(
    lab: SSHLab, coordinator_home: Path, tmp_path: Path
) -> None:
    site = lab.sites[0]
    fp = site.host_key.get_fingerprint("sha256")
    with pytest.raises(SiteError, match="unknown") as err:
        run_connector(study_for(lab), tmp_path, handshake)
    assert (
        site.host in str(err.value) and fp in str(err.value) and "fedflow trust" in str(err.value)
    )
    assert str(err.value).startswith("site 'site1': ")


def test_trust_new_hosts_records_the_key_and_trust_command(
    lab: SSHLab, coordinator_home: Path, tmp_path: Path
) -> None:
    kh = coordinator_home / ".config" / "fedflow" / "known_hosts"
    kh.unlink(missing_ok=True)
    site = lab.sites[2]
    fp = site.host_key.get_fingerprint("sha256")
    try:
        results = trust_hosts(study_for(lab, lab.sites[1:]))
        assert [r.status for r in results] == ["added", "added"]
        assert results[1].fingerprint == fp and tuple(results[1])[0] == "site3"
        assert [r.status for r in trust_hosts(study_for(lab, lab.sites[1:]))] == ["known", "known"]
        kh.unlink()
        study = study_for(lab, [site], trust_new_hosts=True)
        assert run_connector(study, tmp_path, handshake).site == "site3"
        assert [r.status for r in trust_hosts(study)] == ["known"]
        assert site.host in kh.read_text()
        assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    finally:
        kh.unlink(missing_ok=True)


def test_changed_host_key_is_always_refused(
    lab: SSHLab, coordinator_home: Path, tmp_path: Path
) -> None:
    site = lab.sites[0]
    kh = coordinator_home / ".config" / "fedflow" / "known_hosts"
    kh.parent.mkdir(parents=True, exist_ok=True)
    other = asyncssh.generate_private_key("ssh-ed25519")
    label = site.host if site.port == 22 else f"[{site.host}]:{site.port}"
    kh.write_text(f"{label} {other.export_public_key('openssh').decode()}")
    try:
        study = study_for(lab, trust_new_hosts=True)
        with pytest.raises(SiteError, match="CHANGED") as err:
            run_connector(study, tmp_path, handshake)
        assert site.host_key.get_fingerprint("sha256") in str(err.value)
        assert [r.status for r in trust_hosts(study)] == ["changed"]
        assert kh.read_text().count("\n") == 1  # nothing recorded
    finally:
        kh.unlink(missing_ok=True)


# -- failures ----------------------------------------------------------------------------------


def test_wrong_user_key_is_refused_by_name(lab: SSHLab, trusted: Path, tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "not-authorized"
    key.write_private_key(path)
    path.chmod(0o600)
    entry = {**lab.sites[0].client_entry(path)}
    study = study_from_dict({"name": "ssh-tests", "app": "mean", "clients": [entry]})
    with pytest.raises(SiteError, match=r"site 'site1': .* refused ") as err:
        run_connector(study, tmp_path, handshake)
    assert str(path) in str(err.value)


def test_missing_python_is_reported(lab: SSHLab, trusted: Path, tmp_path: Path) -> None:
    entry = {
        **lab.sites[0].client_entry(lab.client_key),
        "python": "python3.99",
        "workdir": "nopython",
    }
    study = study_from_dict({"name": "ssh-tests", "app": "mean", "clients": [entry]})
    with pytest.raises(
        SiteError, match=r"site 'site1': no usable Python at the site \('python3.99' not found"
    ):
        run_connector(study, tmp_path, handshake)


def test_site_without_python_on_its_path_is_reported(
    lab: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = lab.sites[0]
    empty = site.home / "bin-without-python"
    empty.mkdir()
    env = site.home / ".ssh" / "environment"  # sshd: PermitUserEnvironment PATH
    env.write_text(f"PATH={empty}\n")
    subprocess.run(["chown", f"{site.user}:{site.user}", str(empty), str(env)], check=True)
    study = study_for(lab, client={"workdir": "nopython"})
    try:
        with pytest.raises(
            SiteError, match=r"site 'site1': no usable Python at the site \('python3' not found"
        ):
            run_connector(study, tmp_path, handshake)
    finally:
        env.unlink()
        empty.rmdir()


def test_unreachable_site_is_named(lab: SSHLab, trusted: Path, tmp_path: Path) -> None:
    entry = {**lab.sites[0].client_entry(lab.client_key), "port": 1}
    study = study_from_dict({"name": "ssh-tests", "app": "mean", "clients": [entry]})
    with pytest.raises(SiteError, match=r"site 'site1': cannot connect to"):
        run_connector(study, tmp_path, handshake)


# -- whole studies -----------------------------------------------------------------------------


def test_study_over_ssh_gives_the_same_result_as_local_sites(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "ssh").mkdir()
    local = load_study(shutil.copy(QUICKSTART / "study.toml", tmp_path / "local" / "study.toml"))
    for name in SITES:
        shutil.copy(QUICKSTART / f"{name}.csv", tmp_path / "local" / f"{name}.csv")
    remote = load_study(ssh_quickstart(prepared, tmp_path / "ssh"))
    here = asyncio.run(arun_study(local, out=tmp_path / "run-local", command=["test"]))
    there = asyncio.run(arun_study(remote, out=tmp_path / "run-ssh", command=["test"]))
    assert there.status == here.status == "completed"
    local_result = json.loads((tmp_path / "run-local" / "result.json").read_text())
    ssh_result = json.loads((tmp_path / "run-ssh" / "result.json").read_text())
    assert ssh_result == local_result
    manifest = json.loads((tmp_path / "run-ssh" / "manifest.json").read_text())
    assert (
        manifest["sites"]["vienna"]["rows"]
        == json.loads((tmp_path / "run-local" / "manifest.json").read_text())["sites"]["vienna"][
            "rows"
        ]
    )
    assert "node agent started" in (tmp_path / "run-ssh" / "logs" / "vienna.log").read_text()
    for site in prepared.sites:
        assert wait_until(lambda s=site: not s.pids())


class _AtRound(Observer):
    def __init__(self, round: int, action) -> None:
        self.round, self.action = round, action

    def round_started(self, round: int) -> None:
        if round == self.round:
            self.action()


def test_killed_agent_mid_round_fails_the_run_naming_the_site(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    study = load_study(ssh_quickstart(prepared, tmp_path))
    victim = prepared.sites[1]

    def kill() -> None:
        for pid in victim.pids():
            os.kill(pid, 9)

    with pytest.raises(SiteError, match=r"site 'vienna': .*(killed by SIGKILL|exit)") as err:
        asyncio.run(
            arun_study(study, out=tmp_path / "run", observer=_AtRound(2, kill), command=["test"])
        )
    assert "vienna" in str(err.value)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "vienna" in json.dumps(manifest["error"])
    for site in prepared.sites:
        assert wait_until(lambda s=site: not s.pids())


def test_link_down_mid_round_is_noticed_and_leaves_no_remote_agent(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    if prepared.mode != "netns":
        pytest.skip("taking a link down needs network namespaces (root)")
    study = load_study(ssh_quickstart(prepared, tmp_path))
    victim = prepared.sites[2]
    try:
        with pytest.raises(SiteError, match=r"site 'zurich': .*(connection|SSH)") as err:
            asyncio.run(
                arun_study(
                    study,
                    out=tmp_path / "run",
                    observer=_AtRound(2, lambda: victim.link(False)),
                    command=["test"],
                )
            )
        assert "zurich" in str(err.value)
        # the site's sshd notices the dead client (ClientAlive) and the agent exits on EOF
        assert wait_until(lambda: not victim.pids(), 30)
    finally:
        victim.link(True)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    for site in prepared.sites[:2]:
        assert wait_until(lambda s=site: not s.pids())


@pytest.mark.skipif(
    "install" not in __import__("fedflow.study.schema", fromlist=["Client"]).Client.model_fields,
    reason="the study key clients.install is not in the schema yet",
)
def test_index_install_uploads_only_fedflow_and_uses_the_sites_own_index(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    from fedflow.connectors.wheel import cache_dir

    site = prepared.sites[2]
    # the site's "package index": a wheel folder its own pip configuration points at
    index = site.home / "site-index"
    index.mkdir()
    for wheel in next((cache_dir() / "wheels").glob("deps-*")).glob("*.whl"):
        shutil.copy(wheel, index)
    conf = site.home / ".config" / "pip"
    conf.mkdir(parents=True)
    (conf / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {index}\n")
    subprocess.run(
        ["chown", "-R", f"{site.user}:{site.user}", str(index), str(site.home / ".config")],
        check=True,
    )
    study = study_for(prepared, [site], {"workdir": "index-site", "install": "index"})

    async def body(conn: SSHConnector):
        return (await handshake(conn)).version

    try:
        assert run_connector(study, tmp_path, body) == __version__
        assert "(package index)" in (tmp_path / "site.log").read_text()
        uploaded = sorted(p.name for p in (site.home / "index-site" / "wheels").iterdir())
        assert [w for w in uploaded if w.endswith(".whl")] == [
            w for w in uploaded if w.startswith("fedflow_studies-")
        ]
    finally:
        shutil.rmtree(index)
        shutil.rmtree(site.home / ".config")
        shutil.rmtree(site.home / "index-site", ignore_errors=True)


_COORDINATOR = """
import asyncio, sys
from pathlib import Path
from fedflow.connectors.ssh import SSHConnector
from fedflow.study.load import study_from_dict
from fedflow.wire import PROTOCOL_VERSION, Hello, MessageCodec
from fedflow._version import __version__

entry = dict(zip(["name", "hostname", "port", "username", "sshkey"], sys.argv[1:6]))
entry["port"] = int(entry["port"])
study = study_from_dict({"name": "ssh-tests", "app": "mean", "clients": [entry]})

async def main():
    conn = SSHConnector(study.clients[0], study, log_path=Path(sys.argv[6]))
    await conn.start()
    codec = MessageCodec()
    await conn.send(codec.encode(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="x")))
    await conn.receive(30)
    print("ready", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_agent_exits_when_the_coordinator_dies(
    prepared: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    site = prepared.sites[0]
    entry = site.client_entry(prepared.client_key)
    args = [str(entry[k]) for k in ("name", "hostname", "port", "username", "sshkey")]
    proc = subprocess.Popen(
        [sys.executable, "-c", _COORDINATOR, *args, str(tmp_path / "site.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert site.pids(), "the agent should be running at the site"
    finally:
        proc.kill()
        proc.wait(10)
    assert wait_until(lambda: not site.pids())
