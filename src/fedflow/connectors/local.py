"""A local site: the node agent as a separate OS process on this machine, over its stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fedflow.connectors.base import StreamConnector
from fedflow.connectors.forkserver import ForkServer
from fedflow.errors import SiteError

__all__ = ["LocalConnector"]


def _describe_status(code: int | None) -> str:
    """Return 'exit status N' / 'killed by SIGNAME' for an exit status ('' when unknown)."""
    if code is None:
        return ""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class LocalConnector(StreamConnector):
    """A node agent in its own process on this machine; its stderr goes to ``log_path``.

    With a ``forkserver`` the agent is forked from a process that has already imported it (a few
    milliseconds instead of a fresh interpreter); without, it is ``python -m fedflow.node``.
    """

    kind = "local"

    def __init__(
        self,
        site: str,
        *,
        log_path: Path | None = None,
        output_dir: str | None = None,
        python: str = sys.executable,
        agent_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        forkserver: ForkServer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(site, log_path=log_path, output_dir=output_dir, **kwargs)
        self.python = python
        self.agent_args = list(agent_args)
        self.env = env
        self.forkserver = forkserver
        self._forked = False
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.pid: int | None = None
        """The agent's process id (None before start)."""

    async def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        if self.forkserver is not None:
            self.pid, channel = await self.forkserver.spawn(self.site, self.agent_args, self._log)
            self._forked = True
            self._reader, self._writer = await asyncio.open_unix_connection(
                sock=channel, limit=2**20
            )
            return
        command = [self.python, "-m", "fedflow.node", "--site", self.site, *self.agent_args]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._log if self._log is not None else asyncio.subprocess.DEVNULL,
                env=self.env,
            )
        except OSError as exc:
            raise SiteError(
                f"cannot start the node agent ({exc.strerror}: {command[0]})", site=self.site
            ) from exc
        self.pid = self._proc.pid
        self._reader = self._proc.stdout  # type: ignore[assignment]
        self._writer = self._proc.stdin  # type: ignore[assignment]

    async def _forked_status(self, wait: float) -> int | None:
        assert self.forkserver is not None and self.pid is not None
        deadline = time.monotonic() + wait
        while True:
            status = await self.forkserver.status(self.pid)
            if status is not None or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(0.02)

    async def _dead(self) -> str:
        if self._forked:
            return _describe_status(await self._forked_status(1.0))
        if self._proc is None:
            return ""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 1.0)
        return _describe_status(self._proc.returncode)

    async def _close_forked(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()  # type: ignore[attr-defined]
        if self.pid is None:
            return
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            if await self._forked_status(2.0) is not None:
                return

    async def close(self) -> None:
        if self._forked:
            self._forked = False
            await self._close_forked()
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        self._reader = self._writer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": os.uname().nodename, "pid": self.pid}
