"""RabbitMQ transport (aio-pika): confirmed, mandatory publishes and one reply queue.

Lives entirely in the event loop thread. Two connections: one publishes requests (a
connection the broker blocks under a memory or disk alarm), the other consumes replies,
so a blocked publisher never stops replies from arriving. A supervisor task keeps both
up: on loss of either, every in-flight call fails at once with
:class:`~bridge.errors.BrokerUnavailable`, and it reconnects with the capped backoff of
:data:`bridge.transport.broker.RECONNECT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import uuid
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from bridge.errors import BrokerUnavailable, ReplyTimeout, Unroutable
from bridge.transport import Outbound, broker
from bridge.transport.urls import redact

log = logging.getLogger(__name__)


@dataclass
class TransportStats:
    """Counters an operator (and the tests) can read; :mod:`bridge.ops.metrics` exports them."""

    published: int = 0
    replies: int = 0
    late_replies: int = 0
    returned: int = 0
    nacked: int = 0
    publish_timeouts: int = 0
    connects: int = 0
    connection_losses: int = 0
    failed_on_loss: int = 0


_Item = bytes | BaseException


class AmqpCall:
    """Replies of one request, queued in arrival order."""

    def __init__(self, transport: AmqpTransport, correlation_id: str) -> None:
        self._transport = transport
        self._id = correlation_id
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()

    @property
    def correlation_id(self) -> str:
        return self._id

    def _deliver(self, item: _Item) -> None:
        self._queue.put_nowait(item)

    async def next_replies(self, timeout: float, limit: int = 1) -> list[bytes]:
        if self._queue.empty():
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                raise ReplyTimeout(f"no reply within {timeout:g} s") from None
        else:
            first = self._queue.get_nowait()
        items = [first]
        while len(items) < limit and not self._queue.empty():
            items.append(self._queue.get_nowait())
        bodies: list[bytes] = []
        for item in items:
            if isinstance(item, BaseException):
                if bodies:  # hand over what came before the failure; it raises next time
                    self._queue.put_nowait(item)
                    break
                raise item
            bodies.append(item)
        return bodies

    async def close(self) -> None:
        self._transport._forget(self._id)


class AmqpTransport:
    """The bridge's broker connection. Implements :class:`bridge.transport.Transport`."""

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        heartbeat: int = 20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._exchange_name = exchange
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        self._ssl_context = ssl_context
        self._calls: dict[str, AmqpCall] = {}
        self._exchange: AbstractExchange | None = None
        self._reply_queue_name = ""
        self._connections: list[AbstractConnection] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._ready = asyncio.Event()
        self.stats = TransportStats()

    # -- public ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    @property
    def blocked(self) -> bool:
        """True while the broker blocks the publishing connection (memory/disk alarm)."""
        if not self._connections:
            return False
        underlay = getattr(self._connections[0], "transport", None)
        connection = getattr(underlay, "connection", None)
        # aiormq keeps the state in a private event; read it defensively.
        unblocked = getattr(connection, "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    @property
    def reply_queue(self) -> str:
        return self._reply_queue_name

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="amqp-supervisor")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until connected; False when ``timeout`` seconds pass first."""
        return await broker.ready_within(self._ready, timeout)

    async def close(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._disconnect(BrokerUnavailable("bridge is shutting down"))

    async def call(self, message: Outbound) -> AmqpCall:
        exchange = self._exchange
        if exchange is None or not self.ready:
            raise BrokerUnavailable("not connected to the broker")
        call = AmqpCall(self, message.correlation_id)
        self._calls[message.correlation_id] = call
        try:
            await self._publish(exchange, message)
        except BaseException:
            self._forget(message.correlation_id)
            raise
        return call

    async def publish(self, message: Outbound) -> None:
        exchange = self._exchange
        if exchange is None or not self.ready:
            raise BrokerUnavailable("not connected to the broker")
        await self._publish(exchange, message, reply=False)

    # -- internals ------------------------------------------------------------------------

    def _forget(self, correlation_id: str) -> None:
        self._calls.pop(correlation_id, None)

    async def _publish(
        self, exchange: AbstractExchange, message: Outbound, *, reply: bool = True
    ) -> None:
        amqp_message = aio_pika.Message(
            message.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            if message.persistent
            else aio_pika.DeliveryMode.NOT_PERSISTENT,
            correlation_id=message.correlation_id,
            message_id=message.correlation_id,
            reply_to=self._reply_queue_name if reply else None,
            expiration=message.expiration,
            timestamp=message.timestamp,
            type=message.type,
            app_id="dicom-bridge",
            headers=dict(message.headers),
        )
        try:
            with broker.publishing(message.routing_key, self._publish_timeout):
                await exchange.publish(
                    amqp_message,
                    message.routing_key,
                    mandatory=message.mandatory,
                    timeout=self._publish_timeout,
                )
        except Unroutable:
            self.stats.returned += 1
            raise
        except broker.Nacked:
            self.stats.nacked += 1
            raise
        except broker.NotConfirmed:
            self.stats.publish_timeouts += 1
            raise
        self.stats.published += 1

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        # No await before _deliver: replies of one call keep their arrival order.
        correlation_id = message.correlation_id or ""
        call = self._calls.get(correlation_id)
        if call is None:
            self.stats.late_replies += 1
            log.warning(
                "late reply dropped: no request waits for it",
                extra={"correlation_id": correlation_id},
            )
            return
        self.stats.replies += 1
        call._deliver(message.body)

    async def _open(self, purpose: str) -> AbstractConnection:
        connection = await broker.connect(
            self._url,
            purpose=purpose,
            timeout=self._connect_timeout,
            heartbeat=self._heartbeat,
            ssl_context=self._ssl_context,
        )
        self._connections.append(connection)
        return connection

    async def _connect(self) -> list[asyncio.Future[bool] | asyncio.Task[bool]]:
        publisher = await self._open("publish")
        consumer = await self._open("replies")
        publish_channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await broker.declare_exchange(publish_channel, self._exchange_name)
        reply_channel = await consumer.channel(publisher_confirms=False)
        await reply_channel.set_qos(prefetch_count=0)
        # Named by us, not by the server: the name shows in the management UI which
        # process it belongs to. Exclusive: it vanishes with this connection, so a
        # consumer's mandatory reply to a dead bridge comes back as NO_ROUTE.
        queue_name = f"dicom-bridge.reply.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
        queue = await reply_channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        await queue.consume(self._on_reply, no_ack=True)
        self._reply_queue_name = queue_name
        self._exchange = exchange
        return [
            asyncio.ensure_future(publisher.closed()),
            asyncio.ensure_future(consumer.closed()),
            asyncio.ensure_future(_channel_closed(publish_channel)),
            asyncio.ensure_future(_channel_closed(reply_channel)),
        ]

    async def _disconnect(self, reason: BaseException) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._exchange = None
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call._deliver(reason)
        if calls:
            self.stats.failed_on_loss += len(calls)
            log.warning("failed %d in-flight requests: %s", len(calls), reason)
        connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2.0)
        if was_ready:
            log.info("disconnected from broker")

    async def _not_connected(self) -> None:
        await self._disconnect(BrokerUnavailable("not connected to the broker"))

    async def _supervise(self) -> None:
        target = redact(self._url)
        while not self._closing.is_set():
            watchers = await broker.keep_trying(
                self._connect,
                url=self._url,
                trouble="broker unreachable",
                logger=log,
                after_failure=self._not_connected,
            )
            self.stats.connects += 1
            self._ready.set()
            log.info(
                "connected to broker at %s, exchange %r, reply queue %s",
                target,
                self._exchange_name,
                self._reply_queue_name,
            )
            try:
                await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for watcher in watchers:
                    watcher.cancel()
            if self._closing.is_set():
                break
            self.stats.connection_losses += 1
            log.warning("lost connection to broker at %s; reconnecting", target)
            await self._disconnect(BrokerUnavailable("connection to the broker lost"))


async def _channel_closed(channel: AbstractChannel) -> bool:
    await channel.closed()
    return True
