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

Delivery: a request is acked after its reply is confirmed by the broker, so a consumer
that dies mid-request leaves it to another consumer (at-least-once; ``Request.id`` is the
idempotency key). Requests past their deadline are acked without a reply: the bridge has
answered the peer already.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydicom.dataset import Dataset

from bridge import codec, dicomjson
from bridge.errors import CodecError, Failure
from bridge.model import Service

log = logging.getLogger(__name__)


class Request:
    """One DIMSE request as a consumer sees it. Datasets decode on first access."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        self.service = Service(envelope["service"])

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
        return dicomjson.json_to_dataset(document)

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


@dataclass
class Response:
    """A reply with more than a status. Tags are ints (``0x00100010``)."""

    status: int = 0x0000
    dataset: Dataset | None = None
    error_comment: str | None = None
    error_id: int | None = None
    offending_element: list[int] | None = None
    attribute_identifier_list: list[int] | None = None
    affected_sop_instance_uid: str | None = None

    def encode(self) -> bytes:
        elements: dict[str, Any] = {
            "error_comment": self.error_comment,
            "error_id": self.error_id,
            "offending_element": _tags(self.offending_element),
            "attribute_identifier_list": _tags(self.attribute_identifier_list),
            "affected_sop_instance_uid": self.affected_sop_instance_uid,
        }
        dataset = None if self.dataset is None else dicomjson.dataset_to_json(self.dataset)
        return codec.build_reply(self.status, dataset=dataset, elements=elements)


def _tags(tags: list[int] | None) -> list[str] | None:
    return None if tags is None else [codec.tag_text(t) for t in tags]


HandlerResult = int | Response | tuple[int, Dataset | None]
Handler = Callable[[Request], HandlerResult | Awaitable[HandlerResult]]


@dataclass(frozen=True)
class Registration:
    service: Service
    handler: Handler
    sop_class: str = "*"
    calling_ae: str = "*"

    @property
    def binding(self) -> str:
        sop = "*" if self.sop_class == "*" else self.sop_class.replace(".", "_")
        return f"{self.service.value}.{sop}.{self.calling_ae}"

    def matches(self, request: Request) -> bool:
        return (
            request.service is self.service
            and self.sop_class in ("*", request.sop_class_uid)
            and self.calling_ae in ("*", request.calling_ae)
        )


def to_response(result: HandlerResult) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        status, dataset = result
        return Response(status=status, dataset=dataset)
    if isinstance(result, int) and not isinstance(result, bool):
        return Response(status=result)
    raise TypeError(f"handler returned {type(result).__name__}; expected int, tuple, Response")


@dataclass
class ConsumerStats:
    handled: int = 0
    failed: int = 0
    stale: int = 0
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
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.queue = queue
        self.prefetch = prefetch
        self.queue_type: Literal["quorum", "classic"] = "classic" if exclusive else queue_type
        self.exclusive = exclusive
        self.registrations: list[Registration] = []
        self.stats = ConsumerStats()
        self._connection: AbstractRobustConnection | None = None
        self._reply_channel: AbstractChannel | None = None
        self._executor: ThreadPoolExecutor | None = None
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
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": f"dicom-bridge consumer {self.queue}"},
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
                self.queue, durable=True, arguments={"x-queue-type": self.queue_type}
            )
        for binding in dict.fromkeys(r.binding for r in self.registrations):
            await queue.bind(exchange, binding)
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

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            body = await self._answer(message)
        except Exception:
            log.exception("could not answer a request; it will be redelivered")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        if body is not None:
            await self._reply(message, body)
        await message.ack()

    async def _answer(self, message: AbstractIncomingMessage) -> bytes | None:
        """The reply body for ``message``, or None when no reply is due."""
        deadline_ms = (message.headers or {}).get("deadline-ms")
        if isinstance(deadline_ms, int) and deadline_ms < datetime.now(UTC).timestamp() * 1000:
            self.stats.stale += 1
            log.warning("request past its deadline skipped", extra=_ids(message))
            return None
        try:
            request = Request(codec.parse_envelope(message.body))
        except CodecError as exc:
            self.stats.failed += 1
            log.warning("unusable envelope: %s", exc.message, extra=_ids(message))
            return codec.build_reply(0x0110, elements={"error_comment": exc.comment})
        registration = next((r for r in self.registrations if r.matches(request)), None)
        spec = request.service.spec
        if registration is None:
            self.stats.failed += 1
            return codec.build_reply(
                spec.failure_status(Failure.INTERNAL),
                elements={"error_comment": "no handler for this request"},
            )
        try:
            body = await self._call(registration.handler, request)
        except Exception as exc:
            self.stats.failed += 1
            log.exception("%s handler failed", request.service.dimse_name, extra=_ids(message))
            return codec.build_reply(
                spec.failure_status(Failure.INTERNAL),
                elements={"error_comment": f"consumer error: {type(exc).__name__}"[:64]},
            )
        self.stats.handled += 1
        self.stats.by_service[request.service.value] = (
            self.stats.by_service.get(request.service.value, 0) + 1
        )
        return body

    async def _call(self, handler: Handler, request: Request) -> bytes:
        """Run the handler and encode its answer; off the loop for plain functions."""
        if inspect.iscoroutinefunction(handler):
            result: HandlerResult = await handler(request)
            return to_response(result).encode()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _run_sync, handler, request)

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


def _run_sync(handler: Handler, request: Request) -> bytes:
    result = handler(request)
    if inspect.isawaitable(result):
        raise TypeError("handler returned an awaitable: declare it with async def")
    return to_response(result).encode()


def _ids(message: AbstractIncomingMessage) -> dict[str, str]:
    return {"correlation_id": message.correlation_id or ""}
