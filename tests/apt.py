"""Debian packages the test suite needs (an SSH server, PostgreSQL, Chromium), installed with
apt-get by the suite itself when missing and running as root — never by hand."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

__all__ = ["apt_install"]


def apt_install(package: str, installed: Callable[[], bool]) -> str | None:
    """Install ``package`` unless ``installed()`` already holds; return None when it holds
    afterwards, else why not (not root, or apt-get's last error line). apt-get install is tried
    first with the lists at hand, then again after apt-get update; it waits up to 5 minutes for
    another apt-get of the suite holding the lock."""
    if installed():
        return None
    if os.geteuid() != 0:
        return f"{package} not installed and not root (cannot apt-get install {package})"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = None
    for attempt in ("install", "update"):
        if attempt == "update":
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", package],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode == 0 and installed():
            return None
    last = done.stderr.strip().splitlines()[-1:] if done else []
    return f"apt-get install {package} failed: {last}"
