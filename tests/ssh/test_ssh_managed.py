"""A managed SSH site against real sshd: the operator's forced command runs a defended agent.

One lab site (``site1``) plays a hospital. Its operator has (1) a Python with fedflow for the
site user — the venv the lab's own SSH tests provision at ``~/.fedflow/ssh-tests/venv``, reused
here (the system Python cannot import fedflow as that user: this checkout lives under /root),
(2) a site configuration serving one dataset with a floor of 10 and two allowed apps, and (3) a
forced command on the analyst's key in ``authorized_keys``::

    command="<venv>/bin/python -m fedflow.node --config <cfg>",restrict ssh-ed25519 AAAA…

The study marks the client ``managed = true`` and names the dataset. The original
``authorized_keys`` is restored after the module (the lab is shared by the package's tests).

This module runs after test_ssh.py (its name sorts later), whose first test checks a fresh
site's preparation; the venv it leaves behind is the one reused here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fedflow._version import __version__
from fedflow.connectors.ssh import SSHConnector
from fedflow.errors import ExitCode
from fedflow.node.audit import verify
from fedflow.study.load import study_from_dict
from fedflow.wire import PROTOCOL_VERSION, Failure, Hello, MessageCodec, Ready, Setup, Welcome
from tests.helpers import QUICKSTART, ROOT
from tests.ssh.sshd import Site, SSHLab

pytestmark = pytest.mark.ssh
codec = MessageCodec()

FLOOR = 10
PARAMS = [
    "[params]",
    'target = "malignant"',
    'features = ["radius", "texture", "smoothness", "concavity", "symmetry"]',
]


@dataclass
class Managed:
    """The managed site: the lab site, its configuration and its agent's Python."""

    lab: SSHLab
    site: Site
    config: Path
    python: str

    @property
    def audit(self) -> Path:
        return self.site.home / ".local" / "state" / "fedflow" / "audit.jsonl"

    def client(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "berlin",
            "hostname": self.site.host,
            "port": self.site.port,
            "username": self.site.user,
            "sshkey": str(self.lab.client_key),
            "managed": True,
            "dataset": "cohort",
            **extra,
        }


def _authorized_keys(site: Site) -> Path:
    """The site's authorized_keys file, as its sshd_config names it."""
    for line in site.config.read_text().splitlines():
        if line.startswith("AuthorizedKeysFile "):
            named = Path(line.split(None, 1)[1])
            return named if named.is_absolute() else site.home / named
    return site.home / ".ssh" / "authorized_keys"


def _provision_venv(lab: SSHLab, site: Site, coordinator_home: Path) -> str:
    """Return the site's prepared venv Python (prepared now by an owned connector if absent)."""
    kh = coordinator_home / ".config" / "fedflow" / "known_hosts"
    kh.parent.mkdir(parents=True, exist_ok=True)
    kept = kh.read_text() if kh.exists() else None
    kh.write_text(lab.known_hosts.read_text())
    client = {
        "name": "prepare",
        "hostname": site.host,
        "port": site.port,
        "username": site.user,
        "sshkey": str(lab.client_key),
        "workdir": "~/.fedflow/ssh-tests",
    }
    study = study_from_dict({"name": "ssh-tests", "app": "mean", "clients": [client]})

    async def go() -> str:
        conn = SSHConnector(study.clients[0], study, log_path=lab.root / "managed-prepare.log")
        try:
            await conn.start()
            assert conn.info is not None
            return conn.info.venv_python
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    finally:
        if kept is None:
            kh.unlink(missing_ok=True)
        else:
            kh.write_text(kept)


@pytest.fixture(scope="module")
def managed(lab: SSHLab, coordinator_home: Path) -> Iterator[Managed]:
    site = lab.sites[0]
    python = _provision_venv(lab, site, coordinator_home)
    folder = site.home / "fedflow-site"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    shutil.copy(QUICKSTART / "berlin.csv", folder / "berlin.csv")
    config = folder / "site-policy.toml"
    config.write_text(
        f"min_count = {FLOOR}\n"
        'allowed_apps = ["logistic-regression", "stats"]\n'
        '[datasets.cohort]\npath = "berlin.csv"\n'
    )
    shutil.rmtree(site.home / ".local" / "state" / "fedflow", ignore_errors=True)
    if lab.mode == "netns":
        subprocess.run(["chown", "-R", f"{site.user}:{site.user}", str(folder)], check=True)
    keys = _authorized_keys(site)
    original = keys.read_text()
    pub = (lab.root / "client_key.pub").read_text().strip()
    forced = f"{python} -m fedflow.node --config {config}"
    keys.write_text(f'command="{forced}",restrict {pub}\n')
    try:
        yield Managed(lab, site, config, python)
    finally:
        keys.write_text(original)
        shutil.rmtree(folder, ignore_errors=True)


def _study(folder: Path, berlin: dict[str, Any], *, min_count: int = FLOOR, app: str = "") -> Path:
    """The quickstart study with berlin as given (vienna and zurich local) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        'name = "breast-cancer"',
        f'app = "{app or "logistic-regression"}"',
        "seed = 42",
        f"min_count = {min_count}",
        *PARAMS,
    ]
    for name in ("vienna", "zurich"):
        shutil.copy(QUICKSTART / f"{name}.csv", folder / f"{name}.csv")
    for client in (berlin, {"name": "vienna", "data": ["vienna.csv"]}):
        lines.append("[[clients]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in client.items()]
    lines += ["[[clients]]", 'name = "zurich"', 'data = ["zurich.csv"]']
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(study: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (quiet) from the checkout, so ``tests.plugins`` imports."""
    return subprocess.run(
        [sys.executable, "-m", "fedflow", "run", str(study), "--out", str(out), "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _listing(folder: Path) -> dict[str, float]:
    """Every path below ``folder`` with its modification time (what a run could have written)."""
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")} if folder.exists() else {}


# -- (a) a managed site runs a study --------------------------------------------------------------


def test_managed_site_gives_the_same_result_as_the_data_run_locally(
    managed: Managed, trusted: Path, tmp_path: Path
) -> None:
    local = _study(tmp_path / "local", {"name": "berlin", "data": ["berlin.csv"]})
    shutil.copy(QUICKSTART / "berlin.csv", tmp_path / "local" / "berlin.csv")
    remote = _study(tmp_path / "managed", managed.client())
    workdir = managed.site.home / ".fedflow"
    before = _listing(workdir)
    here = _run(local, tmp_path / "run-local")
    there = _run(remote, tmp_path / "run-managed")
    assert here.returncode == 0, here.stderr
    assert there.returncode == 0, there.stderr
    result = json.loads((tmp_path / "run-managed" / "result.json").read_text())
    assert result == json.loads((tmp_path / "run-local" / "result.json").read_text())
    manifest = (tmp_path / "run-managed" / "manifest.json").read_text()
    assert json.loads(manifest)["sites"]["berlin"]["rows"] == 280
    assert str(managed.site.home) not in manifest  # the coordinator never learns the site's paths
    log = (tmp_path / "run-managed" / "logs" / "berlin.log").read_text()
    assert "defended site" in log and f"min_count at least {FLOOR}" in log
    # nothing was provisioned or staged for the managed site: its study folders are untouched
    assert _listing(workdir) == before
    entries = [json.loads(x) for x in managed.audit.read_text().splitlines()]
    ours = [e for e in entries if e.get("study") == "breast-cancer" and e["outcome"] == "released"]
    assert ours and all(e["mode"] == "defended" and e["dataset"] == "cohort" for e in ours)
    assert verify(managed.audit).ok


# -- (b) the analyst's key reaches the agent and nothing else --------------------------------------


def test_the_analysts_key_gets_no_shell_no_command_no_sftp_no_forwarding(
    managed: Managed,
) -> None:
    site = managed.site

    async def probe() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with asyncssh.connect(
            site.host,
            port=site.port,
            username=site.user,
            client_keys=[str(managed.lab.client_key)],
            known_hosts=str(managed.lab.known_hosts),
            agent_path=None,
        ) as conn:
            for command in ("id", "cat /etc/passwd", "sh -c 'echo pwned > /tmp/pwned'"):
                seen[command] = await asyncio.wait_for(_session(conn, command), 60)
            seen["shell"] = await asyncio.wait_for(
                _session(conn, None, b"id\necho $HOME\nexit\n"), 60
            )
            try:
                async with asyncio.timeout(30), conn.start_sftp_client() as sftp:
                    seen["sftp"] = await sftp.listdir(".")
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                seen["sftp"] = exc
            try:
                await conn.open_connection("127.0.0.1", 22)
                seen["forward"] = "opened"
            except asyncssh.ChannelOpenError as exc:
                seen["forward"] = exc
        return seen

    seen = asyncio.run(probe())
    for command in ("id", "cat /etc/passwd", "sh -c 'echo pwned > /tmp/pwned'"):
        out, err, status = seen[command]
        assert out == b"", (command, out)  # not a shell's output: nothing at all
        assert "defended site" in err  # the agent answered, and only the agent
        assert "coordinator closed the channel" in err and status == 0
    assert not Path("/tmp/pwned").exists() or Path("/tmp/pwned").stat().st_uid != _uid(site)
    out, err, status = seen["shell"]
    assert b"uid=" not in out and str(site.home).encode() not in out
    assert "defended site" in err  # the shell request ran the agent too
    assert status != 0  # "id\n…" is not a frame: the agent stopped on it
    assert isinstance(seen["sftp"], BaseException), f"SFTP worked: {seen['sftp']}"
    assert isinstance(seen["forward"], asyncssh.ChannelOpenError)


async def _session(
    conn: asyncssh.SSHClientConnection, command: str | None, data: bytes = b""
) -> tuple[bytes, str, int | None]:
    """Open a session (``command`` None: a shell), send ``data`` and end of input; return what
    came back on stdout, stderr and the exit status."""
    proc = await conn.create_process(command, encoding=None)
    if data:
        proc.stdin.write(data)
    proc.stdin.write_eof()
    out = await proc.stdout.read()
    err = await proc.stderr.read()
    await proc.wait_closed()
    return out, err.decode("utf-8", "replace"), proc.exit_status


def _uid(site: Site) -> int:
    import pwd

    return pwd.getpwnam(site.user).pw_uid


# -- (c) what the site refuses ---------------------------------------------------------------------


def test_a_path_is_refused_without_being_opened(
    managed: Managed, trusted: Path, tmp_path: Path
) -> None:
    """``data = [...]`` is a study error for managed sites, so a hostile coordinator hand-builds
    the Setup: the site refuses it and logs the attempt."""
    secret = managed.config.parent / "berlin.csv"
    study = study_from_dict(
        {"name": "probe", "app": "stats", "clients": [managed.client()]},
    )

    async def go() -> Any:
        conn = SSHConnector(study.clients[0], study, log_path=tmp_path / "site.log")
        try:
            await conn.start()
            await conn.send(
                codec.encode(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="berlin"))
            )
            assert isinstance(codec.decode(await conn.receive(30)), Welcome)
            await conn.send(
                codec.encode(Setup(data=[str(secret)], min_count=FLOOR, study="probe-path"))
            )
            return codec.decode(await conn.receive(30))
        finally:
            await conn.close()

    reply = asyncio.run(go())
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "serves only the datasets its configuration names" in reply.message
    assert not isinstance(reply, Ready)
    entries = [json.loads(x) for x in managed.audit.read_text().splitlines()]
    refused = [e for e in entries if e.get("files") == [str(secret)]]
    assert refused and refused[-1]["outcome"] == "refused"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("dataset", "no dataset 'other' here (datasets offered: cohort)"),
        ("app", "this site does not allow app 'kmeans' (allowed: logistic-regression, stats)"),
        ("code", "custom app 'tests.plugins:SeedEcho' (sha256:"),  # its source's hash
        ("min_count", f"the study asks min_count = 5, below this site's floor of {FLOOR}"),
    ],
)
def test_the_site_refuses_in_one_line_naming_itself_and_the_reason(
    managed: Managed, trusted: Path, tmp_path: Path, case: str, reason: str
) -> None:
    berlin = managed.client(**({"dataset": "other"} if case == "dataset" else {}))
    app = {"app": "kmeans", "code": "tests.plugins:SeedEcho"}.get(case, "")
    study = _study(
        tmp_path / "study", berlin, min_count=5 if case == "min_count" else FLOOR, app=app
    )
    if app:  # these apps take other parameters than logistic regression's
        text = study.read_text().split("[params]")[0]
        rest = study.read_text().split("[[clients]]", 1)[1]
        extra = '[params]\ncolumns = ["radius", "texture"]\nk = 2\n' if case == "app" else ""
        study.write_text(text + extra + "[[clients]]" + rest)
    before = len(managed.audit.read_text().splitlines()) if managed.audit.exists() else 0
    done = _run(study, tmp_path / "run")
    assert done.returncode == ExitCode.SITE, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fedflow: error: site 'berlin': refused by the site's policy: ")
    assert reason in lines[0], lines[0]
    if case == "code":
        assert (
            "is not approved here (the site operator approves code with: fedflow site" in lines[0]
        )
    new = [json.loads(x) for x in managed.audit.read_text().splitlines()[before:]]
    refused = [e for e in new if e["outcome"] == "refused"]
    assert len(refused) == 1 and refused[0]["mode"] == "defended"
    assert reason in refused[0]["reason"]
    assert verify(managed.audit).ok
