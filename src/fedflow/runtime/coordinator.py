"""The coordinator: drives the sites' node agents through one run of an app.

It owns the sequence (start → stage → handshake → prepare → rounds → finish → collect), the
concurrency (every request goes to all sites at once), the timeouts and the bookkeeping (bytes per
site per round, phase durations). It reaches sites only through connectors, and knows nothing of
processes or sockets. Any site failure ends the run promptly, naming the site.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedflow._version import __version__
from fedflow.apps.base import App, Continue, CoordinatorContext, Done, SiteInfo, merged_columns
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
from fedflow.runtime.observer import Observer
from fedflow.wire import (
    PROTOCOL_VERSION,
    Bye,
    Failure,
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
            entry["files"] = [
                {"name": f.name, "sha256": f.sha256, "bytes": f.bytes, "rows": f.rows}
                for f in self.ready.files
            ]
        if self.rows_used is not None:
            entry["rows_used"] = self.rows_used
        return entry


@dataclass
class Outcome:
    """What a finished run produced at the coordinator."""

    done: Done
    params: Any
    rounds: int
    notes: list[str]


class Coordinator:
    """Run ``app`` with ``raw_params`` over the given site connectors (site name → connector)."""

    def __init__(
        self,
        app: App[Any],
        raw_params: Mapping[str, Any] | None,
        connectors: Mapping[str, Connector],
        data: Mapping[str, list[str]],
        rundir: RunDirectory,
        *,
        observer: Observer | None = None,
        timeout: float = 300.0,
        min_count: int = 5,
        seed: int | None = None,
        dropna: bool = False,
        max_rounds: int = 10_000,
    ) -> None:
        self.app = app
        self.params = app.parse_params(raw_params)
        self.sites = {
            name: SiteRecord(name, conn, list(data.get(name, [])))
            for name, conn in connectors.items()
        }
        self.rundir = rundir
        self.observer = observer or Observer()
        self.timeout = timeout
        self.min_count = min_count
        self.seed = seed
        self.dropna = dropna
        self.max_rounds = max_rounds
        self.codec = MessageCodec()
        self.rounds = 0
        for name in self.sites:
            rundir.metrics["sites"][name] = {"bytes_sent": 0, "bytes_received": 0}

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        """Run to the end; always close every connector. Raises the first site's failure."""
        try:
            return await self._run()
        finally:
            await self.close()

    async def _run(self) -> Outcome:
        obs, rd = self.observer, self.rundir
        with rd.phase("start sites"):
            obs.phase("starting sites")
            await self._each(self._start)
        with rd.phase("stage data"):
            await self._each(self._stage)
        with rd.phase("handshake"):
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
            readies = await self._exchange(
                {
                    n: Setup(
                        data=s.data,
                        dropna=self.dropna,
                        min_count=self.min_count,
                        seed=self.seed,
                        outputs=s.connector.output_dir,
                    )
                    for n, s in self.sites.items()
                },
                Ready,
            )
            for name, ready in readies.items():
                self.sites[name].ready = ready
                obs.site(name, "loaded", f"{ready.rows} rows")
        infos = {
            n: SiteInfo(n, s.ready.rows, {c.name: c.dtype for c in s.ready.columns})
            for n, s in self.sites.items()
            if s.ready is not None
        }
        common = merged_columns(infos)
        params = self.app.resolve(self.params, common)
        needed = self.app.columns(params)
        wire_params = self.app.params_to_dict(params)
        with rd.phase("prepare"):
            prepared = await self._exchange(
                {
                    n: Prepare(app=self.app.name, params=wire_params, columns=dict(needed))
                    for n in self.sites
                },
                Prepared,
            )
            for name, reply in prepared.items():
                self.sites[name].rows_used = reply.rows
                infos[name] = SiteInfo(name, reply.rows, infos[name].columns)
                obs.site(name, "ready", f"{reply.rows} rows")
        ctx = CoordinatorContext(sites=infos, seed=self.seed, min_count=self.min_count)
        step = self.app.start(params, ctx)
        while isinstance(step, Continue):
            if ctx.round >= self.max_rounds:
                raise AppError(
                    f"app '{self.app.name}' did not finish within {self.max_rounds} rounds"
                )
            ctx.round += 1
            self.rounds = ctx.round
            obs.round_started(ctx.round)
            started = time.perf_counter()
            before = {
                n: (s.connector.bytes_sent, s.connector.bytes_received)
                for n, s in self.sites.items()
            }
            tasks = {
                n: Task(round=ctx.round, payload=(step.per_site or {}).get(n, step.payload))
                for n in self.sites
            }
            replies = await self._exchange(tasks, Reply)
            exchanged = time.perf_counter()
            step = self.app.aggregate({n: r.payload for n, r in replies.items()}, params, ctx)
            finished = time.perf_counter()
            record = {
                "round": ctx.round,
                "seconds": finished - started,
                "exchange_seconds": exchanged - started,
                "aggregate_seconds": finished - exchanged,
                "sites": {
                    n: {
                        "compute_seconds": replies[n].seconds,
                        "bytes_sent": s.connector.bytes_sent - before[n][0],
                        "bytes_received": s.connector.bytes_received - before[n][1],
                    }
                    for n, s in self.sites.items()
                },
            }
            rd.metrics["rounds"].append(record)
            obs.round_done(ctx.round, finished - started, isinstance(step, Done))
        with rd.phase("finish sites"):
            byes = await self._exchange({n: Finish(status="completed") for n in self.sites}, Bye)
            for name, bye in byes.items():
                self.sites[name].bye = bye
                rd.metrics["sites"][name].update(
                    peak_rss_bytes=bye.peak_rss, cpu_seconds=bye.cpu_seconds
                )
        with rd.phase("collect outputs"):
            await self._each(self._collect)
        return Outcome(done=step, params=params, rounds=ctx.round, notes=ctx.notes)

    async def close(self) -> None:
        """Close every connector (agents stop); never raises."""
        await asyncio.gather(
            *(s.connector.close() for s in self.sites.values()), return_exceptions=True
        )
        for name, site in self.sites.items():
            self.rundir.metrics["sites"][name].update(
                bytes_sent=site.connector.bytes_sent, bytes_received=site.connector.bytes_received
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
        if site.bye and site.bye.outputs:
            await site.connector.collect(site.bye.outputs, self.rundir.site_dir(site.name))

    async def _each(self, step: Any) -> None:
        await self._gather({n: step(s) for n, s in self.sites.items()})

    # -- messaging -----------------------------------------------------------------------------
    async def _ask(self, name: str, message: Message, expect: type[M]) -> M:
        # Rounds get the study's timeout; starting, loading data and finishing get at least
        # SETUP_TIMEOUT, since a cold Python start and a big file can outlast a short round limit.
        timeout = self.timeout if isinstance(message, Task) else max(self.timeout, SETUP_TIMEOUT)
        connector = self.sites[name].connector
        try:
            payload = self.codec.encode(message)
        except LocalProtocolError as exc:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__}: {exc.message}", site=name
            ) from None
        await connector.send(payload)
        raw = await connector.receive(timeout)
        try:
            reply = self.codec.decode(raw)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.message, site=name) from None
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


def _failure_error(reply: Failure, site: str) -> FedflowError:
    if reply.kind == "data":
        return DataError(reply.message, site=site, file=reply.file, column=reply.column)
    if reply.kind == "app":
        return AppError(reply.message, site=site)
    if reply.kind == "protocol":
        return LocalProtocolError(f"the site rejected our message: {reply.message}", site=site)
    if reply.kind == "policy":
        return SiteError(f"refused by the site's policy: {reply.message}", site=site)
    return SiteError(f"failed: {reply.message} (see logs/{site}.log)", site=site)
