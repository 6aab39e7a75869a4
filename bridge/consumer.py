"""SDK for consumers written in Python: register a function per service, run.

    from bridge.consumer import Consumer, Request

    app = Consumer("amqp://guest:guest@127.0.0.1:5672/", queue="archive")

    @app.on("c-store")
    def store(request: Request) -> int:
        request.dataset.save_as(...)   # a pydicom Dataset
        return 0x0000

    app.run_forever()

The SDK declares the queue (a quorum queue unless told otherwise), binds it for every
registered service, decodes envelopes, calls the function, replies on ``reply_to`` with
the request's ``correlation_id`` and acks. A function returns a status (``int``), a
``(status, dataset)`` pair, or a :class:`Response` with status elements. Plain functions
run in worker threads; ``async def`` functions run on the loop.

C-FIND handlers return or yield matches; C-GET and C-MOVE handlers return the instances
(Datasets or file paths) or a :class:`Retrieval`; see :mod:`bridge.replies`. When the
peer cancels, the bridge publishes a cancel notice; the SDK stops the handler's iteration
and sends nothing more for that request. Bulk data above ``bulk_threshold`` travels through
the claim-check directory ``bulk_dir`` (shared with the bridge), both ways.

Delivery: a request is acked after its reply is confirmed by the broker, so a consumer
that dies mid-request leaves it to another consumer (at-least-once; ``Request.id`` is the
idempotency key). Requests past their deadline are acked without a reply: the bridge has
answered the peer already. A request a quorum queue has delivered ``max_deliveries``
times already (``x-delivery-count``: its consumers died on it) is answered with a failure
and rejected without requeue, so the queue's dead-letter settings take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydicom.dataset import Dataset

from bridge import codec, dicomjson, tracing
from bridge.bulkstore import DirectoryStore, read_uri
from bridge.errors import CodecError, Failure
from bridge.model import Service, routing_word
from bridge.replies import (
    BulkSink,
    Response,
    Retrieval,
    find_replies,
    retrieve_replies,
    to_response,
)

__all__ = ["Consumer", "Request", "Response", "Retrieval"]

log = logging.getLogger(__name__)

STREAM_WINDOW = 256
"""Replies a streamed handler may produce ahead of their publication."""


class Request:
    """One DIMSE request as a consumer sees it. Datasets decode on first access."""

    def __init__(self, envelope: dict[str, Any], headers: Mapping[str, Any] | None = None) -> None:
        self.envelope = envelope
        self.service = Service(envelope["service"])
        self.headers: Mapping[str, Any] = headers or {}
        """The AMQP headers: routing facts, CloudEvents attributes, ``traceparent``."""

    @property
    def id(self) -> str:
        """Unique per DIMSE request; the same on redelivery: use it to deduplicate."""
        return str(self.envelope["id"])

    @property
    def command(self) -> dict[str, Any]:
        """The request's command fields (``message_id``, ``affected_sop_instance_uid``...)."""
        return dict(self.envelope.get("request", {}))

    @property
    def association(self) -> dict[str, Any]:
        return dict(self.envelope.get("association", {}))

    @property
    def calling_ae(self) -> str:
        return str(self.association.get("calling_ae", ""))

    @property
    def sop_class_uid(self) -> str:
        return str(self.envelope.get("sop_class_uid", ""))

    @property
    def deadline(self) -> datetime | None:
        text = self.envelope.get("deadline")
        return datetime.fromisoformat(text) if isinstance(text, str) else None

    def _dataset(self, name: str) -> Dataset | None:
        document = self.envelope.get(name)
        if document is None:
            return None
        return dicomjson.json_to_dataset(document, bulk_data=read_uri)

    @property
    def query_model(self) -> str | None:
        """C-FIND/C-GET/C-MOVE information model: ``study-root``, ``modality-worklist``..."""
        model = self.envelope.get("query_model")
        return model if isinstance(model, str) else None

    @property
    def move_destination(self) -> str:
        return str(self.command.get("move_destination", ""))

    @cached_property
    def dataset(self) -> Dataset | None:
        """C-STORE Data Set."""
        return self._dataset("dataset")

    @cached_property
    def file_meta(self) -> Dataset | None:
        """C-STORE File Meta Information (group 0002)."""
        return self._dataset("file_meta")

    @cached_property
    def event_information(self) -> Dataset | None:
        return self._dataset("event_information")

    @cached_property
    def action_information(self) -> Dataset | None:
        return self._dataset("action_information")

    @cached_property
    def attribute_list(self) -> Dataset | None:
        return self._dataset("attribute_list")

    @cached_property
    def modification_list(self) -> Dataset | None:
        return self._dataset("modification_list")

    @cached_property
    def identifier(self) -> Dataset | None:
        return self._dataset("identifier")


HandlerResult = int | Response | tuple[int, Dataset | None] | Iterable[Any] | Retrieval
Handler = Callable[[Request], HandlerResult | Awaitable[HandlerResult]]


@dataclass(frozen=True)
class Registration:
    service: Service
    handler: Handler
    sop_class: str = "*"
    calling_ae: str = "*"

    @property
    def binding(self) -> str:
        sop = "*" if self.sop_class == "*" else routing_word(self.sop_class.replace(".", "_"))
        ae = "*" if self.calling_ae == "*" else routing_word(self.calling_ae)
        return f"{self.service.value}.{sop}.{ae}"

    def matches(self, request: Request) -> bool:
        return (
            request.service is self.service
            and self.sop_class in ("*", request.sop_class_uid)
            and self.calling_ae in ("*", request.calling_ae)
        )


@dataclass
class ConsumerStats:
    handled: int = 0
    failed: int = 0
    stale: int = 0
    cancelled: int = 0
    poison: int = 0
    undeliverable_replies: int = 0
    by_service: dict[str, int] = field(default_factory=dict)


class Consumer:
    """Consumes requests from one queue and replies to the bridge."""

    def __init__(
        self,
        amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
        exchange: str = "dicom",
        queue: str = "dicom-bridge.consumer",
        *,
        prefetch: int = 32,
        queue_type: Literal["quorum", "classic"] = "quorum",
        exclusive: bool = False,
        bulk_dir: Path | None = None,
        bulk_threshold: int = 1 << 20,
        max_deliveries: int = 5,
        queue_arguments: Mapping[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.queue = queue
        self.prefetch = prefetch
        self.queue_type: Literal["quorum", "classic"] = "classic" if exclusive else queue_type
        self.exclusive = exclusive
        self.registrations: list[Registration] = []
        self.stats = ConsumerStats()
        self.store = DirectoryStore(bulk_dir) if bulk_dir is not None else None
        self.bulk_threshold = bulk_threshold
        self.max_deliveries = max_deliveries
        self.ssl_context = ssl_context
        self.queue_arguments = dict(queue_arguments or {})
        self._connection: AbstractRobustConnection | None = None
        self._reply_channel: AbstractChannel | None = None
        self._stream_channel: AbstractChannel | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._streams: dict[str, _Pipe] = {}
        self._ready = asyncio.Event()

    def on(
        self, service: Service | str, *, sop_class: str = "*", calling_ae: str = "*"
    ) -> Callable[[Handler], Handler]:
        """Decorator: handle ``service`` requests, optionally only for one SOP class or
        calling AE title."""

        def register(handler: Handler) -> Handler:
            self.add(service, handler, sop_class=sop_class, calling_ae=calling_ae)
            return handler

        return register

    def add(
        self,
        service: Service | str,
        handler: Handler,
        *,
        sop_class: str = "*",
        calling_ae: str = "*",
    ) -> None:
        self.registrations.append(Registration(Service(service), handler, sop_class, calling_ae))

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare and bind the queue, start consuming. Returns when ready."""
        if not self.registrations:
            raise ValueError("no handler registered")
        self._executor = ThreadPoolExecutor(self.prefetch, thread_name_prefix="consumer")
        if self.store is not None:
            self.store.ensure()
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": f"dicom-bridge consumer {self.queue}"},
            ssl_context=self.ssl_context,
        )
        self._connection = connection
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        self._reply_channel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.exclusive:
            queue = await channel.declare_queue(self.queue, exclusive=True, auto_delete=True)
        else:
            queue = await channel.declare_queue(
                self.queue,
                durable=True,
                arguments={"x-queue-type": self.queue_type, **self.queue_arguments},
            )
        for binding in dict.fromkeys(r.binding for r in self.registrations):
            await queue.bind(exchange, binding)
        # Stream replies go unconfirmed, in order, on a channel of their own; a returned
        # one means the bridge is gone, so the stream stops.
        self._stream_channel = await connection.channel(publisher_confirms=False)
        self._stream_channel.return_callbacks.add(self._on_returned)
        streamed = [r for r in self.registrations if r.service.spec.streamed]
        if streamed:
            # Cancel notices go to every consumer instance: an exclusive queue each.
            control = await channel.declare_queue("", exclusive=True, auto_delete=True)
            for binding in dict.fromkeys(f"cancel.{r.binding}" for r in streamed):
                await control.bind(exchange, binding)
            await control.consume(self._on_cancel, no_ack=True)
        await queue.consume(self._on_message)
        self._ready.set()
        log.info(
            "consuming %s from queue %s (bindings: %s)",
            ", ".join(sorted({r.service.value for r in self.registrations})),
            self.queue,
            ", ".join(dict.fromkeys(r.binding for r in self.registrations)),
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await self.run(stop)

        asyncio.run(main())

    # -- one request ----------------------------------------------------------------------

    def _sink(self, tag: int, vr: str, value: bytes) -> str | None:
        if self.store is None or len(value) <= self.bulk_threshold:
            return None
        return self.store.put(value)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # A quorum queue counts earlier deliveries: a request that keeps killing its
        # consumers must not loop. Answer the peer and dead-letter it.
        deliveries = (message.headers or {}).get("x-delivery-count")
        if isinstance(deliveries, int) and deliveries >= self.max_deliveries:
            await self._refuse_poison(message, deliveries)
            return
        try:
            await self._handle(message)
        except Exception:
            log.exception("could not answer a request; it will be redelivered")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        await message.ack()

    async def _refuse_poison(self, message: AbstractIncomingMessage, deliveries: int) -> None:
        self.stats.poison += 1
        service = Service.C_ECHO
        with contextlib.suppress(CodecError, KeyError, ValueError):
            service = Service(codec.parse_envelope(message.body)["service"])
        log.error(
            "request delivered %d times without an answer: dead-lettered, handler not run",
            deliveries + 1,
            extra=_ids(message),
        )
        if not service.spec.streamed:
            await self._reply(
                message,
                codec.build_reply(
                    service.spec.failure_status(Failure.INTERNAL),
                    elements={"error_comment": f"consumers failed {deliveries + 1} times"},
                ),
            )
        await message.reject(requeue=False)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        deadline_ms = (message.headers or {}).get("deadline-ms")
        if isinstance(deadline_ms, int) and deadline_ms < datetime.now(UTC).timestamp() * 1000:
            self.stats.stale += 1
            log.warning("request past its deadline skipped", extra=_ids(message))
            return
        try:
            request = Request(codec.parse_envelope(message.body), message.headers)
        except CodecError as exc:
            self.stats.failed += 1
            log.warning("unusable envelope: %s", exc.message, extra=_ids(message))
            await self._reply(
                message, codec.build_reply(0x0110, elements={"error_comment": exc.comment})
            )
            return
        registration = next((r for r in self.registrations if r.matches(request)), None)
        spec = request.service.spec
        if registration is None:
            self.stats.failed += 1
            body = codec.build_reply(
                spec.failure_status(Failure.INTERNAL),
                elements={"error_comment": "no handler for this request"},
            )
        elif spec.streamed:
            await self._stream(message, request, registration)
            return
        else:
            body = await self._single(message, request, registration)
        if request.envelope.get("reply_expected", True):
            await self._reply(message, body)

    def _failure_body(self, request: Request, exc: Exception) -> bytes:
        self.stats.failed += 1
        log.error(
            "%s handler failed", request.service.dimse_name, exc_info=exc,
            extra={"correlation_id": request.id},
        )  # fmt: skip
        return codec.build_reply(
            request.service.spec.failure_status(Failure.INTERNAL),
            elements={"error_comment": f"consumer error: {type(exc).__name__}"[:64]},
        )

    def _count(self, request: Request) -> None:
        self.stats.handled += 1
        name = request.service.value
        self.stats.by_service[name] = self.stats.by_service.get(name, 0) + 1

    async def _single(
        self, message: AbstractIncomingMessage, request: Request, registration: Registration
    ) -> bytes:
        """Run a single-reply handler and encode its answer; off the loop for plain
        functions."""
        handler = registration.handler
        try:
            if inspect.iscoroutinefunction(handler):
                with tracing.consumer_span(request.service.dimse_name, request.headers):
                    result = await handler(request)
                body = to_response(result).encode(self._sink)
            else:
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(
                    self._executor, _run_single, handler, request, self._sink
                )
        except Exception as exc:
            return self._failure_body(request, exc)
        self._count(request)
        return body

    async def _stream(
        self, message: AbstractIncomingMessage, request: Request, registration: Registration
    ) -> None:
        """Publish a streamed handler's replies as they are produced; stop on a cancel
        notice or when the bridge is gone."""
        loop = asyncio.get_running_loop()
        correlation_id = message.correlation_id or request.id
        handler = registration.handler
        if inspect.iscoroutinefunction(handler):
            result = await handler(request)
            bodies = _stream_bodies(request, lambda: result, self._sink)
        else:
            bodies = _stream_bodies(request, lambda: handler(request), self._sink)
        pipe = _Pipe(loop, STREAM_WINDOW)
        self._streams[correlation_id] = pipe
        loop.run_in_executor(self._executor, pipe.run, bodies)
        try:
            while True:
                batch = await pipe.take()
                if pipe.stopped:
                    self.stats.cancelled += 1
                    log.info(
                        "%s stopped: cancelled by the peer or the bridge is gone",
                        request.service.dimse_name,
                        extra={"correlation_id": correlation_id},
                    )
                    return
                for body in batch:
                    await self._publish_stream(message, body)
                if not batch:  # the producer is done
                    if pipe.error is not None:
                        await self._publish_stream(message, self._failure_body(request, pipe.error))
                    else:
                        self._count(request)
                    return
        finally:
            # The producer closes the handler's generator itself, when it next runs.
            pipe.stop()
            self._streams.pop(correlation_id, None)

    async def _publish_stream(self, message: AbstractIncomingMessage, body: bytes) -> None:
        channel = self._stream_channel
        if not message.reply_to or channel is None:
            return
        await channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                correlation_id=message.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            ),
            routing_key=message.reply_to,
            mandatory=True,
        )

    def _on_returned(self, channel: Any, message: AbstractIncomingMessage) -> None:
        self.stats.undeliverable_replies += 1
        pipe = self._streams.get(message.correlation_id or "")
        if pipe is not None:
            pipe.stop()

    async def _on_cancel(self, message: AbstractIncomingMessage) -> None:
        try:
            notice = orjson.loads(message.body)
            target = str(notice["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("unusable cancel notice ignored")
            return
        pipe = self._streams.get(target)
        if pipe is not None:
            pipe.stop()

    async def _reply(self, message: AbstractIncomingMessage, body: bytes) -> None:
        channel = self._reply_channel
        if not message.reply_to or channel is None:
            log.warning("request without reply_to: no reply sent", extra=_ids(message))
            return
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    correlation_id=message.correlation_id,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                    type=f"{message.type}-reply" if message.type else None,
                ),
                routing_key=message.reply_to,
                mandatory=True,
                timeout=10,
            )
        except aiormq.exceptions.PublishError:
            # The bridge that asked is gone (its exclusive reply queue vanished).
            self.stats.undeliverable_replies += 1
            log.warning("requester gone: reply not deliverable", extra=_ids(message))


def _run_single(handler: Handler, request: Request, sink: BulkSink) -> bytes:
    with tracing.consumer_span(request.service.dimse_name, request.headers):
        result = handler(request)
    if inspect.isawaitable(result):
        raise TypeError("handler returned an awaitable: declare it with async def")
    return to_response(result).encode(sink)


class _Pipe:
    """Reply bodies from the thread that runs a streamed handler to the event loop.

    The producer thread waits for the loop only when ``window`` bodies are unpublished and
    wakes the loop only when the pipe was empty, so a fast handler costs one wake-up per
    batch, and a slow one still gets each body out at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self._loop = loop
        self._window = window
        self._items: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._wake = asyncio.Event()
        self.done = False
        self.stopped = False
        self.error: Exception | None = None

    def _signal(self) -> None:
        self._loop.call_soon_threadsafe(self._wake.set)

    def run(self, bodies: Iterator[bytes]) -> None:
        """Producer side: iterate ``bodies`` (the handler runs here) until done or
        stopped; always closes the iterator."""
        try:
            for body in bodies:
                with self._cond:
                    while len(self._items) >= self._window and not self.stopped:
                        self._cond.wait()
                    if self.stopped:
                        break
                    self._items.append(body)
                    first = len(self._items) == 1
                if first:
                    self._signal()
        except Exception as exc:
            self.error = exc
        finally:
            if isinstance(bodies, Generator):
                bodies.close()
            with self._cond:
                self.done = True
            self._signal()

    async def take(self) -> list[bytes]:
        """Loop side: the bodies produced so far; empty once the producer is done (or
        the pipe stopped) and everything was taken."""
        while True:
            with self._cond:
                if self.stopped:
                    return []
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    self._cond.notify_all()
                    return batch
                if self.done:
                    return []
                self._wake.clear()
            await self._wake.wait()

    def stop(self) -> None:
        """Stop the stream from the loop: the producer stops at its next body."""
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
        self._wake.set()


def _stream_bodies(request: Request, produce: Callable[[], Any], sink: BulkSink) -> Iterator[bytes]:
    """The reply bodies of a streamed request; the handler runs on the first next()."""
    with tracing.consumer_span(request.service.dimse_name, request.headers):
        if request.service is Service.C_FIND:
            yield from find_replies(produce(), sink)
        else:
            yield from retrieve_replies(produce(), request.service, sink)


def _ids(message: AbstractIncomingMessage) -> dict[str, str]:
    return {"correlation_id": message.correlation_id or ""}
