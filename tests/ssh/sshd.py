"""Real OpenSSH servers for the SSH tests, started and torn down by the test suite itself.

As root, each site gets its own network namespace (``ffns<N>``, a veth pair, address
``10.231.<N>.2``), its own ``sshd -D -e`` with its own host key, and its own Unix user
(``fft-site<N>``, home mode 700) whose ``authorized_keys`` holds the lab's client key. Without
root the lab falls back to ``sshd`` processes on loopback ports, logging in as the current user.

Everything made here is undone by ``SSHLab.stop()``: servers killed, the users' leftover
processes killed by pid, users, namespaces and veths deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from tests.apt import apt_install
from tests.helpers import QUICKSTART, SITES

SSHD = "/usr/sbin/sshd"
NET = "10.231"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def ensure_sshd() -> str | None:
    """Return None when sshd is available (installing it as root if needed), else why not."""
    return apt_install("openssh-server", lambda: Path(SSHD).exists())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {host}:{port} within {timeout} s")


def _descendants(pid: int) -> list[int]:
    """Return the pids of every descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Site:
    """One SSH site of the lab."""

    index: int
    user: str
    host: str
    port: int
    home: Path
    host_key: asyncssh.SSHKey
    config: Path
    log: Path
    netns: str | None = None
    veth: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"site{self.index}"

    def link(self, up: bool) -> None:
        """Take the site's network link down or up (netns mode only)."""
        assert self.veth, "link control needs network namespaces (root)"
        _run("ip", "link", "set", self.veth, "up" if up else "down")

    def pids(self, pattern: str = "fedflow.node") -> list[int]:
        """Return pids of this site's user whose command line contains ``pattern``."""
        uid = pwd.getpwnam(self.user).pw_uid
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pattern in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        return found

    def client_entry(self, key: Path) -> dict[str, object]:
        """Return the ``[[clients]]`` keys that reach this site."""
        return {
            "name": self.name,
            "hostname": self.host,
            "port": self.port,
            "username": self.user,
            "sshkey": str(key),
        }


@dataclass
class SSHLab:
    """A set of sshd sites plus a client key and a known_hosts file listing their host keys."""

    root: Path
    mode: str = ""
    sites: list[Site] = field(default_factory=list)
    client_key: Path = Path()
    known_hosts: Path = Path()
    _users: list[str] = field(default_factory=list)
    _netns: list[str] = field(default_factory=list)

    def start(self, count: int, mode: str | None = None) -> SSHLab:
        """Start ``count`` sites: ``mode`` "netns" (root: a user and a network namespace each)
        or "loopback" (sshd on loopback ports, logging in as the current user, root included);
        default netns when root."""
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True) if os.geteuid() == 0 else None
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = self.root / "client_key"
        key.write_private_key(self.client_key)
        self.client_key.chmod(0o600)
        key.write_public_key(self.root / "client_key.pub")
        self.mode = mode or ("netns" if os.geteuid() == 0 and shutil.which("ip") else "loopback")
        try:
            for index in range(1, count + 1):
                self.sites.append(self._start_site(index, key))
        except Exception:
            self.stop()
            raise
        self.known_hosts = self.root / "known_hosts"
        self.known_hosts.write_text(
            "".join(
                f"{s.host if s.port == 22 else f'[{s.host}]:{s.port}'} "
                f"{s.host_key.export_public_key('openssh').decode().strip()}\n"
                for s in self.sites
            )
        )
        return self

    def _start_site(self, index: int, client_key: asyncssh.SSHKey) -> Site:
        folder = self.root / f"site{index}"
        folder.mkdir(exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key_path = folder / "host_key"
        host_key.write_private_key(host_key_path)
        host_key_path.chmod(0o600)
        log = folder / "sshd.log"
        pub = client_key.export_public_key("openssh").decode()
        if self.mode == "netns":
            user = f"fft-site{index}"
            self._make_user(user)
            home = Path(pwd.getpwnam(user).pw_dir)
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            (ssh_dir / "authorized_keys").write_text(pub)
            (ssh_dir / "authorized_keys").chmod(0o600)
            _run("chown", "-R", f"{user}:{user}", str(home))
            home.chmod(0o700)
            netns, veth = f"ffns{index}", f"ffv{index}h"
            host, port = f"{NET}.{index}.2", 22
            self._make_netns(netns, veth, index)
            authorized = ".ssh/authorized_keys"
            extra = f"AllowUsers {user}\nStrictModes yes\n"
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            home = Path.home()
            auth = folder / "authorized_keys"
            auth.write_text(pub)
            auth.chmod(0o600)
            netns = veth = None
            host, port = "127.0.0.1", _free_port()
            authorized = str(auth)
            extra = "StrictModes no\n"
        config = folder / "sshd_config"
        config.write_text(
            f"ListenAddress {host}\nPort {port}\nHostKey {host_key_path}\nAuthorizedKeysFile {authorized}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n"
            f"PermitRootLogin {'prohibit-password' if user == 'root' else 'no'}\nClientAliveInterval 2\nClientAliveCountMax 2\nMaxStartups 100:30:200\n"
            "MaxSessions 100\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n"
            "PermitUserEnvironment PATH\n" + extra
        )
        prefix = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.Popen(
            [*prefix, SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )
        site = Site(index, user, host, port, home, host_key, config, log, netns, veth, proc)
        _wait_port(host, port, proc)
        return site

    def _make_user(self, user: str) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            self._kill_user_processes(user)
            _run("userdel", "-r", user, check=False)
        _run("useradd", "-m", "-s", "/bin/sh", user)
        _run("usermod", "-p", "*", user)
        self._users.append(user)

    def _make_netns(self, netns: str, veth: str, index: int) -> None:
        _run("ip", "netns", "del", netns, check=False)
        _run("ip", "link", "del", veth, check=False)
        _run("ip", "netns", "add", netns)
        self._netns.append(netns)
        peer = f"ffv{index}s"
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", netns)
        _run("ip", "addr", "add", f"{NET}.{index}.1/24", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "-n", netns, "addr", "add", f"{NET}.{index}.2/24", "dev", peer)
        _run("ip", "-n", netns, "link", "set", peer, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")

    def _kill_user_processes(self, user: str) -> None:
        uid = pwd.getpwnam(user).pw_uid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == uid:
                        os.kill(int(entry.name), signal.SIGKILL)

    def stop(self) -> None:
        for site in self.sites:
            if site.proc is not None and site.proc.poll() is None:
                for pid in _descendants(site.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(site.proc.pid, signal.SIGTERM)
                try:
                    site.proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(site.proc.pid, signal.SIGKILL)
                    site.proc.wait(5)
        for user in self._users:
            with contextlib.suppress(KeyError):
                self._kill_user_processes(user)
            time.sleep(0.1)
            _run("userdel", "-r", user, check=False)
        for netns in self._netns:
            _run("ip", "netns", "del", netns, check=False)
        for site in self.sites:
            if site.veth:
                _run("ip", "link", "del", site.veth, check=False)
        self._users.clear()
        self._netns.clear()


def ssh_quickstart(
    lab: SSHLab, folder: Path, *, workdir: str | None = "~/.fedflow/ssh-tests", **extra: Any
) -> Path:
    """Write the quickstart study with its three sites moved to the lab's SSH servers
    (``workdir`` None: the sites' default working folder)."""
    lines = [
        'name = "breast-cancer"',
        'app = "logistic-regression"',
        "seed = 42",
        'outdir = "results"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
        "[params]",
        'target = "malignant"',
        'features = ["radius", "texture", "smoothness", "concavity", "symmetry"]',
    ]
    for name, site in zip(SITES, lab.sites, strict=True):
        shutil.copy(QUICKSTART / f"{name}.csv", folder / f"{name}.csv")
        lines += [
            "[[clients]]",
            f'name = "{name}"',
            f'data = ["{name}.csv"]',
            f'hostname = "{site.host}"',
            f"port = {site.port}",
            f'username = "{site.user}"',
            f'sshkey = "{lab.client_key}"',
        ]
        if workdir is not None:
            lines.append(f'workdir = "{workdir}"')
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
