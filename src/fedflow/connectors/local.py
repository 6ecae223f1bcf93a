"""A local site: the node agent as a separate OS process on this machine, over its stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fedflow.connectors.base import StreamConnector
from fedflow.errors import SiteError

__all__ = ["LocalConnector"]


class LocalConnector(StreamConnector):
    """Start ``python -m fedflow.node`` as a subprocess; stderr goes to ``log_path``."""

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
        **kwargs: Any,
    ) -> None:
        super().__init__(site, log_path=log_path, output_dir=output_dir, **kwargs)
        self.python = python
        self.agent_args = list(agent_args)
        self.env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.pid: int | None = None
        """The agent's process id (None before start)."""

    async def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
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

    async def _dead(self) -> str:
        if self._proc is None:
            return ""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 1.0)
        code = self._proc.returncode
        if code is None:
            return ""
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    async def close(self) -> None:
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
