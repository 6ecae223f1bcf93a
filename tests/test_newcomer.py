"""A newcomer's first hour: the stumbles a fresh user met with the CLI and the Python API."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers import copy_quickstart, fedflow, write_study


def closed_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_remote_site_is_one_line_without_a_fork_server_traceback(
    tmp_path: Path,
) -> None:
    copy_quickstart(tmp_path)
    study = write_study(tmp_path, 'app = "stats"\n', {"berlin": "berlin.csv"})
    with study.open("a") as f:
        f.write(
            f'\n[[clients]]\nname = "far"\ndata = ["vienna.csv"]\n'
            f'hostname = "127.0.0.1"\nport = {closed_port()}\n'
        )
    for _ in range(3):  # the fork server's race showed up every time; check a few
        proc = fedflow("run", str(study), "--out", str(tmp_path / "run"), "--force", "-q")
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        errors = proc.stderr.strip().splitlines()
        assert len(errors) == 1 and "site 'far': cannot connect" in errors[0], proc.stderr
