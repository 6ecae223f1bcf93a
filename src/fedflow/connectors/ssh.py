"""A remote site reached over SSH (asyncssh): connect, prepare, stage, run the agent, collect.

    conn = SSHConnector(client, study, log_path=run_dir / "logs" / "vienna.log")
    await conn.start()     connect (known_hosts checked), prepare the venv, start the agent
    await conn.stage([...])  upload data files (checksum-verified) unless skip_data_transfer
    ... frames over the exec channel's stdin/stdout (StreamConnector) ...
    await conn.collect(names, local_dir)   fetch the agent's outputs unless skip_result_transfer
    await conn.close()     EOF to the agent (it exits), remove this run's folder, disconnect

The agent runs as ``<workdir>/venv/bin/python -m fedflow.node --site NAME`` in an exec channel
(no pty, binary streams); its stderr is appended to ``log_path``. On the site, fedflow writes
only under the study's working folder: ``venv/`` and ``wheels/`` (the prepared environment),
``data/`` (staged data, kept for the next run) and ``runs/<run>/``. ``<run>`` is derived from the
run's identity (the coordinator's host, the site and the run directory, ``run_identity``), so a
restarted agent (retries) and ``fedflow resume`` reuse its ``out/`` folder, where the agent keeps
its state between rounds (``out/state``, e.g. SCAFFOLD's control) and the plan sent
(``out/plan``); the agent runs in ``runs/<run>/conn-<id>/``, one per connection. At close the
connection's folder is removed, and ``runs/<run>/`` too unless its ``out/state`` holds files (a
run interrupted now can be resumed); ``[debug] keep_remote = true`` keeps everything. Without
``run_identity`` (a connector used on its own) ``runs/<id>/`` is per connection.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import platform
import shlex
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import asyncssh

from fedflow.connectors.base import StreamConnector
from fedflow.connectors.hostkeys import HostKeyPolicy, host_label, resolve_target
from fedflow.connectors.remote import Progress, Remote
from fedflow.connectors.siteprep import SiteMachine, prepare_site
from fedflow.errors import DataError, SiteError, StudyError

if TYPE_CHECKING:
    from fedflow.study.schema import Client, Study

__all__ = ["SSHConnector", "plan_imports", "training_needs"]

KEEPALIVE_INTERVAL = 2.0
"""Seconds between keepalive probes; a link is declared dead after ``KEEPALIVE_COUNT`` misses."""
KEEPALIVE_COUNT = 3
CONNECT_TIMEOUT = 20.0


def plan_imports(source: str) -> set[str]:
    """Return the top-level modules a plan's source imports (empty when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.partition(".")[0])
    return found


def training_needs(study: Study) -> tuple[list[str], list[str]]:
    """Return the (extras, packages) a training study's plan needs at a site: the ``torch``
    extra unless the plan imports scikit-learn and not torch; ``scikit-learn`` when it imports
    sklearn. Nothing for other apps. A plan that cannot be read gets torch (the study fails at
    the coordinator, which reads it too)."""
    if study.app != "train":
        return [], []
    plan = study.params.get("plan")
    try:
        source = study.resolve(str(plan)).read_text(encoding="utf-8") if plan else ""
    except (OSError, UnicodeDecodeError):
        source = ""
    modules = plan_imports(source)
    sklearn = "sklearn" in modules
    return (["torch"] if "torch" in modules or not sklearn else []), (
        ["scikit-learn"] if sklearn else []
    )


class SSHConnector(StreamConnector):
    """The node agent of a remote site, over one asyncssh connection (see the module docstring)."""

    kind = "ssh"
    start_timeout = 900.0  # a fresh offline site builds a venv from uploaded wheels (~25 s here)

    def __init__(
        self,
        client: Client,
        study: Study,
        *,
        log_path: Path | None = None,
        output_dir: str | None = None,
        run_identity: str | None = None,
        progress: Progress | None = None,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_count_max: int = KEEPALIVE_COUNT,
        connect_timeout: float = CONNECT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if client.hostname is None:
            raise StudyError(f"client '{client.name}' has no hostname: it is not a remote site")
        super().__init__(client.name, log_path=log_path, output_dir=output_dir, **kwargs)
        self.client = client
        self.study = study
        self.progress = progress
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.connect_timeout = connect_timeout
        self.host, self.port = client.hostname, client.port
        self.info: SiteMachine | None = None
        self.run_identity = run_identity
        """What identifies the run at the coordinator (its run directory): the site's run folder
        is derived from it, so a restarted agent and a resumed run find their state."""
        self.run_dir: str | None = None
        """``<workdir>/runs/<run>``: stable per run with ``run_identity``, else per connection."""
        self.conn_dir: str | None = None
        """The agent's working folder for this connection (``run_dir`` without ``run_identity``)."""
        self.timings: dict[str, float] = {}
        self._conn: asyncssh.SSHClientConnection | None = None
        self._remote: Remote | None = None
        self._proc: asyncssh.SSHClientProcess[bytes] | None = None
        self._log: IO[str] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._lost: Exception | None = None

    # -- connecting ---------------------------------------------------------------------------

    def _client_keys(self) -> list[str] | None:
        """Return the key file(s) from ``sshkey`` (None: agent, config and default keys)."""
        if not self.client.sshkey:
            return None
        raw = Path(self.client.sshkey).expanduser()
        candidates = (
            [raw] if raw.is_absolute() else [self.study.resolve(str(raw)), Path.home() / raw]
        )
        for path in candidates:
            if path.is_file():
                return [str(path)]
        raise StudyError(
            f"client '{self.site}': sshkey {self.client.sshkey} not found "
            f"(looked in {', '.join(str(c) for c in candidates)})"
        )

    async def _connect(self) -> asyncssh.SSHClientConnection:
        self.host, self.port = resolve_target(self.client)
        policy = HostKeyPolicy(self.host, self.port, trust_new=self.study.trust_new_hosts)
        options: dict[str, Any] = {
            "known_hosts": policy.known_hosts,
            "client_factory": policy.client_factory(),
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": self.keepalive_count_max,
            "connect_timeout": self.connect_timeout,
        }
        if self.client.username:
            options["username"] = self.client.username
        if self.client.port != 22:
            options["port"] = self.client.port
        keys = self._client_keys()
        if keys is not None:
            options["client_keys"] = keys
            options["agent_path"] = None
        where = host_label(self.host, self.port)
        try:
            return await asyncssh.connect(self.client.hostname, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise policy.refusal(self.site) from exc
        except asyncssh.PermissionDenied as exc:
            who = self.client.username or "the default user"
            key = f"key {keys[0]}" if keys else "the agent's and default keys"
            raise SiteError(
                f"{where} refused {who} with {key} ({exc.reason})", site=self.site
            ) from exc
        except asyncssh.KeyImportError as exc:
            raise SiteError(
                f"cannot use sshkey {self.client.sshkey}: {exc} (an encrypted key must be loaded "
                "into ssh-agent and sshkey left out)",
                site=self.site,
            ) from exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            why = (
                getattr(exc, "reason", None)
                or getattr(exc, "strerror", None)
                or str(exc)
                or type(exc).__name__
            )
            raise SiteError(f"cannot connect to {where}: {why}", site=self.site) from exc

    def _extras(self) -> list[str]:
        """The fedflow extras the site's venv needs: ``parquet`` for Parquet data, ``torch``
        (torch 2.13.0 CPU and safetensors) for a training study whose plan uses torch."""
        data = self.client.data
        extras = (
            ["parquet"] if any(str(p).lower().endswith((".parquet", ".pq")) for p in data) else []
        )
        return extras + training_needs(self.study)[0]

    def _packages(self) -> list[str]:
        """More distributions the site's venv needs: ``scikit-learn`` for a scikit-learn plan."""
        return training_needs(self.study)[1]

    async def start(self) -> None:
        """Connect, prepare the site and start the agent; raise SiteError (nothing left open)."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8")
        begin = time.perf_counter()
        self._conn = await self._connect()
        self.timings["connect"] = time.perf_counter() - begin
        if self.client.managed:
            await self._start_managed()
            return
        self._remote = Remote(self._conn, self.site, self._log)
        script = (
            self.study.resolve(self.study.provision_script) if self.study.provision_script else None
        )
        begin = time.perf_counter()
        self.info = await prepare_site(
            self._remote,
            workdir=self.client.workdir,
            study_name=self.study.name,
            python=self.client.python,
            provision_script=script,
            install=getattr(self.client, "install", "wheels"),
            extras=self._extras(),
            packages=self._packages(),
            system=getattr(self.client, "system_packages", False),
            host=host_label(self.host, self.port),
            progress=self.progress,
        )
        self.timings["prepare"] = time.perf_counter() - begin
        conn_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        if self.run_identity is not None:
            self.run_dir = f"{self.info.workdir}/runs/{self.run_key()}"
            self.conn_dir = f"{self.run_dir}/conn-{conn_id}"
        else:
            self.run_dir = self.conn_dir = f"{self.info.workdir}/runs/{conn_id}"
        if self.output_dir is None:
            self.output_dir = f"{self.run_dir}/out"
        await self._start_agent()

    def run_key(self) -> str:
        """The name of this run's folder at the site (``runs/<key>``), the same for every
        connection of the run and for ``fedflow resume``: a hash of the coordinator's host, the
        site's name and ``run_identity``."""
        assert self.run_identity is not None
        text = f"{platform.node()}\0{self.site}\0{self.run_identity}"
        return "run-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    async def _start_managed(self) -> None:
        """A managed site: the operator's forced command runs the agent whatever we ask for;
        nothing is provisioned, staged or transferred, and the agent stays defended."""
        assert self._conn is not None
        try:
            self._proc = await self._conn.create_process("fedflow node", encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"cannot start the managed agent: {exc}", site=self.site) from exc
        self._reader = self._proc.stdout
        self._writer = self._proc.stdin
        self._stderr_task = asyncio.create_task(self._pump_stderr(self._proc.stderr))

    async def _start_agent(self) -> None:
        assert self._conn is not None and self.info is not None and self.conn_dir is not None
        args = ["--owned", *(["--verbose"] if self.study.debug.verbose else [])]
        here = shlex.quote(self.conn_dir)
        command = (
            f"umask 077; mkdir -p {shlex.quote(self.output_dir or self.conn_dir)} {here} "
            f"&& cd {here} && exec {shlex.quote(self.info.venv_python)} "
            f"-m fedflow.node --site {shlex.quote(self.site)} {' '.join(args)}"
        )
        try:
            self._proc = await self._conn.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"cannot start the node agent: {exc}", site=self.site) from exc
        self._reader = self._proc.stdout
        self._writer = self._proc.stdin
        self._stderr_task = asyncio.create_task(self._pump_stderr(self._proc.stderr))

    async def _pump_stderr(self, stream: asyncssh.SSHReader[bytes]) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, asyncio.CancelledError):
            while chunk := await stream.read(65536):
                if self._log is not None:
                    self._log.write(chunk.decode("utf-8", "replace"))
                    self._log.flush()

    # -- frames -------------------------------------------------------------------------------

    async def _dead(self) -> str:
        proc = self._proc
        if proc is None:
            return ""
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(proc.wait_closed(), 1.0)
        if proc.exit_signal:
            return f"killed by SIG{proc.exit_signal[0]}"
        if proc.exit_status is not None and proc.exit_status >= 0:
            return f"exit status {proc.exit_status}"
        if self._lost is not None:
            return f"connection lost: {self._lost}"
        return "connection lost"

    async def send(self, payload: bytes) -> None:
        try:
            await super().send(payload)
        except (asyncssh.Error, asyncssh.BreakReceived) as exc:
            self._lost = exc
            raise SiteError(
                f"lost the SSH connection to {self.host} while sending: {exc}", site=self.site
            ) from exc

    async def receive(self, timeout: float | None = None) -> bytes:
        try:
            return await super().receive(timeout)
        except asyncssh.Error as exc:
            self._lost = exc
            why = getattr(exc, "reason", "") or str(exc)
            raise SiteError(
                f"lost the SSH connection to {self.host}: {why}{self.failure_context()}",
                site=self.site,
            ) from exc

    # -- files --------------------------------------------------------------------------------

    def _require(self) -> Remote:
        if self._remote is None or self.info is None:
            raise SiteError("not connected (start() first)", site=self.site)
        return self._remote

    async def stage(self, files: Sequence[str]) -> list[str]:
        """Upload the data files to ``<workdir>/data/`` (verified) and return their site paths.

        With ``skip_data_transfer`` the paths already name files at the site and are returned
        unchanged. Unchanged files already at the site are not sent again.
        """
        if self.study.skip_data_transfer or self.client.managed:
            return list(files)  # a managed site serves its own datasets by name
        remote = self._require()
        assert self.info is not None
        names: list[str] = []
        for index, name in enumerate(Path(f).name for f in files):
            names.append(name if name not in names else f"{index + 1}-{name}")
        staged = []
        for local, name in zip(files, names, strict=True):
            path = Path(local)
            if not path.is_file():
                raise DataError(f"data file {local} not found", site=self.site, file=str(local))
            target = f"{self.info.workdir}/data/{name}"
            copied = await remote.upload(path, target, progress=self._progress)
            remote.note(
                f"{'uploaded' if copied else 'already at the site:'} {path.name} -> {target}"
            )
            staged.append(target)
        self.bytes_sent += remote.bytes_up
        remote.bytes_up = 0
        return staged

    def _progress(self, name: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(f"{self.site}:{name}", done, total)

    async def put(self, local: Path, remote: str) -> None:
        """Upload ``local`` to ``remote`` at the site (resumed, SHA-256 verified)."""
        await self._require().upload(Path(local), remote, progress=self._progress)

    async def get(self, remote: str, local: Path) -> None:
        """Fetch ``remote`` at the site into ``local`` (SHA-256 verified)."""
        await self._require().download(remote, Path(local), progress=self._progress)

    async def collect(self, names: Sequence[str], local_dir: Path) -> list[Path]:
        """Fetch the agent's outputs into ``local_dir`` unless ``skip_result_transfer``."""
        if self.study.skip_result_transfer or not self.output_dir or self.client.managed:
            return []
        fetched = []
        for name in names:
            if PurePosixPath(name).name != name or name in ("", ".", ".."):
                raise SiteError(
                    f"the agent named an output outside its folder: {name!r}", site=self.site
                )
            await self.get(f"{self.output_dir}/{name}", local_dir / name)
            fetched.append(local_dir / name)
        if self._remote is not None:
            self.bytes_received += self._remote.bytes_down
            self._remote.bytes_down = 0
        return fetched

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        conn, self._conn = self._conn, None
        if proc is not None:
            with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
                proc.stdin.write_eof()
            try:
                await asyncio.wait_for(proc.wait_closed(), 3.0)
            except (TimeoutError, asyncssh.Error, OSError):
                with contextlib.suppress(asyncssh.Error, OSError):
                    proc.terminate()  # honoured by servers that accept signal requests
                proc.close()  # the agent then sees EOF, or EPIPE at its next write
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._stderr_task, 1.0)
            self._stderr_task = None
        if conn is not None:
            if self._remote is not None and self.run_dir and not self.study.debug.keep_remote:
                with contextlib.suppress(SiteError, TimeoutError):
                    await asyncio.wait_for(
                        self._remote.run(self._cleanup_command(), check=False, what="cleanup"),
                        5.0,
                    )
            if self._remote is not None:
                with contextlib.suppress(asyncssh.Error, OSError):
                    await self._remote.close()
            conn.close()
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 3.0)
        self._reader = self._writer = None
        self._remote = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup_command(self) -> str:
        """Remove this connection's folder; and the run's folder unless its state folder holds
        files (kept for a restarted agent or ``fedflow resume``)."""
        assert self.run_dir is not None
        run = shlex.quote(self.run_dir)
        if self.run_identity is None or self.conn_dir is None:
            return f"rm -rf -- {run}"
        state = shlex.quote(f"{self.output_dir or self.run_dir}/state")
        return (
            f"rm -rf -- {shlex.quote(self.conn_dir)}; "
            f'if [ -z "$(ls -A -- {state} 2>/dev/null)" ]; then rm -rf -- {run}; fi'
        )

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "host": host_label(self.host or "", self.port)}
        if self.client.username:
            info["user"] = self.client.username
        if self.info is not None:
            info["workdir"] = self.info.workdir
            info["python"] = ".".join(map(str, self.info.python_version))
        info.update({f"{k}_seconds": round(v, 4) for k, v in self.timings.items()})
        return info
