"""The coordinator: drives the sites' node agents through one run of an app.

It owns the sequence (start → stage → handshake → prepare → rounds → finish → collect), the
concurrency (every request goes to all sites at once), the timeouts and the bookkeeping (bytes per
site per round, phase durations). It reaches sites only through connectors, and knows nothing of
processes or sockets. Any site failure ends the run promptly, naming the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import importlib.util
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from fedflow._version import __version__
from fedflow.apps import BUILTIN_APPS
from fedflow.apps.base import App, SiteInfo
from fedflow.connectors.base import Connector
from fedflow.errors import (
    AppError,
    DataError,
    FedflowError,
    LocalProtocolError,
    RemoteProtocolError,
    SiteError,
)
from fedflow.results.rundir import RunDirectory
from fedflow.results.trace import TraceWriter
from fedflow.runtime.driver import Driver, Outcome
from fedflow.runtime.observer import Observer
from fedflow.wire import (
    PROTOCOL_VERSION,
    ROUND_REQUESTS,
    Bye,
    Failure,
    FileInfo,
    Finish,
    Hello,
    Message,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Setup,
    Welcome,
)

__all__ = ["Coordinator", "Outcome", "SiteRecord"]

M = TypeVar("M", bound=Message)

SETUP_TIMEOUT = 120.0
"""Seconds a site may take to start, load its data, prepare or finish (at least)."""


@dataclass
class SiteRecord:
    """What the coordinator learned about a site (for the manifest and metrics; never rows)."""

    name: str
    connector: Connector
    data: list[str] = field(default_factory=list)
    welcome: Welcome | None = None
    ready: Ready | None = None
    rows_used: int | None = None
    bye: Bye | None = None
    awaiting: float | None = None
    """The timeout of a request whose reply is unread (its wait was cancelled), else None."""
    answering: bool = True
    """False once the site failed to answer (timeout, connection lost)."""

    def manifest(self) -> dict[str, Any]:
        """Return this site's manifest entry."""
        entry: dict[str, Any] = {**self.connector.describe()}
        if self.welcome:
            entry.update(
                fedflow=self.welcome.version,
                python=self.welcome.python,
                agent_host=self.welcome.host,
            )
        if self.ready:
            entry["rows"] = self.ready.rows
            entry["columns"] = {c.name: c.dtype for c in self.ready.columns}
            entry["files"] = [_file_entry(f) for f in _fingerprints(self.ready, self.bye)]
        if self.rows_used is not None:
            entry["rows_used"] = self.rows_used
        return entry


def _fingerprints(ready: Ready, bye: Bye | None) -> list[FileInfo]:
    """The data's fingerprints: a file's sha256 arrives with Bye (hashed while the site read
    it), a query's with Ready."""
    known = {f.name: f for f in bye.files} if bye is not None else {}
    return [f if f.sha256 is not None else known.get(f.name, f) for f in ready.files]


def _file_entry(f: FileInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": f.name, "sha256": f.sha256, "bytes": f.bytes, "rows": f.rows}
    if f.sha256 is None:  # never a hash the site did not compute
        entry["sha256_unknown"] = (
            "the run ended before the site reported this file's sha256 (it is sent with the "
            "site's last reply, once the site has hashed the file; a site lost or not answering "
            "at the end of a failed run sends none)"
        )
    return entry


class Coordinator:
    """Run ``app`` (as the study names it) with ``raw_params`` over the given site connectors.

    The conversation itself is the round driver's (``fedflow.runtime.driver``); the coordinator
    carries its messages to every site at once and keeps the books. ``rundir`` receives the
    metrics and the sites' fetched outputs (None: metrics are kept in memory only).
    """

    def __init__(
        self,
        app: str | App[Any],
        raw_params: Mapping[str, Any] | None,
        connectors: Mapping[str, Connector],
        data: Mapping[str, list[str]] | None = None,
        rundir: RunDirectory | None = None,
        *,
        setup: Mapping[str, Mapping[str, Any]] | None = None,
        observer: Observer | None = None,
        timeout: float = 300.0,
        min_count: int = 5,
        seed: int | None = None,
        dropna: bool = False,
        max_rounds: int = 10_000,
        trace: TraceWriter | None = None,
        after_round: Callable[[Driver, int], None] | None = None,
        round_exchange: Callable[..., Any] | None = None,
        secure: bool = False,
        secure_threshold: int | None = None,
        warm: Callable[[], None] | None = None,
    ) -> None:
        ref = app if isinstance(app, str) else app.name
        instance = None if isinstance(app, str) else app
        self.driver = Driver(
            ref,
            raw_params,
            seed=seed,
            min_count=min_count,
            max_rounds=max_rounds,
            app_instance=instance,
            secure=secure,
            threshold=secure_threshold,
        )
        self.app = self.driver.app
        self.sites = {
            name: SiteRecord(name, conn, list((data or {}).get(name, [])))
            for name, conn in connectors.items()
        }
        self.setup = {name: dict((setup or {}).get(name, {})) for name in self.sites}
        """Per site, further ``Setup`` fields: how it reads its files (``sep``, ``header``,
        ``columns``), the ``dataset`` it is asked for, the ``study`` name and hash."""
        self.code_sha256: str | None = None
        """The sha256 of a plug-in app's source sent to the sites (None for built-in apps)."""
        self.rundir = rundir
        self.metrics: dict[str, Any] = (
            rundir.metrics if rundir is not None else {"phases": [], "rounds": [], "sites": {}}
        )
        self.observer = observer or Observer()
        self.timeout = timeout
        self.min_count = min_count
        self.seed = seed
        self.dropna = dropna
        self.codec = MessageCodec()
        self.trace = trace
        """Where every received message is recorded (``--trace``), or None."""
        self.after_round = after_round
        """Called with the driver and the round after every aggregated round (checkpoints)."""
        self.warm = warm
        """Run on the import thread with the app's ``coordinator_imports`` while the sites start:
        a training run's torch (and its deterministic settings), which the coordinator needs
        for the first round, imported meanwhile instead of after the sites' own import."""
        self.round_exchange = round_exchange
        """``await round_exchange(coordinator, tasks, expect)`` replaces a round's exchange."""
        self.setups: dict[str, Setup] = {}
        self.lost: set[str] = set()
        """Sites a ``round_exchange`` hook gave up on (they are not asked to finish)."""
        self.prepare_message: Prepare | None = None
        for name in self.sites:
            self.metrics["sites"][name] = {"bytes_to_site": 0, "bytes_from_site": 0}

    @property
    def rounds(self) -> int:
        """Rounds run so far."""
        return self.driver.rounds

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics["phases"].append({"name": name, "seconds": time.perf_counter() - started})

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        """Run to the end; always close every connector. Raises the first site's failure."""
        try:
            return await self._run()
        except Exception:
            await self._finish_failed()
            raise
        finally:
            await self.close()

    async def check(self) -> dict[str, SiteRecord]:
        """Start, hand-shake and prepare every site — each reads and checks its data for the
        app as at the start of a run — then let them go without a round. Returns the sites."""
        try:
            await self._open()
            await self._finish("checked")
            return self.sites
        finally:
            await self.close()

    async def _open(self) -> dict[str, SiteInfo]:
        obs, driver = self.observer, self.driver
        # the coordinator's statistics (p-values: scipy.stats, a second or more to import; the
        # app names what it needs) load in a thread while the sites start and load their data,
        # so no round carries the import
        needs = type(self.app).coordinator_imports

        def imports() -> None:
            for name in needs:
                importlib.import_module(name)
            if self.warm is not None:
                self.warm()

        warm = asyncio.ensure_future(asyncio.to_thread(imports))
        with self._phase("start sites"):
            obs.phase("starting sites")
            await self._each(self._start)
        with self._phase("stage data"):
            await self._each(self._stage)
        with self._phase("handshake"):
            obs.phase("handshake")
            welcomes = await self._exchange(
                {
                    n: Hello(protocol=PROTOCOL_VERSION, version=__version__, site=n)
                    for n in self.sites
                },
                Welcome,
            )
            for name, welcome in welcomes.items():
                self.sites[name].welcome = welcome
                if welcome.protocol != PROTOCOL_VERSION or welcome.version != __version__:
                    raise SiteError(
                        f"runs fedflow {welcome.version} (protocol {welcome.protocol}); the coordinator "
                        f"runs {__version__} (protocol {PROTOCOL_VERSION}); install the same version there",
                        site=name,
                    )
            self.setups = {
                n: Setup(
                    data=s.data,
                    dropna=self.dropna,
                    min_count=self.min_count,
                    seed=self.seed,
                    outputs=s.connector.output_dir,
                    **self.setup[n],
                )
                for n, s in self.sites.items()
            }
            readies = await self._exchange(self.setups, Ready)
            for name, ready in readies.items():
                self.sites[name].ready = ready
                obs.site(name, "loaded", f"{ready.rows} rows")
        infos = {
            n: SiteInfo(n, s.ready.rows, {c.name: c.dtype for c in s.ready.columns})
            for n, s in self.sites.items()
            if s.ready is not None
        }
        prepare = driver.prepare(infos)
        source = plugin_source(driver.ref) if driver.ref not in BUILTIN_APPS else None
        if source is None:
            source = study_code(self.app, driver.params)
        if source is not None:
            self.code_sha256 = "sha256:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
            prepare = msgspec.structs.replace(prepare, code=source)
        self.prepare_message = prepare  # kept, with self.setups, to restart a lost site's agent
        with self._phase("prepare"):
            prepared = await self._exchange({n: prepare for n in self.sites}, Prepared)
            driver.prepared(prepared)  # secure = true: the sites' keys for pairwise masks
            for name, reply in prepared.items():
                self.sites[name].rows_used = reply.rows
                infos[name] = SiteInfo(name, reply.rows, infos[name].columns)
                obs.site(name, "ready", f"{reply.rows} rows")
        await warm
        return infos

    async def _run(self) -> Outcome:
        obs, driver = self.observer, self.driver
        infos = await self._open()
        driver.begin(infos)
        entry: dict[str, Any] | None = None
        started = 0.0
        while (tasks := driver.tasks()) is not None:
            round_ = driver.rounds
            if entry is None:  # a round starts (a secure round spans several exchanges)
                obs.round_started(round_)
                started = time.perf_counter()
                entry = self._round_entry(round_, driver.phase)
            before = {
                n: (s.connector.bytes_sent, s.connector.bytes_received)
                for n, s in self.sites.items()
            }
            exchange_started = time.perf_counter()
            replies = await self._round_exchange(tasks, driver.expect)
            exchanged = time.perf_counter()
            driver.feed(replies)
            finished = time.perf_counter()
            entry["exchanges"] += 1
            entry["exchange_seconds"] += exchanged - exchange_started
            entry["aggregate_seconds"] += finished - exchanged
            for n, s in self.sites.items():
                books = entry["sites"][n]
                books["compute_seconds"] += getattr(replies.get(n), "seconds", 0.0)
                books["bytes_to_site"] += s.connector.bytes_sent - before[n][0]
                books["bytes_from_site"] += s.connector.bytes_received - before[n][1]
            if not driver.in_round:
                entry["seconds"] = finished - started
                self.metrics["rounds"].append(entry)
                entry = None
                obs.round_done(round_, finished - started, driver.phase is None)
                self._after_round(round_)
        outcome = driver.outcome()
        await self._finish("completed")
        with self._phase("collect outputs"):
            await self._each(self._collect)
        return outcome

    async def _round_exchange(self, tasks: Mapping[str, Message], expect: type[M]) -> dict[str, M]:
        """A round's exchange: every site must answer, unless a ``round_exchange`` hook (a
        training run's round timeout, retries and quorum) lets some sites fail (in secure rounds
        only with dropout recovery)."""
        if self.round_exchange is not None and (not self.driver.secure or self.driver.dropout):
            return await self.round_exchange(self, tasks, expect)  # type: ignore[no-any-return]
        return await self._exchange(tasks, expect)

    def _after_round(self, round_: int) -> None:
        """Call the ``after_round`` hook (a training run's checkpoint) once a round is aggregated."""
        if self.after_round is not None:
            self.after_round(self.driver, round_)

    def _round_entry(self, round_: int, phase: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "round": round_,
            "phase": phase,
            "seconds": 0.0,
            "exchange_seconds": 0.0,
            "aggregate_seconds": 0.0,
            "sites": {
                n: {"compute_seconds": 0.0, "bytes_to_site": 0, "bytes_from_site": 0}
                for n in self.sites
            },
        }
        entry["exchanges"] = 0  # 1 (2 if a wider encoding was needed); 4 with dropout recovery
        return entry

    async def _finish(self, status: str) -> None:
        with self._phase("finish sites"):
            finish = {n: Finish(status=status) for n in self.sites if n not in self.lost}
            byes = await self._exchange(finish, Bye)
            for name, bye in byes.items():
                self.sites[name].bye = bye
                self.metrics["sites"][name].update(
                    peak_rss_bytes=bye.peak_rss, cpu_seconds=bye.cpu_seconds
                )

    async def _finish_failed(self) -> None:
        """A failed run: send Finish("failed") to every site that loaded its data and still
        answers, and keep its Bye, whose fingerprints the manifest records (a file's sha256 is
        sent with Bye). A site that does not answer keeps them unknown; never raises."""

        async def finish(site: SiteRecord) -> None:
            if site.awaiting is not None:  # its reply to a request cancelled by the failure
                await site.connector.receive(site.awaiting)
                site.awaiting = None
            site.bye = await self._ask(site.name, Finish(status="failed"), Bye)

        sites = [
            s
            for n, s in self.sites.items()
            if s.ready is not None and s.answering and n not in self.lost
        ]
        with self._phase("finish sites"):  # the run's own failure is what it reports
            await asyncio.gather(*map(finish, sites), return_exceptions=True)

    async def close(self) -> None:
        """Close every connector (agents stop); never raises."""
        await asyncio.gather(
            *(s.connector.close() for s in self.sites.values()), return_exceptions=True
        )
        for name, site in self.sites.items():
            self.metrics["sites"][name].update(
                bytes_to_site=site.connector.bytes_sent,
                bytes_from_site=site.connector.bytes_received,
            )

    # -- per-site steps ------------------------------------------------------------------------
    async def _start(self, site: SiteRecord) -> None:
        self.observer.site(site.name, "starting", "")
        limit = max(self.timeout, site.connector.start_timeout)
        try:
            async with asyncio.timeout(limit):
                await site.connector.start()
        except TimeoutError:
            raise SiteError(f"did not start within {limit:g} s", site=site.name) from None
        self.observer.site(site.name, "started", "")

    async def _stage(self, site: SiteRecord) -> None:
        site.data = await site.connector.stage(site.data)

    async def _collect(self, site: SiteRecord) -> None:
        if site.bye and site.bye.outputs and self.rundir is not None:
            await site.connector.collect(site.bye.outputs, self.rundir.site_dir(site.name))

    async def _each(self, step: Any) -> None:
        await self._gather({n: step(s) for n, s in self.sites.items()})

    # -- messaging -----------------------------------------------------------------------------
    async def _ask(self, name: str, message: Message, expect: type[M]) -> M:
        # Rounds get the study's timeout; starting, loading data and finishing get at least
        # SETUP_TIMEOUT, since a cold Python start and a big file can outlast a short round limit.
        timeout = (
            self.timeout
            if isinstance(message, ROUND_REQUESTS)
            else max(self.timeout, SETUP_TIMEOUT)
        )
        connector = self.sites[name].connector
        try:
            payload = self.codec.encode(message)
        except LocalProtocolError as exc:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__}: {exc.message}", site=name
            ) from None
        site = self.sites[name]
        await connector.send(payload)
        site.awaiting = timeout  # stays set if this wait is cancelled (another site failed)
        try:
            raw = await connector.receive(timeout)
        except FedflowError:
            site.answering = False
            raise
        site.awaiting, site.answering = None, True
        try:
            reply = self.codec.decode(raw)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.message, site=name) from None
        if self.trace is not None:
            round_ = message.round if isinstance(message, ROUND_REQUESTS) else None
            self.trace.record(
                name, reply, round=round_, phase=self.driver.phase if round_ else None
            )
        if isinstance(reply, Failure):
            raise _failure_error(reply, name)
        if not isinstance(reply, expect):
            raise RemoteProtocolError(
                f"expected {expect.__name__}, got {type(reply).__name__}", site=name
            )
        return reply

    async def _exchange(self, messages: Mapping[str, Message], expect: type[M]) -> dict[str, M]:
        return await self._gather({n: self._ask(n, m, expect) for n, m in messages.items()})

    async def _gather(self, coros: Mapping[str, Any]) -> dict[str, Any]:
        """Run one coroutine per site concurrently; on the first failure cancel the rest and raise it."""
        tasks = {name: asyncio.ensure_future(coro) for name, coro in coros.items()}
        try:
            done, pending = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for task in tasks.values():
                task.cancel()
            raise
        failed = [
            t
            for t in tasks.values()
            if t.done() and not t.cancelled() and t.exception() is not None
        ]
        if failed:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            # prefer a site's own report (data, app) over a consequence (timeout) when both happened
            errors = [t.exception() for t in failed]
            chosen = next((e for e in errors if not isinstance(e, SiteError)), errors[0])
            assert chosen is not None
            if isinstance(chosen, FedflowError):
                self.observer.site(chosen.site or "?", "failed", chosen.message)
            raise chosen
        return {name: task.result() for name, task in tasks.items()}


def plugin_source(ref: str) -> str:
    """Return the source of the module of a plug-in app ``package.module:Class``, sent to the
    sites so that a defended site can match it against the code its operator approved."""
    module = ref.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise AppError(f"app '{ref}': cannot find the source of module '{module}'")
    with open(spec.origin, encoding="utf-8") as handle:
        return handle.read()


def study_code(app: App[Any], params: Any) -> str | None:
    """Return the study's own code a built-in app runs at the sites (train's plan), sent like a
    plug-in's source so that a defended site runs it only if approved; None for other apps."""
    hook = getattr(app, "study_code", None)
    return hook(params) if callable(hook) else None


def _failure_error(reply: Failure, site: str) -> FedflowError:
    if reply.kind == "data":
        return DataError(reply.message, site=site, file=reply.file, column=reply.column)
    if reply.kind == "app":
        return AppError(reply.message, site=site)
    if reply.kind == "protocol" and reply.blame is not None:  # e.g. a share that does not open
        return RemoteProtocolError(f"{reply.message} (found by site '{site}')", site=reply.blame)
    if reply.kind == "protocol":
        return LocalProtocolError(f"the site rejected our message: {reply.message}", site=site)
    if reply.kind == "policy":
        return SiteError(f"refused by the site's policy: {reply.message}", site=site)
    return SiteError(f"failed: {reply.message} (see logs/{site}.log)", site=site)
