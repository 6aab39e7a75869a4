"""In-process transport for unit tests of the SCP logic: no broker, same contract.

A responder function plays the consumer: it gets each :class:`~bridge.transport.Outbound`
and returns the reply bodies, or raises a :class:`~bridge.errors.BridgeError` to simulate
a broker failure. Never the only test of a feature: the real broker tests are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from bridge.errors import ReplyTimeout
from bridge.transport import Outbound

Responder = Callable[[Outbound], Awaitable[Sequence[bytes]]]


class MemoryCall:
    def __init__(self, correlation_id: str, replies: Sequence[bytes]) -> None:
        self._id = correlation_id
        self._replies = list(replies)
        self.closed = False

    @property
    def correlation_id(self) -> str:
        return self._id

    async def next_replies(self, timeout: float, limit: int = 1) -> list[bytes]:
        if not self._replies:
            await asyncio.sleep(timeout)
            raise ReplyTimeout(f"no reply within {timeout:g} s")
        taken, self._replies = self._replies[:limit], self._replies[limit:]
        return taken

    async def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """Implements :class:`bridge.transport.Transport` with a responder function."""

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self.sent: list[Outbound] = []
        self.notified: list[Outbound] = []
        self.calls: list[MemoryCall] = []

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, message: Outbound) -> MemoryCall:
        self.sent.append(message)
        call = MemoryCall(message.correlation_id, await self._responder(message))
        self.calls.append(call)
        return call

    async def publish(self, message: Outbound) -> None:
        self.notified.append(message)
