"""The connector contract: how the coordinator reaches one site's node agent.

A connector gives the coordinator one framed, bidirectional byte stream to a node agent, plus
file staging. The runtime only ever calls these methods; tests inject an in-memory connector
instead of monkeypatching (as httpx tests inject a transport).

    await c.start()                      launch or reach the agent; stderr goes to c.log_path
    paths = await c.stage(files)         make data files available at the site; return their paths there
    await c.send(payload)                one message payload (the connector adds the frame header)
    payload = await c.receive(timeout)   one message payload; SiteTimeout / SiteError on failure
    await c.put(local, remote) / await c.get(remote, local)
    await c.collect(names, local_dir)    bring back files the agent wrote to c.output_dir
    await c.close()                      stop the agent, release everything; safe to call twice
"""

from __future__ import annotations

import asyncio
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from fedflow.errors import SiteError, SiteTimeout
from fedflow.wire.framing import DEFAULT_MAX_FRAME, HEADER_SIZE, frame_header, parse_header

__all__ = ["Connector", "StreamConnector", "read_tail"]


class _Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


def read_tail(path: Path | None, lines: int = 5) -> str:
    """Return the last ``lines`` non-empty lines of a log file ('' if there is none)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 8192))
        text = fh.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


class Connector(ABC):
    """Base of connectors. ``site`` names the site in every error a connector raises."""

    kind: str = "abstract"
    start_timeout: float = 120.0
    """Seconds ``start()`` may take (more for connectors that prepare a remote site)."""

    def __init__(
        self,
        site: str,
        *,
        log_path: Path | None = None,
        output_dir: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.site = site
        self.log_path = log_path
        self.output_dir = output_dir
        """Folder at the site where the agent writes the app's per-site outputs (None: none)."""
        self.max_frame = max_frame
        self.bytes_sent = 0
        self.bytes_received = 0

    @abstractmethod
    async def start(self) -> None:
        """Start or reach the node agent. Raise SiteError naming the site when that fails."""

    async def stage(self, files: Sequence[str]) -> list[str]:
        """Return the paths under which the agent will find ``files`` (default: unchanged)."""
        return list(files)

    @abstractmethod
    async def send(self, payload: bytes) -> None:
        """Send one message payload to the agent."""

    @abstractmethod
    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message payload; raise SiteTimeout or SiteError."""

    async def put(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` at the site (default: a local copy)."""
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)

    async def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` at the site to a local file (default: a local copy)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)

    async def collect(self, names: Sequence[str], local_dir: Path) -> list[Path]:
        """Fetch the agent's output files ``names`` from ``output_dir`` into ``local_dir``."""
        if not self.output_dir or not names:
            return []
        fetched = []
        for name in names:
            source = f"{self.output_dir.rstrip('/')}/{name}"
            target = local_dir / name
            if Path(source).resolve() != target.resolve():
                await self.get(source, target)
            fetched.append(target)
        return fetched

    @abstractmethod
    async def close(self) -> None:
        """Stop the agent and release resources; idempotent, never raises for a dead agent."""

    def describe(self) -> dict[str, Any]:
        """Return what the manifest records of this connector (kind, host)."""
        return {"kind": self.kind}

    def failure_context(self) -> str:
        """Return the tail of the site's log, to append to an error message."""
        tail = read_tail(self.log_path, 3)
        return f"; last log lines:\n{tail}" if tail else ""


class StreamConnector(Connector):
    """A connector over an asyncio-style reader/writer pair (subprocess pipes, SSH channels)."""

    _reader: _Reader | None = None
    _writer: _Writer | None = None

    async def _dead(self) -> str:
        """Return why the agent went away (exit status, signal); '' when unknown."""
        return ""

    async def send(self, payload: bytes) -> None:
        if self._writer is None:
            raise SiteError("node agent is not running", site=self.site)
        header = frame_header(payload, self.max_frame)
        try:
            self._writer.write(header)
            self._writer.write(payload)  # not joined with its header: a copy of megabytes
            await self._writer.drain()
        except (ConnectionError, BrokenPipeError, OSError) as exc:
            why = await self._dead()
            raise SiteError(
                f"lost the node agent while sending ({why or exc}){self.failure_context()}",
                site=self.site,
            ) from exc
        self.bytes_sent += len(header) + len(payload)

    async def receive(self, timeout: float | None = None) -> bytes:
        if self._reader is None:
            raise SiteError("node agent is not running", site=self.site)
        try:
            async with asyncio.timeout(timeout):
                header = await self._reader.readexactly(HEADER_SIZE)
                length = parse_header(header, self.max_frame)
                payload = await self._reader.readexactly(length) if length else b""
        except TimeoutError:
            raise SiteTimeout(f"no answer within {timeout:g} s", site=self.site) from None
        except asyncio.IncompleteReadError as exc:
            why = await self._dead()
            what = "node agent exited" if not exc.partial else "connection closed mid-frame"
            raise SiteError(
                f"{what}{f' ({why})' if why else ''}{self.failure_context()}", site=self.site
            ) from None
        except (ConnectionError, OSError) as exc:
            raise SiteError(
                f"connection lost: {exc}{self.failure_context()}", site=self.site
            ) from exc
        self.bytes_received += HEADER_SIZE + length
        return payload
