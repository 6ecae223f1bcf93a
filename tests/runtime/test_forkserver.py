"""The local fork server: forked agents speak the protocol, and their exit statuses are known."""

from __future__ import annotations

import asyncio
import os
import signal

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
