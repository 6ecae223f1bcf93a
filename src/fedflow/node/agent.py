"""The node agent: the program that runs at a site and answers the coordinator.

``NodeAgent.handle(message) -> reply`` is the whole protocol logic, one reply per request, with no
I/O but reading the site's own data files and writing its own outputs. ``serve`` is the thin loop
that carries frames over a pair of binary streams (stdin/stdout locally and over SSH alike).

States: new → greeted (Hello) → loaded (Setup) → prepared (Prepare) → rounds (Task…) → done (Finish).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from fedflow._version import __version__
from fedflow.apps import get_app
from fedflow.apps.base import App, SiteContext, Table, decode_payload, encode_payload
from fedflow.errors import AppError, DataError, PolicyError, ProtocolError, RemoteProtocolError
from fedflow.node.data import LoadedData, column_kind, prepare_table, read_table
from fedflow.wire import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Bye,
    Column,
    Failure,
    FileInfo,
    Finish,
    Hello,
    Message,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Reply,
    Setup,
    Task,
    Welcome,
    encode_frame,
    parse_header,
)

__all__ = ["NodeAgent", "SitePolicy", "serve"]

log = logging.getLogger("fedflow.node")


@dataclass(frozen=True)
class SitePolicy:
    """What a site allows, set by the site itself (``fedflow node --allow-app … --min-count …``).

    ``allowed_apps`` None allows every app; ``min_count`` raises (never lowers) the study's.
    """

    allowed_apps: frozenset[str] | None = None
    min_count: int = 1


def policy_file() -> Path:
    """Return the site's own policy file: ``$FEDFLOW_SITE_POLICY``, else
    ``$XDG_CONFIG_HOME/fedflow/site-policy.toml`` (default ``~/.config/fedflow/site-policy.toml``)."""
    explicit = os.environ.get("FEDFLOW_SITE_POLICY")
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "fedflow" / "site-policy.toml"


def load_policy(path: Path, base: SitePolicy) -> SitePolicy:
    """Return ``base`` tightened by the policy file at ``path`` (absent file: ``base``).

    The file holds ``allowed_apps = [...]`` and/or ``min_count = N``. Raises PolicyError when it
    cannot be read or holds anything else, so a site never runs under a policy it did not mean.
    """
    import tomllib

    if not path.exists():
        return base
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the site policy ({exc})") from None
    unknown = sorted(set(data) - {"allowed_apps", "min_count"})
    if unknown:
        raise PolicyError(
            f"{path}: unknown key(s) {', '.join(unknown)} (allowed: allowed_apps, min_count)"
        )
    allowed = base.allowed_apps
    apps = data.get("allowed_apps")
    if apps is not None:
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise PolicyError(f"{path}: allowed_apps must be a list of app names")
        allowed = frozenset(apps) if allowed is None else allowed & frozenset(apps)
    min_count = data.get("min_count", base.min_count)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise PolicyError(f"{path}: min_count must be a positive integer")
    return SitePolicy(allowed, max(base.min_count, min_count))


class NodeAgent:
    """Answers coordinator messages for one site. Never sends rows, only what apps return."""

    def __init__(
        self,
        site: str = "site",
        policy: SitePolicy | None = None,
        *,
        preloaded: LoadedData | None = None,
    ) -> None:
        self.site = site
        self.preloaded = preloaded
        """Data held in memory (in-memory runs and tests): served instead of reading files."""
        self.policy = policy or SitePolicy()
        self.policy_error: str | None = None
        """Why the site's policy file could not be used (every app is then refused)."""
        self.state = "new"
        self._setup: Setup | None = None
        self._loaded: LoadedData | None = None
        self._table: Table | None = None
        self._app: App[Any] | None = None
        self._params: Any = None
        self._ctx: SiteContext | None = None
        self._compute_seconds = 0.0

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, message: Message) -> Message:
        """Return the reply to ``message``; failures become ``Failure`` replies, never exceptions."""
        try:
            if isinstance(message, Hello):
                return self._hello(message)
            if isinstance(message, Setup):
                return self._setup_data(message)
            if isinstance(message, Prepare):
                return self._prepare(message)
            if isinstance(message, Task):
                return self._task(message)
            if isinstance(message, Finish):
                return self._finish(message)
            raise RemoteProtocolError(f"unexpected {type(message).__name__} message")
        except DataError as exc:
            log.error("data error: %s", exc.message)
            return Failure(kind="data", message=exc.message, file=exc.file, column=exc.column)
        except AppError as exc:
            log.error("app error: %s", exc.message)
            return Failure(kind="app", message=exc.message)
        except PolicyError as exc:
            log.error("refused: %s", exc.message)
            return Failure(kind="policy", message=exc.message)
        except ProtocolError as exc:
            log.error("protocol error: %s", exc.message)
            return Failure(kind="protocol", message=exc.message)
        except Exception as exc:  # an app bug must not kill the agent silently
            log.error("internal error:\n%s", traceback.format_exc())
            return Failure(kind="internal", message=f"{type(exc).__name__}: {exc}")

    def _expect(self, *states: str) -> None:
        if self.state not in states:
            raise RemoteProtocolError(f"message out of order (agent is in state '{self.state}')")

    # -- steps ---------------------------------------------------------------------------------
    def _hello(self, msg: Hello) -> Welcome:
        self._expect("new")
        self.site = msg.site or self.site
        log.info("coordinator says hello (protocol %s, fedflow %s)", msg.protocol, msg.version)
        if msg.protocol != PROTOCOL_VERSION or msg.version != __version__:
            log.warning(
                "version mismatch: site runs fedflow %s (protocol %s)",
                __version__,
                PROTOCOL_VERSION,
            )
        self.state = "greeted"
        return Welcome(
            protocol=PROTOCOL_VERSION,
            version=__version__,
            site=self.site,
            python=platform.python_version(),
            pid=os.getpid(),
            host=socket.gethostname(),
        )

    def _setup_data(self, msg: Setup) -> Ready:
        self._expect("greeted")
        started = time.perf_counter()
        loaded = self.preloaded or read_table(
            msg.data, site=self.site, sep=msg.sep, header=msg.header, columns=msg.columns
        )
        self._setup, self._loaded = msg, loaded
        table = loaded.table
        log.info(
            "loaded %d rows × %d columns from %d file(s) in %.1f ms",
            table.n_rows,
            len(table.columns),
            len(loaded.files),
            1000 * (time.perf_counter() - started),
        )
        self.state = "loaded"
        return Ready(
            rows=table.n_rows,
            columns=[
                Column(
                    name,
                    column_kind(table[name]),
                    int(loaded.missing[name].sum()) if name in loaded.missing else 0,
                )
                for name in table.columns
            ],
            files=[FileInfo(f.name, f.sha256, f.bytes, f.rows) for f in loaded.files],
        )

    def _prepare(self, msg: Prepare) -> Prepared:
        self._expect("loaded")
        assert self._setup is not None and self._loaded is not None
        if self.policy_error:
            raise PolicyError(self.policy_error)
        allowed = self.policy.allowed_apps
        if allowed is not None and msg.app not in allowed:
            raise PolicyError(
                f"this site does not allow app '{msg.app}' (allowed: {', '.join(sorted(allowed))})"
            )
        app = get_app(msg.app)
        params = app.parse_params(msg.params)
        min_count = max(self._setup.min_count, self.policy.min_count)
        table = prepare_table(
            self._loaded, msg.columns, dropna=self._setup.dropna, min_count=min_count
        )
        self._app, self._params, self._table = app, params, table
        self._ctx = SiteContext(site=self.site, seed=self._setup.seed, min_count=min_count)
        log.info("prepared app '%s' on %d rows", msg.app, table.n_rows)
        self.state = "prepared"
        return Prepared(rows=table.n_rows)

    def _task(self, msg: Task) -> Reply:
        self._expect("prepared")
        assert self._app is not None and self._ctx is not None and self._table is not None
        self._ctx.round = msg.round
        kind = self._app.check_phase(msg.phase).request
        try:
            request = decode_payload(msg.payload, kind)
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(
                f"task for phase '{msg.phase}' of app '{self._app.name}' does not fit: {exc}"
            ) from None
        started = time.perf_counter()
        try:
            reply = self._app.local(self._table, self._params, msg.phase, request, self._ctx)
        except DataError as exc:
            exc.site = None
            raise
        seconds = time.perf_counter() - started
        self._compute_seconds += seconds
        log.debug("round %d (%s) computed in %.2f ms", msg.round, msg.phase, 1000 * seconds)
        return Reply(round=msg.round, payload=encode_payload(reply), seconds=seconds)

    @property
    def outputs(self) -> dict[str, bytes]:
        """Files the app asked to write at this site so far (name → content)."""
        return dict(self._ctx.outputs) if self._ctx is not None else {}

    def _finish(self, msg: Finish) -> Bye:
        outputs: list[str] = []
        if self._ctx is not None and self._ctx.outputs:
            folder = self._setup.outputs if self._setup else None
            if folder is None:
                log.warning(
                    "the app produced %d output file(s) but no output folder was given",
                    len(self._ctx.outputs),
                )
            else:
                target = Path(folder)
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
                for name, content in self._ctx.outputs.items():
                    safe = Path(name).name  # an app may not write outside its folder
                    (target / safe).write_bytes(content)
                    outputs.append(safe)
                log.info("wrote %s to %s", ", ".join(outputs), target)
        self.state = "done"
        usage = resource.getrusage(resource.RUSAGE_SELF)
        log.info("run %s; computing took %.1f ms in all", msg.status, 1000 * self._compute_seconds)
        return Bye(
            peak_rss=int(usage.ru_maxrss) * 1024,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            outputs=outputs,
        )


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def serve(agent: NodeAgent, instream: BinaryIO, outstream: BinaryIO) -> int:
    """Answer frames from ``instream`` on ``outstream`` until Finish or end of input.

    Returns the exit status: 0 after Finish or a clean end of input, 1 on a broken frame.
    """
    codec = MessageCodec()
    while True:
        header = _read_exactly(instream, HEADER_SIZE)
        if not header:
            log.info("coordinator closed the channel")
            return 0
        try:
            if len(header) < HEADER_SIZE:
                raise RemoteProtocolError("channel closed inside a frame header")
            length = parse_header(header)
            payload = _read_exactly(instream, length)
            if len(payload) < length:
                raise RemoteProtocolError(
                    f"channel closed inside a frame ({len(payload)} of {length} bytes)"
                )
        except RemoteProtocolError as exc:
            log.error("%s", exc)
            return 1
        try:
            message = codec.decode(payload)
        except RemoteProtocolError as exc:
            log.error("%s", exc)
            reply: Message = Failure(kind="protocol", message=str(exc))
        else:
            reply = agent.handle(message)
        outstream.write(encode_frame(codec.encode(reply)))
        outstream.flush()
        if isinstance(reply, Bye):
            return 0


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the process that started us goes away, even if an app is stuck computing.

    The agent normally ends when its stdin closes; this covers an agent busy in ``local`` whose
    coordinator (or SSH session) was killed, so no site process outlives its run.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log.error("the coordinator went away; exiting")
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fedflow.node`` / ``fedflow node``: serve stdin/stdout."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="fedflow node", description="Run a fedflow node agent on stdin/stdout."
    )
    parser.add_argument("--site", default="site", help="this site's name (for logs)")
    parser.add_argument(
        "--allow-app",
        action="append",
        dest="allow",
        metavar="APP",
        help="allow only these apps (repeatable)",
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="raise the study's min_count at this site"
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    # Frames own the real stdout; anything else printed (by us or a library) goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s {args.site} %(levelname)s %(message)s",
    )
    _exit_with_parent()
    policy = SitePolicy(frozenset(args.allow) if args.allow else None, args.min_count)
    refusal: str | None = None
    try:
        policy = load_policy(policy_file(), policy)
    except PolicyError as exc:
        log.error("%s", exc.message)
        policy = SitePolicy(frozenset(), policy.min_count)  # refuse every app, say why at Prepare
        refusal = exc.message
    agent = NodeAgent(args.site, policy)
    agent.policy_error = refusal
    if policy.allowed_apps is not None or policy.min_count > 1:
        log.info(
            "site policy: apps %s, min_count at least %d",
            ", ".join(sorted(policy.allowed_apps)) if policy.allowed_apps is not None else "any",
            policy.min_count,
        )
    log.info(
        "node agent started (fedflow %s, python %s, pid %d)",
        __version__,
        platform.python_version(),
        os.getpid(),
    )
    try:
        return serve(agent, sys.stdin.buffer, out)
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
