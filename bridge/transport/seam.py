"""The one place where pynetdicom's handler threads enter the asyncio loop.

pynetdicom runs every association in a thread of its own; aio-pika lives in the event
loop. Handler threads never touch aio-pika objects: they hand a coroutine to
:meth:`Seam.run` and block on its result, so the loop keeps heartbeats and other
associations flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from bridge.errors import BrokerUnavailable, ReplyTimeout

T = TypeVar("T")


class Seam:
    """Runs coroutines on ``loop`` for callers in other threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait at most ``timeout`` seconds for its result.

        The coroutine keeps its own deadlines; ``timeout`` is the backstop that makes sure
        a handler thread never hangs. On expiry the coroutine is cancelled (a
        ``Future.result`` timeout alone would leave it running) and
        :class:`~bridge.errors.ReplyTimeout` is raised. Must not be called from the loop's
        own thread: that would deadlock.
        """
        if self._loop.is_closed():
            coro.close()
            raise BrokerUnavailable("bridge is shutting down")
        if _running_loop() is self._loop:
            coro.close()
            raise RuntimeError("Seam.run called from the event loop thread")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # loop closed between the check and the call
            coro.close()
            raise BrokerUnavailable("bridge is shutting down") from exc
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ReplyTimeout(f"no answer within {timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise BrokerUnavailable("request cancelled: bridge is shutting down") from None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
