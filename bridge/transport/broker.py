"""RabbitMQ glue written once: connecting, declaring the exchange, reconnecting, and what
AMQP failures mean.

Every connection the project opens comes from :func:`connect` and is named by
:func:`connection_name`; every declaration of the topic exchange goes through
:func:`declare_exchange`. :func:`publishing` turns a publish's AMQP failures into the
bridge's errors; :data:`CONNECT_ERRORS` is what a connect or declare attempt may raise.
One reconnect policy (:data:`RECONNECT`) paces both the loops written here
(:func:`keep_trying`) and aio-pika's robust connections.

Everything here runs in an event loop (aio-pika). URL redaction is pure and lives in
:mod:`bridge.transport.urls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, overload

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aiormq.abc import FieldTable

from bridge.errors import BrokerUnavailable, Unroutable, describe_error
from bridge.transport import urls

T = TypeVar("T")

CONNECT_ERRORS = (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError)
"""What an attempt to connect, open a channel or declare may raise for a broker that is
down, refuses us or goes away meanwhile."""


class Nacked(BrokerUnavailable):
    """The broker refused a confirmed publish (``basic.nack``)."""


class NotConfirmed(BrokerUnavailable):
    """The broker did not confirm a publish in time (a memory or disk alarm blocks it)."""


# -- reconnecting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``first`` seconds, doubling up to ``cap``."""

    first: float
    cap: float

    def delays(self) -> Iterator[float]:
        """The delays before each retry, without end."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


RECONNECT: Final = Backoff(first=0.2, cap=5.0)
"""The one reconnect policy. aio-pika's robust connections retry at a fixed interval: the
policy's cap, which is where the backoff settles."""


async def keep_trying(
    attempt: Callable[[], Awaitable[T]],
    *,
    url: str,
    trouble: str,
    logger: logging.Logger,
    after_failure: Callable[[], Awaitable[None]],
    policy: Backoff = RECONNECT,
) -> T:
    """Await ``attempt()`` until it returns, pausing by ``policy`` between tries.

    A failure (one of :data:`CONNECT_ERRORS`) is logged as ``<trouble> at <url, its
    password redacted> (<reason>); retrying in <delay> s``, then ``after_failure()``
    releases what the attempt left half open. Other exceptions propagate; cancel the
    task to stop trying.
    """
    target = urls.redact(url)
    secret = urls.password(url)
    delays = policy.delays()
    while True:
        try:
            return await attempt()
        except CONNECT_ERRORS as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # aio-pika and aiormq turn a cancel in mid-connect into a connection error:
                # the cancel is what happened, and retrying would outlive it.
                raise asyncio.CancelledError from exc
            delay = next(delays)
            reason = describe_error(exc)
            if secret:
                reason = reason.replace(secret, "***")
            logger.warning("%s at %s (%s); retrying in %.1f s", trouble, target, reason, delay)
        await after_failure()
        await asyncio.sleep(delay)


async def ready_within(ready: asyncio.Event, timeout: float) -> bool:
    """Wait until ``ready`` is set; False when ``timeout`` seconds pass first."""
    try:
        await asyncio.wait_for(ready.wait(), timeout)
    except TimeoutError:
        return False
    return True


# -- connecting and declaring -------------------------------------------------------------


def connection_name(purpose: str) -> str:
    """``dicom-bridge <purpose> <host> pid <pid>``: how a connection shows in the
    management UI, naming the process it belongs to."""
    return f"dicom-bridge {purpose} {socket.gethostname()} pid {os.getpid()}"


@overload
async def connect(
    url: str,
    *,
    purpose: str,
    robust: Literal[False] = False,
    timeout: float | None = None,
    heartbeat: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AbstractConnection: ...


@overload
async def connect(
    url: str,
    *,
    purpose: str,
    robust: Literal[True],
    timeout: float | None = None,
    heartbeat: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AbstractRobustConnection: ...


@overload
async def connect(
    url: str,
    *,
    purpose: str,
    robust: bool,
    timeout: float | None = None,
    heartbeat: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AbstractConnection: ...


async def connect(
    url: str,
    *,
    purpose: str,
    robust: bool = False,
    timeout: float | None = None,
    heartbeat: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AbstractConnection:
    """One connection named for ``purpose``, connected within ``timeout`` seconds (None:
    the socket's own limits). ``heartbeat`` seconds, None for the broker's proposal.

    ``robust``: aio-pika reconnects it by itself after it was once connected, every
    ``RECONNECT.cap`` seconds, and restores its channels, queues and consumers; the first
    attempt fails like a plain one. Raises one of :data:`CONNECT_ERRORS`; whatever the
    outcome, a connection that did not come up is closed (also when the caller is
    cancelled meanwhile, so a robust one stops retrying).
    """
    target = make_url(url, heartbeat=heartbeat)
    properties: FieldTable = {"connection_name": connection_name(purpose)}
    connection: AbstractConnection
    if robust:
        connection = aio_pika.RobustConnection(
            target,
            ssl_context=ssl_context,
            client_properties=properties,
            reconnect_interval=RECONNECT.cap,
        )
    else:
        connection = aio_pika.Connection(
            target, ssl_context=ssl_context, client_properties=properties
        )
    try:
        if timeout is None:
            await connection.connect()
        else:
            await asyncio.wait_for(connection.connect(timeout=timeout), timeout + 1)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)
        raise
    return connection


async def declare_exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    """The exchange as everyone declares it: topic, durable. Raises
    ``aiormq.exceptions.ChannelPreconditionFailed`` when it exists with another type or
    other flags."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


@dataclass(frozen=True)
class WorkChannels:
    """The channels of a process that takes work from a queue and answers it (the consumer
    SDK, the commander)."""

    work: AbstractChannel
    """Deliveries, at most ``prefetch`` unacknowledged; queues are declared on it."""
    replies: AbstractChannel
    """Publisher confirms on, a returned (unroutable) reply raised."""
    exchange: AbstractExchange
    """The topic exchange, declared on ``work``."""


async def work_channels(
    connection: AbstractConnection, *, prefetch: int, exchange: str
) -> WorkChannels:
    """Open the work and reply channels on ``connection`` and declare ``exchange``."""
    work = await connection.channel()
    await work.set_qos(prefetch_count=prefetch)
    replies = await connection.channel(publisher_confirms=True, on_return_raises=True)
    return WorkChannels(work, replies, await declare_exchange(work, exchange))


# -- publishing ---------------------------------------------------------------------------


def reply_message(body: bytes, correlation_id: str | None, **properties: Any) -> aio_pika.Message:
    """A reply to ``reply_to``: JSON, correlated, transient (the requester's reply queue is
    exclusive: it dies with the requester). ``properties``: more AMQP properties."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        correlation_id=correlation_id,
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        **properties,
    )


@contextlib.contextmanager
def publishing(routing_key: str, timeout: float, *, what: str = "request") -> Iterator[None]:
    """Translate the failures of the confirmed, mandatory publish inside the block.

    Raises :class:`~bridge.errors.Unroutable` when the broker returned the message (no
    queue bound for ``routing_key``), :class:`Nacked` when it refused it,
    :class:`NotConfirmed` when no confirm came within ``timeout`` seconds and
    :class:`~bridge.errors.BrokerUnavailable` when the channel or connection failed.
    ``what`` names the message in the nack's text.
    """
    try:
        yield
    except aiormq.exceptions.PublishError:
        raise Unroutable(f"no queue bound for {routing_key}") from None
    except aiormq.exceptions.DeliveryError:
        raise Nacked(f"broker refused the {what} (nack)") from None
    except TimeoutError:
        raise NotConfirmed(f"broker did not confirm within {timeout:g} s") from None
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise BrokerUnavailable(f"publish failed: {type(exc).__name__}") from None


# -- explaining failures ------------------------------------------------------------------


def failure_reason(exc: BaseException, secret: str | None = None) -> str:
    """One line about a connection failure, never containing ``secret``."""
    args = exc.args
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        text = "authentication refused (user or password wrong)"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        # aiormq's AMQPConnectionError(errno, message) from the socket error
        text = os.strerror(args[0]) if args[0] > 0 else args[1]
    else:
        text = " ".join(str(args[0] if args else exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text[:200]


def channel_error_text(exc: BaseException) -> str:
    """The broker's reply text of a channel error, without the code name in front."""
    text = str(exc.args[0] if exc.args else "") or type(exc).__name__
    return text.split(" - ", 1)[-1][:200]
