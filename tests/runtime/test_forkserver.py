"""The local fork server: forked agents speak the protocol, and their exit statuses are known."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from fedflow._version import __version__
from fedflow.connectors.forkserver import ForkServer
from fedflow.connectors.local import LocalConnector
from fedflow.wire import PROTOCOL_VERSION, Hello, MessageCodec, Welcome


def test_forked_agents_answer_and_report_how_they_ended(tmp_path) -> None:
    async def scenario() -> None:
        server = ForkServer()
        codec = MessageCodec()
        sites = [
            LocalConnector(f"s{i}", log_path=tmp_path / f"s{i}.log", forkserver=server)
            for i in range(3)
        ]
        await asyncio.gather(*(s.start() for s in sites))
        pids = {s.pid for s in sites}
        assert len(pids) == 3 and os.getpid() not in pids
        for site in sites:
            await site.send(
                codec.encode(Hello(protocol=PROTOCOL_VERSION, version=__version__, site=site.site))
            )
            welcome = codec.decode(await site.receive(10))
            assert isinstance(welcome, Welcome) and welcome.pid == site.pid
        assert sites[0].pid is not None
        os.kill(sites[0].pid, signal.SIGKILL)
        assert await sites[0]._dead() == "killed by SIGKILL"
        await asyncio.gather(*(s.close() for s in sites))
        for site in sites[1:]:
            assert site.pid is not None and await server.status(site.pid) == 0
        await server.close()
        assert "node agent started" in (tmp_path / "s1.log").read_text()

    asyncio.run(scenario())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_preload_after_the_first_fork_is_refused(tmp_path) -> None:
    """Modules imported after a fork would not be shared: the server says so."""

    async def scenario() -> None:
        server = ForkServer.launch()
        site = LocalConnector("s0", log_path=tmp_path / "s0.log", forkserver=server)
        try:
            await site.start()
            reply = await server._request({"op": "preload", "modules": ["json"]})
            assert reply == {"error": "bad request"}
        finally:
            await site.close()
            await server.close()

    asyncio.run(scenario())


def test_a_preload_before_the_first_fork_is_imported(tmp_path) -> None:
    async def scenario() -> None:
        server = ForkServer.launch()
        try:
            reply = await server._request({"op": "preload", "modules": ["numpy", "os"]})
            assert reply == {"loaded": ["numpy"]}  # only libraries it may load for its sites
        finally:
            await server.close()

    asyncio.run(scenario())


def test_a_launched_server_is_stopped_by_a_run_that_has_no_use_for_it(tmp_path) -> None:
    """``fedflow run`` launches the server before it reads the study; a run whose sites are
    not forked (here: in-memory connectors) stops it before its first round, and it ends."""
    from fedflow.connectors.memory import MemoryConnector
    from fedflow.runtime import arun_study
    from fedflow.runtime.observer import Observer
    from fedflow.study import load_study
    from tests.helpers import SITES, copy_quickstart

    study = load_study(copy_quickstart(tmp_path))
    server = ForkServer.launch()
    assert server._proc is not None
    pid = server._proc.pid
    running: list[bool] = []

    class Rounds(Observer):
        def round_started(self, round: int) -> None:
            running.append(not _gone(pid))

    connectors = {name: MemoryConnector(name) for name in SITES}
    run = asyncio.run(
        arun_study(
            study, connectors=connectors, command=["test"], forkserver=server, observer=Rounds()
        )
    )
    assert run.status == "completed"
    assert running and not any(running)  # gone before the first round
    assert server._proc is None and _gone(pid)


def _fork_servers() -> list[int]:
    """The fork servers among this process's children (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"fedflow.node.forkserver" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_cli_stops_its_server_when_the_study_cannot_be_read(tmp_path) -> None:
    from fedflow import cli

    assert _fork_servers() == []
    (tmp_path / "study.toml").write_text("app = \n")  # not TOML
    code = cli.main(["run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "run")])
    assert code != 0
    assert _fork_servers() == []  # launched first thing, then stopped and reaped
