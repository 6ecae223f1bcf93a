"""Commands and verified file transfers at one remote site, over one asyncssh connection.

``Remote`` wraps a connection for the code that prepares a site (``siteprep``) and for the SSH
connector: every command runs under umask 077 (whatever fedflow writes on a site is readable only
by that user), failures become SiteError naming the site and the step, and every file copied either
way is verified by SHA-256 (with ``sha256sum``, or Python where coreutils lack it); an interrupted
upload is resumed. The checksum command and its parsing are pure functions, tested without a site.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, cast

import asyncssh

from fedflow.errors import SiteError

__all__ = ["CHUNK", "Progress", "Remote", "file_sha256", "parse_sha256_lines", "sha256_script"]

CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]
"""Transfer progress callback: (file name, bytes done, bytes total)."""

_PY_SHA256 = (
    "import hashlib, os, sys\n"
    "for p in sys.argv[1:]:\n"
    " if os.path.isfile(p):\n"
    "  h = hashlib.sha256()\n"
    "  with open(p, 'rb') as f:\n"
    "   for b in iter(lambda: f.read(1 << 20), b''): h.update(b)\n"
    "  print(h.hexdigest() + '  ' + p)"
)
"""Fallback for sites without coreutils' sha256sum; prints lines as sha256sum does."""


def sha256_script(paths: Sequence[str]) -> str:
    """Return a shell command printing ``<sha256>  <path>`` for each existing file of ``paths``."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        f"if command -v sha256sum >/dev/null 2>&1; then sha256sum -- {quoted} 2>/dev/null; "
        f"else python3 -c {shlex.quote(_PY_SHA256)} {quoted}; fi"
    )


def parse_sha256_lines(text: str) -> dict[str, str]:
    """Return {path: sha256} from ``sha256sum``-style output (lines without a path are skipped)."""
    found = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if name:
            found[name] = digest
    return found


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a local file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Remote:
    """Commands and verified file transfers over one asyncssh connection, for one site."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, site: str, log: IO[str] | None = None
    ) -> None:
        self.conn = conn
        self.site = site
        self.log = log
        self._sftp: asyncssh.SFTPClient | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    def note(self, text: str) -> None:
        """Append a line to the site's local log."""
        if self.log is not None:
            self.log.write(f"[fedflow] {text}\n")
            self.log.flush()

    async def run(
        self, script: str, *, check: bool = True, what: str = "command", stdin: str | None = None
    ) -> asyncssh.SSHCompletedProcess:
        """Run ``script`` with the site user's shell under umask 077; return the completed process.

        Raises SiteError naming ``what`` when it fails (exit status != 0 and ``check``).
        """
        try:
            done = await self.conn.run(f"umask 077; {script}", check=False, input=stdin)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"connection lost during {what}: {exc}", site=self.site) from exc
        out = str(done.stdout or "")
        err = str(done.stderr or "")
        if (
            self.log is not None
            and (out.strip() or err.strip())
            and what not in ("probe", "checksum")
        ):
            self.log.write(f"[fedflow] {what}:\n{out}{err}")
            self.log.flush()
        if check and done.exit_status != 0:
            lines = [ln for ln in (err or out).strip().splitlines() if ln.strip()]
            tail = lines[-1] if lines else f"exit status {done.exit_status}"
            raise SiteError(f"{what} failed on the site: {tail}", site=self.site)
        return done

    async def sftp(self) -> asyncssh.SFTPClient:
        """Return the connection's SFTP client (opened on first use)."""
        if self._sftp is None:
            try:
                self._sftp = await self.conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                raise SiteError(f"cannot open an SFTP session: {exc}", site=self.site) from exc
        return self._sftp

    async def remote_sha256(self, paths: Sequence[str]) -> dict[str, str]:
        """Return {path: sha256} for the existing files among ``paths`` at the site."""
        if not paths:
            return {}
        done = await self.run(sha256_script(paths), check=False, what="checksum")
        return parse_sha256_lines(str(done.stdout or ""))

    async def upload(
        self,
        local: Path,
        remote: str,
        *,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Copy ``local`` to ``remote`` unless an identical file is there; return True if copied.

        An interrupted earlier copy (``remote.part``) is resumed; the result is verified by
        SHA-256 and renamed into place. Raises SiteError on failure or checksum mismatch.
        """
        digest = sha256 or file_sha256(local)
        size = local.stat().st_size
        existing = await self.remote_sha256([remote])
        if existing.get(remote) == digest:
            if progress:
                progress(local.name, size, size)
            return False
        sftp = await self.sftp()
        partial = f"{remote}.part"
        try:
            await sftp.makedirs(str(PurePosixPath(remote).parent), exist_ok=True)
            offset = 0
            if await sftp.exists(partial):
                offset = (await sftp.stat(partial)).size or 0
                if offset > size:
                    offset = 0
            if offset:
                self.note(f"resuming upload of {local.name} at byte {offset}")
            async with sftp.open(
                partial, "ab" if offset else "wb", attrs=asyncssh.SFTPAttrs(permissions=0o600)
            ) as dst:
                with local.open("rb") as src:
                    src.seek(offset)
                    done = offset
                    while chunk := src.read(CHUNK):
                        await dst.write(chunk)
                        done += len(chunk)
                        self.bytes_up += len(chunk)
                        if progress:
                            progress(local.name, done, size)
            check = await self.remote_sha256([partial])
            if check.get(partial) != digest:
                await sftp.remove(partial)
                raise SiteError(
                    f"checksum mismatch after uploading {local.name} (the partial copy was removed; run again)",
                    site=self.site,
                )
            await sftp.posix_rename(partial, remote)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"uploading {local.name} failed: {exc}", site=self.site) from exc
        return True

    async def download(self, remote: str, local: Path, *, progress: Progress | None = None) -> None:
        """Copy ``remote`` at the site to ``local`` and verify its SHA-256; raise SiteError."""
        sftp = await self.sftp()
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".part")
        try:
            size = (await sftp.stat(remote)).size or 0
            async with sftp.open(remote, "rb", encoding=None) as src:
                with partial.open("wb") as dst:
                    done = 0
                    while chunk := cast(bytes, await src.read(CHUNK)):
                        dst.write(chunk)
                        done += len(chunk)
                        self.bytes_down += len(chunk)
                        if progress:
                            progress(local.name, done, size)
        except (asyncssh.Error, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise SiteError(f"fetching {remote} failed: {exc}", site=self.site) from exc
        expected = (await self.remote_sha256([remote])).get(remote)
        if expected and expected != file_sha256(partial):
            partial.unlink(missing_ok=True)
            raise SiteError(f"checksum mismatch after fetching {remote}", site=self.site)
        partial.replace(local)

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
