"""The commander: consumes commands from the broker, performs them as an SCU, replies.

Lives in the event loop; pynetdicom work runs in a bounded thread pool
(``command_concurrency`` threads), entered with ``loop.run_in_executor``, and the worker
threads come back only through :class:`~bridge.transport.seam.Seam` to publish replies (the C-FIND
matches as they arrive). aio-pika objects never leave the loop; pynetdicom objects never
enter it.

Per command: parse and decode in a worker thread; a command past its deadline, for an
unknown destination, or that fails the schema is answered with an error at once; else it
waits for one of the destination's ``command_pool_size`` slots and is performed on a
pooled association (:mod:`bridge.scu`). Every command gets exactly one final reply on its
``reply_to`` (C-FIND: one reply per match first). Then it is acked, or rejected without
requeue when it can never succeed (bad command or dataset, unknown destination, expired,
permanently refused, internal error): the commands queue is a quorum queue whose
dead-letter exchange keeps it. A commander that dies mid-command leaves it to be
redelivered (at-least-once; the quorum queue's ``x-delivery-limit`` dead-letters a command
that keeps killing its consumers); ``id`` is the idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import ConfigDict, Field
from pydicom.dataset import Dataset

from bridge.config import AETable, CommandOptions
from bridge.errors import BridgeError, BrokerUnavailable, Unroutable
from bridge.protocol.command import (
    Command,
    CommandError,
    Reason,
    decode_datasets,
    encode_response_dataset,
    error_body,
    parse_command,
    reply_body,
)
from bridge.protocol.model import Service
from bridge.scu.perform import part10_file, perform
from bridge.scu.pool import AssociationPool, Peer
from bridge.transport import broker
from bridge.transport.bulkstore import BulkStore
from bridge.transport.seam import Seam

log = logging.getLogger(__name__)


class CommanderSettings(CommandOptions):
    """Settings of the commander: the ``command*`` options the bridge's settings share
    (:class:`bridge.config.CommandOptions`), and the few others it needs, which have the
    same name and meaning there (:meth:`from_settings` picks them all by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "dicom"
    ae_title: str = Field("DICOM-BRIDGE", min_length=1, max_length=16)
    publish_timeout: float = Field(5.0, gt=0)
    bulk_threshold: int = Field(1 << 20, ge=0)
    max_message_size: int = Field(16 << 20, ge=4096)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> CommanderSettings:
        """The commander's settings from any object with same-named attributes (the
        bridge's settings), then ``overrides``."""
        values = {
            name: getattr(settings, name)
            for name in cls.model_fields
            if getattr(settings, name, None) is not None
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class CommanderStats:
    """Counters an operator (and the tests) can read."""

    received: int = 0
    succeeded: int = 0
    """Commands the peer answered (whatever the status)."""
    failed: dict[str, int] = field(default_factory=dict)
    """Commands without a (complete) DIMSE answer, by reason."""
    replies: int = 0
    undeliverable_replies: int = 0
    acked: int = 0
    dead_lettered: int = 0
    requeued: int = 0


class Commander:
    """Consumes the commands queue and performs each command on a pooled association."""

    def __init__(
        self,
        settings: CommanderSettings,
        *,
        ae_table: AETable | None = None,
        store: BulkStore | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._ssl_context = ssl_context
        self.ae_table = ae_table or AETable()
        self.store = store
        self.stats = CommanderStats()
        self.pool = AssociationPool(
            settings.ae_title,
            per_destination_limit=settings.command_pool_size,
            idle_timeout=settings.command_idle_timeout,
            acse_timeout=settings.command_acse_timeout,
            dimse_timeout=settings.command_dimse_timeout,
            network_timeout=settings.command_network_timeout,
            retries=settings.command_retries,
            retry_delay=settings.command_retry_delay,
            retry_max_delay=settings.command_retry_max_delay,
        )
        self._executor = ThreadPoolExecutor(
            settings.command_concurrency, thread_name_prefix="commander"
        )
        self._slots: dict[Peer, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._reply_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._seam: Seam | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def ready(self) -> bool:
        connection = self._connection
        return (
            self._consumer_tag is not None and connection is not None and not connection.is_closed
        )

    async def start(self) -> None:
        """Begin connecting in the background and return at once: an unreachable broker
        (or a declaration it refuses, such as a commands queue declared before with other
        arguments) is logged and retried with the capped backoff of
        :data:`bridge.transport.broker.RECONNECT`, never raised. Once connected,
        aio-pika's robust connection reconnects by itself."""
        self._seam = Seam(asyncio.get_running_loop())
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._connect_loop(), name="commander")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until commands are consumed; False when ``timeout`` seconds pass first."""
        return await broker.ready_within(self._ready, timeout)

    async def _connect_loop(self) -> None:
        await broker.keep_trying(
            self._connect,
            url=self.settings.amqp_url,
            trouble=f"commands: cannot consume {self.settings.commands_queue}",
            logger=log,
            after_failure=self._disconnect,
        )
        self._ready.set()

    async def _connect(self) -> None:
        s = self.settings
        connection = await broker.connect(
            s.amqp_url, purpose="commander", robust=True, ssl_context=self._ssl_context
        )
        self._connection = connection
        channels = await broker.work_channels(
            connection, prefetch=s.command_concurrency, exchange=s.exchange
        )
        channel, exchange, self._reply_channel = channels.work, channels.exchange, channels.replies
        await self._declare_dead_letters(channel)
        queue = await channel.declare_queue(
            s.commands_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": s.command_delivery_limit,
                "x-dead-letter-exchange": s.command_dead_letter_exchange,
            },
        )
        await queue.bind(exchange, s.commands_binding)
        self._queue = queue
        self._consumer_tag = await queue.consume(self._on_message)
        log.info(
            "performing commands from queue %s (binding %s on %r) as %s",
            s.commands_queue,
            s.commands_binding,
            s.exchange,
            s.ae_title,
        )

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._reply_channel = None
        self._queue = None
        self._consumer_tag = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2.0)

    async def _declare_dead_letters(self, channel: AbstractChannel) -> AbstractExchange:
        s = self.settings
        dead = await channel.declare_exchange(
            s.command_dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        if s.command_dead_letter_queue:
            queue = await channel.declare_queue(
                s.command_dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(dead)
        return dead

    async def close(self) -> None:
        """Stop consuming, let commands in progress finish within
        ``command_drain_timeout`` (then abort their associations), close the pool and
        the connection. Commands not finished go back to the queue."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        queue, tag = self._queue, self._consumer_tag
        self._consumer_tag = None
        if queue is not None and tag is not None:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        if self._tasks:
            _, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.command_drain_timeout
            )
            if pending:
                log.warning("stop: aborting %d commands still in progress", len(pending))
                await asyncio.to_thread(self.pool.abort_all)
                await asyncio.wait(pending, timeout=5.0)
        await self._disconnect()
        await asyncio.to_thread(self.pool.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one command ----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closing:
            self.stats.requeued += 1
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await task

    async def _process(self, message: AbstractIncomingMessage) -> None:
        self.stats.received += 1
        loop = asyncio.get_running_loop()
        default_id = message.correlation_id or message.message_id
        command: Command | None = None
        try:
            command = await loop.run_in_executor(
                self._executor, lambda: parse_command(message.body, default_id=default_id)
            )
            peer = self._resolve(command)
            self._check_deadline(command)
            async with self._slot(peer):
                self._check_deadline(command)
                outcome = await loop.run_in_executor(
                    self._executor, self._perform, command, peer, message
                )
        except CommandError as exc:
            outcome = exc
            self._log_refusal(command, exc, message)
            await self._reply_error(message, command, exc)
        except Exception:
            log.exception("command failed: internal error", extra=_ids(message))
            outcome = CommandError(Reason.INTERNAL, "bridge internal error", permanent=True)
            await self._reply_error(message, command, outcome)
        await self._settle(message, outcome)

    async def _reply_error(
        self, message: AbstractIncomingMessage, command: Command | None, error: CommandError
    ) -> None:
        try:
            await self._publish(message, _error_reply(message, command, error))
        except BridgeError as exc:
            log.warning("error reply not sent: %s", exc.message, extra=_ids(message))

    @staticmethod
    def _log_refusal(
        command: Command | None, error: CommandError, message: AbstractIncomingMessage
    ) -> None:
        what = command.service.dimse_name if command else "command"
        log.warning(
            "%s not performed (%s): %s", what, error.reason.value, error.message,
            extra=_ids(message),
        )  # fmt: skip

    def _resolve(self, command: Command) -> Peer:
        destination = command.destination
        host, port = destination.host, destination.port
        if host is None or port is None:
            entry = self.ae_table.lookup(destination.ae_title)
            if entry is None:
                raise CommandError(
                    Reason.UNKNOWN_DESTINATION,
                    f"{destination.ae_title} is not in the AE table and the command names "
                    "no host and port",
                )
            host, port = entry.host, entry.port
        return Peer(host, port, destination.ae_title, command.calling_ae or self.settings.ae_title)

    @staticmethod
    def _check_deadline(command: Command) -> None:
        if command.expired(datetime.now(UTC)):
            raise CommandError(Reason.EXPIRED, "deadline passed before the command was sent")

    def _slot(self, peer: Peer) -> asyncio.Semaphore:
        slot = self._slots.get(peer)
        if slot is None:
            slot = self._slots[peer] = asyncio.Semaphore(self.settings.command_pool_size)
        return slot

    async def _settle(self, message: AbstractIncomingMessage, outcome: CommandError | None) -> None:
        if outcome is None:
            self.stats.succeeded += 1
        else:
            reason = outcome.reason.value
            self.stats.failed[reason] = self.stats.failed.get(reason, 0) + 1
        try:
            if outcome is not None and outcome.permanent:
                await message.reject(requeue=False)
                self.stats.dead_lettered += 1
            else:
                await message.ack()
                self.stats.acked += 1
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.MessageProcessError) as exc:
            # The channel went away: the broker redelivers the command.
            log.warning("could not settle a command (%s)", type(exc).__name__, extra=_ids(message))

    # -- in a worker thread ---------------------------------------------------------------

    def _perform(
        self, command: Command, peer: Peer, message: AbstractIncomingMessage
    ) -> CommandError | None:
        """Decode, send, reply; returns the error the final reply carried, if any."""
        started = time.monotonic()
        read: list[str] = []
        final_sent = False
        last_status: int | None = None

        def fetch(uri: str) -> bytes:
            if self.store is None:
                raise CommandError(Reason.BAD_DATASET, "BulkDataURI but no bulk data store")
            data = self.store.get(uri)
            read.append(uri)
            return data

        def emit(status: Dataset, dataset: Dataset | None, final: bool) -> None:
            nonlocal final_sent, last_status
            body = self._response_body(command, status, dataset, final)
            self._publish_from_thread(message, body)
            final_sent = final
            last_status = int(status.Status)

        outcome: CommandError | None = None
        try:
            datasets = decode_datasets(command, fetch)
            if command.part10 is not None and command.part10.uri is not None:
                read.append(command.part10.uri)  # a claim-check file, read where it is
            with part10_file(command, self.store) as stored:
                perform(
                    self.pool,
                    command,
                    peer,
                    datasets,
                    emit,
                    give_up_at=_give_up_at(command),
                    part10=stored,
                )
        except CommandError as exc:
            outcome = exc
        except BridgeError as exc:  # the broker failed while streaming: no reply possible
            log.warning("command interrupted: %s", exc.message, extra=_ids(message))
            outcome = CommandError(Reason.UNAVAILABLE, exc.message, permanent=False)
            final_sent = True
        except Exception:
            log.exception("%s failed: internal error", command.service.dimse_name)
            outcome = CommandError(Reason.INTERNAL, "bridge internal error", permanent=True)
        if outcome is not None and not final_sent:
            body = reply_body(command.id, command.service, error=outcome)
            with contextlib.suppress(BridgeError):
                self._publish_from_thread(message, body)
        if self.store is not None and not (outcome is not None and outcome.permanent):
            for uri in read:  # the reader deletes; a dead-lettered command keeps its files
                self.store.delete(uri)
        self._log(command, peer, started, last_status, outcome)
        return outcome

    def _response_body(
        self, command: Command, status: Dataset, dataset: Dataset | None, final: bool
    ) -> bytes:
        try:
            document = encode_response_dataset(dataset, self._sink)
        except CommandError as exc:
            return reply_body(command.id, command.service, final=final, status=status, error=exc)
        body = reply_body(command.id, command.service, final=final, status=status, dataset=document)
        if len(body) > self.settings.max_message_size:
            error = CommandError(
                Reason.BAD_DATASET, "response dataset larger than max_message_size", permanent=False
            )
            return reply_body(command.id, command.service, final=final, status=status, error=error)
        return body

    def _sink(self, tag: int, vr: str, value: bytes) -> str | None:
        if self.store is None or len(value) <= self.settings.bulk_threshold:
            return None
        return self.store.put(value)

    def _publish_from_thread(self, message: AbstractIncomingMessage, body: bytes) -> None:
        assert self._seam is not None
        self._seam.run(self._publish(message, body), self.settings.publish_timeout + 1.0)

    def _log(
        self,
        command: Command,
        peer: Peer,
        started: float,
        status: int | None,
        outcome: CommandError | None,
    ) -> None:
        elapsed = (time.monotonic() - started) * 1000
        extra = {"correlation_id": command.id}
        if outcome is None:
            log.info(
                "%s to %s: 0x%04X in %.0f ms",
                command.service.dimse_name, peer, status or 0, elapsed, extra=extra,
            )  # fmt: skip
        else:
            log.warning(
                "%s to %s failed (%s): %s",
                command.service.dimse_name, peer, outcome.reason.value, outcome.message,
                extra=extra,
            )  # fmt: skip

    # -- in the loop ----------------------------------------------------------------------

    async def _publish(self, message: AbstractIncomingMessage, body: bytes) -> None:
        """Publish a reply to the command's ``reply_to`` (mandatory, confirmed). A gone
        requester is counted, not an error; a broker failure raises BrokerUnavailable."""
        channel = self._reply_channel
        if not message.reply_to:
            return
        if channel is None or channel.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        timeout = self.settings.publish_timeout
        try:
            with broker.publishing(message.reply_to, timeout, what="reply"):
                await channel.default_exchange.publish(
                    broker.reply_message(
                        body, message.correlation_id, type="command-reply", app_id="dicom-bridge"
                    ),
                    routing_key=message.reply_to,
                    mandatory=True,
                    timeout=timeout,
                )
        except Unroutable:
            self.stats.undeliverable_replies += 1
            log.warning("requester gone: command reply not deliverable", extra=_ids(message))
            return
        self.stats.replies += 1


def _give_up_at(command: Command) -> float | None:
    if command.deadline is None:
        return None
    remaining = (command.deadline - datetime.now(UTC)).total_seconds()
    return time.monotonic() + remaining


def _error_reply(
    message: AbstractIncomingMessage, command: Command | None, error: CommandError
) -> bytes:
    command_id = command.id if command else (message.correlation_id or message.message_id or "")
    service: Service | None = command.service if command else None
    return error_body(command_id or "-", service, error)


def _ids(message: AbstractIncomingMessage) -> dict[str, str]:
    return {"correlation_id": message.correlation_id or ""}
