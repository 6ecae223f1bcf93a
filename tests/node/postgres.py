"""A real PostgreSQL server for the SQL-dataset tests, started and torn down by the suite itself.

Debian's ``postgresql`` package is installed with apt-get when missing (as root); ``initdb`` and
``pg_ctl`` then run as an unprivileged user (``postgres`` when the suite runs as root, else the
current user) into a temporary folder, listening on a free loopback port with trust
authentication. Without the package and without root, ``ensure_postgres`` says why not.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.apt import apt_install


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def ensure_postgres() -> tuple[Path | None, str | None]:
    """Return (the folder of initdb and pg_ctl, None), or (None, why they are not available)."""
    why = apt_install("postgresql", lambda: _bin_dir() is not None)
    return (None, why) if why is not None else (_bin_dir(), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway server: ``dsn`` reaches it; ``load`` creates a table from a DataFrame."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="fedflow-pg-"))
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.user = "postgres" if _has_user("postgres") else "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.data = self.folder / "data"
        self.dsn = f"host=127.0.0.1 port={self.port} user=fedflow dbname=postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=self.folder, timeout=120
        )

    def start(self) -> None:
        done = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "fedflow",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-300:]}")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode:
            log = (self.folder / "log").read_text() if (self.folder / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log[-300:]}")

    def load(self, table: str, frame: Any) -> None:
        """Create ``table`` holding ``frame`` (int, float and text columns)."""
        import psycopg

        kinds = {"i": "bigint", "f": "double precision"}
        columns = ", ".join(
            f'"{c}" {kinds.get(frame[c].dtype.kind, "text")}' for c in frame.columns
        )
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(f'DROP TABLE IF EXISTS "{table}"'.encode())
            cursor.execute(f'CREATE TABLE "{table}" ({columns})'.encode())
            with cursor.copy(f'COPY "{table}" FROM STDIN'.encode()) as copy:
                for row in frame.itertuples(index=False):
                    copy.write_row([v.item() if hasattr(v, "item") else v for v in row])

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
