"""Fixtures for the SSH tests (package scope: the environment changes end with this folder):
a lab of real sshd sites and an isolated coordinator home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ssh.sshd import SSHLab, ensure_sshd

SITES = 3


@pytest.fixture(scope="package")
def coordinator_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh HOME, config and cache for the coordinator (its own ~/.ssh, known_hosts, wheels)."""
    home = tmp_path_factory.mktemp("coordinator-home")
    user_pip = (
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "pip" / "pip.conf"
    )
    with pytest.MonkeyPatch.context() as mp:
        if user_pip.is_file() and "PIP_CONFIG_FILE" not in os.environ:
            mp.setenv("PIP_CONFIG_FILE", str(user_pip))  # keep this machine's pip mirrors
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("XDG_CACHE_HOME", os.environ.get("FEDFLOW_TEST_CACHE", str(home / ".cache")))
        mp.delenv("FEDFLOW_KNOWN_HOSTS", raising=False)
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield home


@pytest.fixture(scope="package")
def lab(tmp_path_factory: pytest.TempPathFactory, coordinator_home: Path) -> Iterator[SSHLab]:
    """Start SITES sshd sites (network namespaces as root, else loopback) for the session."""
    why = ensure_sshd()
    if why:
        pytest.skip(why)
    lab = SSHLab(tmp_path_factory.mktemp("sshlab"))
    try:
        lab.start(SITES)
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"cannot start sshd: {exc}")
    if lab.mode != "netns":
        print("SSH tests: not root, sites are sshd processes on loopback ports")
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture()
def trusted(lab: SSHLab, coordinator_home: Path) -> Iterator[Path]:
    """Make the lab's host keys known through fedflow's known_hosts file for one test."""
    target = coordinator_home / ".config" / "fedflow" / "known_hosts"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(lab.known_hosts.read_text())
    yield target
    target.unlink(missing_ok=True)
