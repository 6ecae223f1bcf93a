"""Client of the local fork server (``fedflow.node.forkserver``): start local sites in milliseconds.

``ForkServer.launch()`` starts one server process per run (``fedflow run`` launches it first
thing, so that the server's imports overlap the coordinator's); ``spawn(site, args, log)``
returns the new site's pid and the coordinator's end of its channel (a socket the site uses as
stdin and stdout). Requests are short and serialised; the server answers each at once.

``server.preload = site_imports(study)``, set before the first spawn, has the server import the
libraries a training study's plan imports (torch, scikit-learn) before its first fork: once for
all local sites instead of once per site in round 1.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fedflow.errors import SiteError

__all__ = ["ForkServer", "forkserver_wanted", "site_imports"]


def forkserver_wanted() -> bool:
    """Fork local sites from one pre-imported process unless FEDFLOW_FORKSERVER=0."""
    return os.environ.get("FEDFLOW_FORKSERVER", "1") != "0"


def site_imports(study: Any) -> tuple[str, ...]:
    """The modules the local sites of ``study`` import in their first round that the fork server
    may load for them once: for ``app = "train"``, the torch and scikit-learn modules its plan
    imports (read from the plan's import statements; the plan itself is not run here). Empty for
    every other study, and for a plan that cannot be read or parsed (the run reports that)."""
    plan = dict(study.params).get("plan") if study.app == "train" else None
    if not isinstance(plan, str):
        return ()
    try:
        tree = ast.parse(Path(study.resolve(plan)).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return ()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    wanted = [m for m in dict.fromkeys(found) if m.split(".")[0] in ("torch", "sklearn")]
    return tuple(sorted(wanted, key=lambda m: (m.split(".")[0] != "torch", m)))


class ForkServer:
    """One pre-imported Python that forks local node agents on request."""

    def __init__(
        self,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.python = python
        self.env = env
        self.preload = list(preload)
        """Modules the server imports before its first fork (``site_imports``); settable until
        the first spawn."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._preloaded = False

    @classmethod
    def launch(cls, python: str = sys.executable, env: dict[str, str] | None = None) -> ForkServer:
        """Return a server whose process is already starting (its imports run meanwhile)."""
        server = cls(python, env)
        server._launch()
        return server

    def _launch(self) -> None:
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [self.python, "-m", "fedflow.node.forkserver", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self.env,
            )
        except OSError as exc:
            ours.close()
            raise SiteError(f"cannot start local sites ({exc.strerror}: {self.python})") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours

    async def start(self) -> None:
        """Start the server if it is not running, and have it import ``preload`` before its
        first fork (once)."""
        self._launch()
        if self.preload and not self._preloaded:
            self._preloaded = True
            await self._request({"op": "preload", "modules": self.preload})

    async def _request(
        self, request: dict[str, Any], fds: list[int] | None = None
    ) -> dict[str, Any]:
        assert self._control is not None
        loop = asyncio.get_running_loop()
        async with self._lock:
            data = json.dumps(request).encode()
            if fds:  # one small packet: a non-blocking send completes at once
                socket.send_fds(self._control, [data], fds)
            else:
                await loop.sock_sendall(self._control, data)
            reply = await loop.sock_recv(self._control, 65536)
        if not reply:
            raise SiteError("the local fork server exited")
        return json.loads(reply)  # type: ignore[no-any-return]

    async def spawn(
        self, site: str, args: list[str], log: IO[bytes] | None
    ) -> tuple[int, socket.socket]:
        """Fork a node agent for ``site``; return its pid and our end of its channel."""
        await self.start()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_fd = log.fileno() if log is not None else os.open(os.devnull, os.O_WRONLY)
        try:
            reply = await self._request(
                {"op": "spawn", "site": site, "args": args}, [theirs.fileno(), log_fd]
            )
        except BaseException:  # cancelled or failed: a site forked anyway sees EOF and exits
            ours.close()
            raise
        finally:
            theirs.close()
            if log is None:
                os.close(log_fd)
        if "pid" not in reply:
            ours.close()
            raise SiteError(f"the local fork server refused to start the site: {reply}", site=site)
        return int(reply["pid"]), ours

    async def status(self, pid: int) -> int | None:
        """Return the exit status of a site that ended (negative: its signal), else None."""
        if self._control is None:
            return None
        try:
            reply = await self._request({"op": "status", "pid": pid})
        except (OSError, SiteError):
            return None
        return reply.get("status")

    def _detach(self) -> subprocess.Popen[bytes] | None:
        """Close the control socket (the server exits when it reads that) and return its process."""
        if self._control is not None:
            self._control.close()
            self._control = None
        proc, self._proc = self._proc, None
        return proc

    async def close(self) -> None:
        """Stop the server (its remaining children exit when they notice)."""
        proc = self._detach()
        if proc is not None:
            try:  # it exits as soon as it reads the closed socket
                await asyncio.to_thread(proc.wait, 2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)

    def kill(self) -> None:
        """Stop the server at once, outside any event loop (a command that ends before its run)."""
        proc = self._detach()
        if proc is not None:
            proc.kill()
            proc.wait()
