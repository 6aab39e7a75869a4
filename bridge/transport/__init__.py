"""What the SCP needs from a message broker, independent of AMQP.

A request is published once; its replies come back correlated by ``correlation_id``. One
mechanism serves single-reply services (C-STORE, N-*) and streamed ones (C-FIND, C-GET,
C-MOVE): a :class:`Call` yields reply bodies one by one until its owner closes it. A
single-reply service reads the first one (:func:`request_reply`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bridge.protocol.envelope import HeaderValue


@dataclass(frozen=True)
class Outbound:
    """One request message, encoded already (the body is bytes of JSON)."""

    routing_key: str
    body: bytes
    correlation_id: str
    type: str
    """The service, ``c-store``, ``n-action``... (AMQP ``type`` property)."""
    timestamp: datetime
    expiration: float | None = None
    """Seconds the broker keeps the request before dropping it (the reply deadline)."""
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    persistent: bool = False
    """Written to disk by the broker (events and publish-only requests); requests that
    wait for a reply are transient: useless after their deadline anyway."""
    mandatory: bool = True
    """Returned by the broker, and so failed, when no queue is bound for it."""


class Call(Protocol):
    """An outstanding request; replies arrive in the order consumers sent them."""

    @property
    def correlation_id(self) -> str: ...

    async def next_replies(self, timeout: float, limit: int = 1) -> list[bytes]:
        """The bodies of the next replies: at least one, at most ``limit``, without waiting
        for more once one has arrived (a stream's backlog comes in one hop).

        Raises :class:`bridge.errors.ReplyTimeout` when none arrives within ``timeout``
        seconds, :class:`bridge.errors.BrokerUnavailable` when the connection is lost.
        """
        ...

    async def close(self) -> None:
        """Forget the call: replies that arrive later are dropped and counted as late."""
        ...


class Transport(Protocol):
    """A broker connection shared by every association of one bridge process."""

    @property
    def ready(self) -> bool:
        """True while requests can be published and replies received."""
        ...

    async def start(self) -> None:
        """Begin connecting in the background; never raises for an unreachable broker."""
        ...

    async def close(self) -> None: ...

    async def call(self, message: Outbound) -> Call:
        """Publish ``message`` (mandatory, confirmed) and return the call awaiting replies.

        Raises :class:`bridge.errors.Unroutable` when no queue is bound for the routing
        key and :class:`bridge.errors.BrokerUnavailable` when the broker is not connected
        or does not confirm in time.
        """
        ...

    async def publish(self, message: Outbound) -> None:
        """Publish without awaiting replies (events, notices, publish-only requests),
        confirmed; ``message.mandatory`` decides whether an unroutable message fails.

        Raises :class:`bridge.errors.Unroutable` and
        :class:`bridge.errors.BrokerUnavailable` like :meth:`call`.
        """
        ...


async def request_reply(transport: Transport, message: Outbound, timeout: float) -> bytes:
    """Publish ``message`` and return the first reply's body, within ``timeout`` seconds."""
    call = await transport.call(message)
    try:
        (body,) = await call.next_replies(timeout)
        return body
    finally:
        await call.close()
