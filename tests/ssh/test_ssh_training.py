"""Training over SSH sites (issue 13 point 5): the same study and seed give the same bytes run
after run, and the same bytes as on local sites; a site that cannot get torch fails in one line.

The sites of this module are sshd processes on loopback ports logging in as the current user
(root in CI), so that they can run this machine's own Python: a site with ``system_packages =
true`` and ``python`` = the interpreter running the tests gets a venv that sees the torch
2.13.0+cpu already installed there, and fedflow sends and installs no torch wheel (seconds instead
of about a minute per site). ``test_a_fresh_venv_gets_torch_from_the_uploaded_wheels`` runs the
default path once: a venv from the system's python3 with torch repacked, uploaded and installed.
The one-line failure runs on a site of the package's lab (its own user and network namespace,
no internet) whose pip index lacks torch.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fedflow.connectors.siteprep import MARKER
from fedflow.connectors.ssh import SSHConnector
from fedflow.connectors.wheel import dependency_closure, local_platform, repack_wheel, wheelhouse
from fedflow.errors import SiteError
from fedflow.runtime import arun_study
from fedflow.study.load import load_study, study_from_dict
from tests.helpers import ROOT
from tests.ssh.sshd import SSHLab, ensure_sshd

pytestmark = pytest.mark.ssh

EXAMPLE = ROOT / "examples" / "training"
SITE_NAMES = ["hospital_a", "hospital_b"]
MODELS = ("model-last.safetensors", "model-best.safetensors")


@pytest.fixture(scope="module")
def own_lab(tmp_path_factory: pytest.TempPathFactory, coordinator_home: Path) -> Iterator[SSHLab]:
    """Two sshd sites on loopback logging in as the current user, their keys trusted."""
    why = ensure_sshd()
    if why:
        pytest.skip(why)
    lab = SSHLab(tmp_path_factory.mktemp("trainlab"))
    try:
        lab.start(len(SITE_NAMES), mode="loopback")
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot start sshd: {exc}")
    known = coordinator_home / ".config" / "fedflow" / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    kept = known.read_text() if known.exists() else None
    known.write_text((kept or "") + lab.known_hosts.read_text())
    try:
        yield lab
    finally:
        if kept is None:
            known.unlink(missing_ok=True)
        else:
            known.write_text(kept)
        lab.stop()


def write_study(folder: Path, sites: list[dict[str, Any]]) -> Path:
    """The digits MLP of examples/training on two of its sites, 2 rounds, with ``sites[i]``
    merged into client i."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "plan.py", folder / "plan.py")
    lines = [
        'name = "digits-mlp-ssh"',
        'app = "train"',
        "seed = 42",
        "[params]",
        'plan = "plan.py"',
        'target = "digit"',
        "rounds = 2",
        "local_epochs = 1",
        "batch_size = 32",
        "lr = 0.05",
        "validation = 0.2",
        'metric = "accuracy"',
    ]
    for name, extra in zip(SITE_NAMES, sites, strict=True):
        shutil.copy(EXAMPLE / f"{name}.csv", folder / f"{name}.csv")
        client = {"name": name, "data": [f"{name}.csv"], **extra}
        lines.append("[[clients]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in client.items()]
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_site(lab: SSHLab, index: int, **extra: Any) -> dict[str, Any]:
    site = lab.sites[index]
    return {
        "hostname": site.host,
        "port": site.port,
        "username": site.user,
        "sshkey": str(lab.client_key),
        **extra,
    }


def system_site(lab: SSHLab, index: int) -> dict[str, Any]:
    """A site whose venv sees this machine's Python and its packages (torch included)."""
    workdir = str(lab.root / f"work-system-{index}")
    return ssh_site(lab, index, python=sys.executable, system_packages=True, workdir=workdir)


def run(study: Path, out: Path) -> dict[str, bytes]:
    done = asyncio.run(arun_study(load_study(study), out=out, command=["test"]))
    assert done.status == "completed"
    return {name: (out / name).read_bytes() for name in MODELS}


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The models of the study on local sites (the reference the SSH runs must equal)."""
    folder = tmp_path_factory.mktemp("train-local")
    return run(write_study(folder, [{}, {}]), folder / "run")


@pytest.mark.slow
def test_training_over_ssh_gives_the_same_bytes_run_after_run_and_as_local_sites(
    own_lab: SSHLab, local_models: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second run tells the sites a plan path that exists nowhere (as for a site on another
    machine): they run the plan source sent, written to their run folder, to the same bytes."""
    from fedflow.runtime.driver import Driver

    study = write_study(tmp_path / "ssh", [system_site(own_lab, i) for i in range(2)])
    first = run(study, tmp_path / "run-1")
    real = Driver.prepare
    elsewhere = str(tmp_path / "not-at-the-sites" / "plan.py")

    def plan_elsewhere(self: Driver, infos: Any) -> Any:
        prepare = real(self, infos)
        return msgspec.structs.replace(prepare, params={**prepare.params, "plan": elsewhere})

    with monkeypatch.context() as patch:
        patch.setattr(Driver, "prepare", plan_elsewhere)
        second = run(study, tmp_path / "run-2")
    assert not Path(elsewhere).exists()
    assert first == second == local_models
    log = (tmp_path / "run-1" / "logs" / "hospital_a.log").read_text()
    assert "torch 2.13.0+cpu in the site's venv" in log
    assert "node agent started" in log
    workdir = own_lab.root / "work-system-0"
    marker = json.loads((workdir / "venv" / MARKER).read_text())
    assert marker["extras"] == ["torch"] and marker["system"] is True
    # the site's Python had torch at the coordinator's version: no torch wheel was sent
    assert not list((workdir / "wheels").glob("torch-*.whl"))
    # the second run reused the prepared venv
    assert "creating the venv" not in (tmp_path / "run-2" / "logs" / "hospital_a.log").read_text()


@pytest.mark.slow
def test_a_fresh_venv_gets_torch_from_the_uploaded_wheels(
    own_lab: SSHLab, local_models: dict[str, bytes], tmp_path: Path
) -> None:
    """hospital_a's venv comes from the system's python3, which has no torch: torch 2.13.0+cpu
    is repacked from the coordinator's installation, uploaded and installed offline."""
    fresh = ssh_site(own_lab, 0, python="/usr/bin/python3", workdir=str(own_lab.root / "fresh"))
    if not Path("/usr/bin/python3").is_file():
        pytest.skip("no /usr/bin/python3 for a fresh site venv")
    has_torch = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True)
    assert has_torch.returncode != 0, "the system's python3 must lack torch for this test"
    study = write_study(tmp_path / "ssh", [fresh, system_site(own_lab, 1)])
    assert run(study, tmp_path / "run") == local_models
    log = (tmp_path / "run" / "logs" / "hospital_a.log").read_text()
    assert "creating the venv" in log and "(offline wheels; with torch)" in log
    assert "torch 2.13.0+cpu in the site's venv" in log
    workdir = own_lab.root / "fresh"
    assert [p.name for p in (workdir / "wheels").glob("torch-*.whl")] == [
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    ]
    site_torch = subprocess.run(
        [str(workdir / "venv" / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert site_torch.stdout.strip() == "2.13.0+cpu"


@pytest.mark.slow
def test_a_site_whose_index_lacks_torch_fails_in_one_line_naming_the_host(
    lab: SSHLab, trusted: Path, tmp_path: Path
) -> None:
    """A site of the package's lab (no internet) with install = "index": its own pip index has
    every wheel fedflow[torch] needs but torch; the run stops at that site in one line."""
    if lab.mode != "netns":
        pytest.skip("the site's own pip configuration needs a site user of its own (root)")
    site = lab.sites[1]
    index = site.home / "site-index-no-torch"
    index.mkdir()
    for wheel in wheelhouse(local_platform(), full=True).glob("*.whl"):
        if not wheel.name.startswith("fedflow_studies-"):
            shutil.copy(wheel, index)
    base = {d.metadata["Name"] for d in dependency_closure()}
    for dist in dependency_closure(["torch"]):
        if dist.metadata["Name"] not in base and dist.metadata["Name"] != "torch":
            assert repack_wheel(dist, index) is not None
    conf = site.home / ".config" / "pip"
    conf.mkdir(parents=True)
    (conf / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {index}\n")
    subprocess.run(
        ["chown", "-R", f"{site.user}:{site.user}", str(index), str(site.home / ".config")],
        check=True,
    )
    study = study_from_dict(
        {
            "name": "ssh-train-tests",
            "app": "train",
            "params": {"plan": str(EXAMPLE / "plan.py"), "target": "digit"},
            "clients": [
                {**site.client_entry(lab.client_key), "workdir": "no-torch", "install": "index"}
            ],
        }
    )

    async def go() -> None:
        conn = SSHConnector(study.clients[0], study, log_path=tmp_path / "site.log")
        try:
            await conn.start()
        finally:
            await conn.close()

    try:
        with pytest.raises(SiteError) as err:
            asyncio.run(go())
    finally:
        shutil.rmtree(index)
        shutil.rmtree(site.home / ".config")
        shutil.rmtree(site.home / "no-torch", ignore_errors=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"site '{site.name}': cannot install torch==2.13.0+cpu into the venv")
    assert f"at {site.host}" in message and "from the site's package index" in message
    assert message.partition("package index: ")[2].startswith("ERROR: ")  # pip's own reason


@pytest.fixture()
def own_trusted(own_lab: SSHLab, coordinator_home: Path) -> SSHLab:
    """own_lab with its host keys known again (the package's ``trusted`` fixture of an earlier
    test removes the known_hosts file when it ends)."""
    known = coordinator_home / ".config" / "fedflow" / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    text = known.read_text() if known.exists() else ""
    keys = own_lab.known_hosts.read_text()
    if keys not in text:
        known.write_text(text + keys)
    return own_lab


def scaffold(path: Path, extra: str = "") -> Path:
    """The study at ``path`` with SCAFFOLD, 3 rounds (and ``extra`` parameter lines)."""
    text = path.read_text().replace("rounds = 2", f'rounds = 3\nstrategy = "scaffold"\n{extra}')
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def local_scaffold(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The models of the SCAFFOLD study on local sites, uninterrupted."""
    folder = tmp_path_factory.mktemp("scaffold-local")
    return run(scaffold(write_study(folder, [{}, {}])), folder / "run")


@pytest.mark.slow
def test_a_scaffold_run_over_ssh_interrupted_resumes_to_the_same_bytes(
    own_trusted: SSHLab,
    local_scaffold: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after round 2's checkpoint of a 3-round SCAFFOLD run over two SSH sites: each site
    keeps its control c_i in its run folder (``runs/<run>/out/state``, named from the run, not
    from the connection), and ``fedflow resume`` reads it there and ends with the bytes of the
    same run on local sites left uninterrupted."""
    own_lab = own_trusted
    import os
    import signal

    from fedflow.runtime.run import RunInterrupted
    from fedflow.training import checkpoint

    whole = local_scaffold
    study = scaffold(write_study(tmp_path / "ssh", [system_site(own_lab, i) for i in range(2)]))
    out = tmp_path / "cut"
    real = checkpoint.Checkpointer.__call__

    def ctrl_c_after_2(self: Any, driver: Any, round_: int) -> None:
        real(self, driver, round_)
        if round_ == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpointer, "__call__", ctrl_c_after_2)
        with pytest.raises(RunInterrupted):
            asyncio.run(arun_study(load_study(study), out=out, command=["test"]))
    assert checkpoint.load_checkpoint(out)[0] == 2
    for i in range(2):  # the sites' state outlived their connections; nothing else is left
        runs = list((own_lab.root / f"work-system-{i}" / "runs").glob("run-*"))
        states = [r for r in runs if any((r / "out" / "state").glob("*.safetensors"))]
        assert len(states) == 1, runs
        assert not list(states[0].glob("conn-*"))
        assert len(list((states[0] / "out" / "plan").glob("*.py"))) == 1  # the plan sent
    done = asyncio.run(
        arun_study(load_study(out / "study.toml"), out=out, resume=out, command=["test"])
    )
    assert done.status == "completed"
    assert {name: (out / name).read_bytes() for name in MODELS} == whole


@pytest.mark.slow
def test_a_killed_ssh_agent_is_restarted_and_reads_its_scaffold_state(
    own_trusted: SSHLab,
    local_scaffold: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``retries = 1``: hospital_a's agent is SIGKILLed after round 1; round 2's task fails, the
    agent is started again over a new connection, in the same run folder, and starts round 2
    from its c_i of round 1 read from ``out/state`` — the models are those of the run on local
    sites left alone."""
    own_lab = own_trusted
    import os
    import signal
    import time

    from fedflow.training import checkpoint

    workdir = own_lab.root / "work-system-0"
    study = scaffold(
        write_study(tmp_path / "ssh", [system_site(own_lab, i) for i in range(2)]), "retries = 1"
    )
    real = checkpoint.Checkpointer.__call__
    killed: list[int] = []

    def agent_pids() -> list[int]:  # this test's hospital_a agent: it works under workdir/runs
        found = []
        for pid in own_lab.sites[0].pids("fedflow.node --site hospital_a"):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd.startswith(str(workdir / "runs") + "/"):
                found.append(pid)
        return found

    def kill_after_1(self: Any, driver: Any, round_: int) -> None:
        real(self, driver, round_)
        if round_ == 1:
            pids = agent_pids()
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            deadline = time.monotonic() + 10
            while pids[0] in agent_pids() and time.monotonic() < deadline:
                time.sleep(0.05)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpointer, "__call__", kill_after_1)
        models = run(study, tmp_path / "run")
    assert killed
    events = json.loads((tmp_path / "run" / "metrics.json").read_text())["round_events"]
    assert any(e.get("site") == "hospital_a" and e.get("event") == "restarted" for e in events), (
        events
    )
    assert models == local_scaffold
