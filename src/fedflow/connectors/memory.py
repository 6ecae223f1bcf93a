"""An in-memory connector for tests: the node agent (or any handler) runs in this process.

Like httpx's ``MockTransport``, it takes a plain function from message to reply, so tests can
script sites that fail, stall or misbehave without processes or monkeypatching::

    MemoryConnector("berlin")                                  # a real NodeAgent, in memory
    MemoryConnector("slow", handler=lambda msg: None)          # never answers (timeouts)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fedflow.connectors.base import Connector
from fedflow.errors import SiteError, SiteTimeout
from fedflow.node.agent import NodeAgent
from fedflow.wire import HEADER_SIZE, Message, MessageCodec

__all__ = ["MemoryConnector"]

Handler = Callable[[Message], Message | None]


class MemoryConnector(Connector):
    """Deliver messages to ``handler`` (default: a fresh ``NodeAgent``) and queue its replies.

    A handler returning None sends no reply; a handler raising ends the "process" (the next
    ``receive`` raises SiteError, as when an agent dies).
    """

    kind = "memory"

    def __init__(self, site: str, handler: Handler | None = None, **kwargs: Any) -> None:
        super().__init__(site, **kwargs)
        self.handler = handler
        self.codec = MessageCodec()
        self.received: list[Message] = []
        self._replies: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.started = False
        self.closed = False

    async def start(self) -> None:
        if self.handler is None:
            self.handler = NodeAgent(self.site).handle
        self.started = True

    async def send(self, payload: bytes) -> None:
        if not self.started or self.closed:
            raise SiteError("node agent is not running", site=self.site)
        self.bytes_sent += HEADER_SIZE + len(payload)
        message = self.codec.decode(payload)
        self.received.append(message)
        assert self.handler is not None
        try:
            reply = self.handler(message)
        except Exception as exc:
            self._replies.put_nowait(SiteError(f"node agent exited ({exc})", site=self.site))
            return
        if reply is not None:
            self._replies.put_nowait(self.codec.encode(reply))

    async def receive(self, timeout: float | None = None) -> bytes:
        try:
            item = await asyncio.wait_for(self._replies.get(), timeout)
        except TimeoutError:
            raise SiteTimeout(f"no answer within {timeout:g} s", site=self.site) from None
        if isinstance(item, BaseException):
            raise item
        self.bytes_received += HEADER_SIZE + len(item)
        return item

    async def close(self) -> None:
        self.closed = True
