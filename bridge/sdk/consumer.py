"""SDK for consumers written in Python: register a function per service, run.

    from bridge.sdk.consumer import Consumer, Request

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
(Datasets or file paths) or a :class:`Retrieval`; see :mod:`bridge.sdk.replies`. When the
peer cancels, the bridge publishes a cancel notice; the SDK stops the handler's iteration
and sends nothing more for that request. Bulk data above ``bulk_threshold`` travels through
the claim-check directory ``bulk_dir`` (shared with the bridge), both ways.

Delivery: a request is acked after its reply is confirmed by the broker, so a consumer
that dies mid-request leaves it to another consumer (at-least-once; ``Request.id`` is the
idempotency key). Requests past their deadline are acked without a reply: the bridge has
answered the peer already. A request a quorum queue has delivered ``max_deliveries``
times already (``x-delivery-count``: its consumers died on it) is answered with a failure
and rejected without requeue, so the queue's dead-letter settings take it. Requests
answered in the same loop iteration with consecutive delivery tags share one ``multiple``
ack; a request still running never holds back the ack of a later one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import itertools
import logging
import os
import queue
import signal
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydicom import dcmread
from pydicom.dataset import Dataset

from bridge.errors import CodecError, Failure
from bridge.ops import tracing
from bridge.protocol import dicomjson, part10
from bridge.protocol.envelope import parse_envelope
from bridge.protocol.model import Service, routing_word
from bridge.protocol.reply import build_reply
from bridge.sdk.replies import (
    BulkSink,
    FileSink,
    Response,
    Retrieval,
    find_replies,
    retrieve_replies,
    to_response,
)
from bridge.transport import broker
from bridge.transport.bulkstore import DirectoryStore, copy_range, path_of, read_uri

__all__ = ["Consumer", "Request", "Response", "Retrieval"]

log = logging.getLogger(__name__)

STREAM_WINDOW = 256
"""Replies a streamed handler may produce ahead of their publication."""


class Request:
    """One DIMSE request as a consumer sees it. Datasets decode on first access."""

    def __init__(self, envelope: dict[str, Any], headers: Mapping[str, Any] | None = None) -> None:
        self.envelope = envelope
        self.service = Service(envelope["service"])
        self._stream: BinaryIO | None = None
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
        return dicomjson.json_to_dataset(document, bulk_data=self._bulk_value)

    def _bulk_value(self, uri: str) -> bytes:
        """A BulkDataURI's bytes: a range of the Part 10 file, or a claim-check file."""
        if not uri.startswith("?"):
            return read_uri(uri)
        ref = self._part10_ref
        if ref is None:
            raise CodecError("BulkDataURI refers to a Part 10 file the envelope lacks")
        if ref.data is not None:
            return part10.slice_reference(ref.data, uri)
        where = part10.parse_reference(uri)
        if where is None:
            raise CodecError("BulkDataURI is not a reference into the Part 10 file")
        offset, length = where
        try:
            with open(path_of(cast(str, ref.uri)), "rb") as handle:
                data = os.pread(handle.fileno(), length, offset)
        except OSError:
            raise CodecError("Part 10 file cannot be read") from None
        if len(data) != length:
            raise CodecError("BulkDataURI reaches past the end of the Part 10 file")
        return data

    @cached_property
    def _part10_ref(self) -> part10.Part10Ref | None:
        document = self.envelope.get("part10")
        return None if document is None else part10.from_json(document)

    @property
    def part10(self) -> bytes | BinaryIO | None:
        """C-STORE: the data set exactly as the peer sent it, as a DICOM Part 10 file (File
        Meta Information made by the bridge from the association: transfer syntax, SOP
        class and instance, source AE). ``bytes`` when it travelled in the message; an
        open binary file, positioned at its start, when it came through the claim-check
        directory (large instances): the SDK closes it once the handler returns. None
        for other services and for a C-STORE without a data set. Raises CodecError when
        the file cannot be opened."""
        ref = self._part10_ref
        if ref is None:
            return None
        if ref.data is not None:
            return ref.data
        if self._stream is None or self._stream.closed:
            try:
                self._stream = open(path_of(cast(str, ref.uri)), "rb")  # noqa: SIM115 - close()
            except OSError:
                raise CodecError("Part 10 file cannot be opened") from None
        self._stream.seek(0)
        return self._stream

    def save(self, path: str | os.PathLike[str], *, fsync: bool = False) -> Path:
        """Write the C-STORE data set as received (:attr:`part10`) to ``path`` as a Part
        10 file, decoding nothing: written under a temporary name in the same directory
        and renamed over ``path`` (readers see the old file or the whole new one). A file
        from the claim-check directory is hard-linked where the filesystem allows (no byte
        copied), else copied in the kernel. ``fsync`` makes the file and the rename
        durable before it returns. Returns ``path``. Raises CodecError when the request
        has no Part 10 file, OSError when it cannot be written."""
        ref = self._part10_ref
        if ref is None:
            raise CodecError("the request has no Part 10 file (not a C-STORE with a data set)")
        target = Path(path)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            if ref.data is not None:
                _write_new(partial, ref.data, fsync)
            else:
                _link_or_copy(path_of(cast(str, ref.uri)), partial, fsync)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if fsync:
            _fsync_directory(target.parent)
        return target

    def close(self) -> None:
        """Close what :attr:`part10` opened (the SDK calls it after the handler)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

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
        """C-STORE Data Set, decoded on first use: from the Part 10 file when the envelope
        has one (the received bytes, read by pydicom; values over 1 MB are read from the
        file when used, while the handler runs), else from the JSON."""
        ref = self._part10_ref
        if ref is None or self.envelope.get("dataset") is None:
            return self._dataset("dataset")
        try:
            if ref.data is not None:
                ds = dcmread(BytesIO(ref.data))
            else:
                ds = dcmread(path_of(cast(str, ref.uri)), defer_size="1 MB")
        except Exception as exc:  # pydicom raises many kinds for malformed bytes
            raise CodecError(f"Part 10 file cannot be read ({type(exc).__name__})") from exc
        # The File Meta is the bridge's; request.file_meta is the request's, as before.
        del ds.file_meta
        return ds

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


def _write_new(path: Path, data: bytes, fsync: bool) -> None:
    with open(path, "xb") as out:
        out.write(data)
        if fsync:
            out.flush()
            os.fsync(out.fileno())


def _link_or_copy(source: Path, path: Path, fsync: bool) -> None:
    try:
        os.link(source, path)
    except OSError:
        with open(source, "rb") as handle, open(path, "xb") as out:
            copy_range(handle.fileno(), out.fileno(), 0, os.fstat(handle.fileno()).st_size)
            if fsync:
                os.fsync(out.fileno())
        return
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Consumes requests from one queue and replies to the bridge.

    ``prefetch`` is how many requests the broker hands this consumer before it has acked
    any, and how many plain handlers may run at once (one worker thread each). 32 keeps a
    fast consumer busy: 64, 128 and 256 were no faster for small requests (bench/run.py's
    "consumer sdk" case), and a larger window only holds more requests that a crash
    would send round again and that other consumers of the queue cannot take.
    """

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
        self._control_channel: AbstractChannel | None = None
        self._workers: _Workers | None = None
        self._streams: dict[str, _Pipe] = {}
        self._acks: _Acks | None = None
        self._id_prefix = f"{os.getpid()}.{id(self):x}."
        self._reply_ids = itertools.count(1)
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
        self._workers = _Workers(asyncio.get_running_loop(), self.prefetch, "consumer")
        if self.store is not None:
            self.store.ensure()
        connection = await broker.connect(
            self.amqp_url,
            purpose=f"consumer {self.queue}",
            robust=True,
            ssl_context=self.ssl_context,
        )
        self._connection = connection
        # Requests arrive alone on this channel: every delivery tag on it is a request's,
        # which is what lets _Acks acknowledge a contiguous run of them with one frame.
        channels = await broker.work_channels(
            connection, prefetch=self.prefetch, exchange=self.exchange
        )
        channel, exchange, self._reply_channel = channels.work, channels.exchange, channels.replies
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
            # On a channel of its own: no_ack deliveries would interleave delivery tags
            # with the requests'.
            # Held here: the robust connection keeps only weak references to its channels.
            self._control_channel = await connection.channel()
            control = await self._control_channel.declare_queue(
                "", exclusive=True, auto_delete=True
            )
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
        if self._acks is not None:
            # Answered requests are acked before the channel goes, not redelivered.
            with contextlib.suppress(Exception):
                await self._acks.drain()
            self._acks = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None

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

    def _file_sink(self, path: Path, size: int) -> str | None:
        """A C-GET/C-MOVE instance file above the bulk threshold goes to the claim-check
        store as a hard link (a copy in the kernel across filesystems); the bridge
        deletes the link once the file is sent."""
        if self.store is None or size <= self.bulk_threshold:
            return None
        return self.store.put_file(path)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """One request: answer it, then settle it. The ack goes out only after the
        reply's publisher confirm (or when no reply is due); see :class:`_Acks`."""
        acks = self._acks_for(message)
        tag = message.delivery_tag or 0
        # A quorum queue counts earlier deliveries: a request that keeps killing its
        # consumers must not loop. Answer the peer and dead-letter it.
        deliveries = (message.headers or {}).get("x-delivery-count")
        if isinstance(deliveries, int) and deliveries >= self.max_deliveries:
            # If this raises, the request stays unacked until its channel closes.
            await self._refuse_poison(message, deliveries)
            if acks is not None:
                acks.settled(tag)
            return
        try:
            await self._handle(message)
        except Exception:
            log.exception("could not answer a request; it will be redelivered")
            try:
                await message.nack(requeue=True)
            except Exception:  # the channel is gone: the broker requeues it anyway
                return
            # Only once the nack is written: a multiple ack may then pass over the tag.
            if acks is not None:
                acks.settled(tag)
            return
        if acks is not None:
            acks.ack(tag)

    def _acks_for(self, message: AbstractIncomingMessage) -> _Acks | None:
        """The ack tracker of the channel ``message`` came on; None when that channel is
        gone (the broker has requeued the request: there is nothing to ack)."""
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return None
        acks = self._acks
        if acks is None or (acks.channel is not channel and acks.channel.is_closed):
            # The robust connection reopened the channel: delivery tags start again at 1.
            acks = self._acks = _Acks(channel)
        return acks if acks.channel is channel else None

    async def _refuse_poison(self, message: AbstractIncomingMessage, deliveries: int) -> None:
        self.stats.poison += 1
        service = Service.C_ECHO
        with contextlib.suppress(CodecError, KeyError, ValueError):
            service = Service(parse_envelope(message.body)["service"])
        log.error(
            "request delivered %d times without an answer: dead-lettered, handler not run",
            deliveries + 1,
            extra=_ids(message),
        )
        if not service.spec.streamed:
            await self._reply(
                message,
                build_reply(
                    service.spec.failure_status(Failure.INTERNAL),
                    elements={"error_comment": f"consumers failed {deliveries + 1} times"},
                ),
            )
        await message.reject(requeue=False)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        deadline_ms = (message.headers or {}).get("deadline-ms")
        if isinstance(deadline_ms, int) and deadline_ms < time.time() * 1000:
            self.stats.stale += 1
            log.warning("request past its deadline skipped", extra=_ids(message))
            return
        try:
            request = Request(parse_envelope(message.body), message.headers)
        except CodecError as exc:
            self.stats.failed += 1
            log.warning("unusable envelope: %s", exc.message, extra=_ids(message))
            await self._reply(message, build_reply(0x0110, elements={"error_comment": exc.comment}))
            return
        registration = next((r for r in self.registrations if r.matches(request)), None)
        spec = request.service.spec
        if registration is None:
            self.stats.failed += 1
            body = build_reply(
                spec.failure_status(Failure.INTERNAL),
                elements={"error_comment": "no handler for this request"},
            )
        elif spec.streamed:
            await self._stream(message, request, registration)
            return
        else:
            try:
                body = await self._single(message, request, registration)
            finally:
                request.close()
        if request.envelope.get("reply_expected", True):
            await self._reply(message, body)
        else:
            self._forget_part10(request)

    def _forget_part10(self, request: Request) -> None:
        """Publish-only: the bridge left the claim-check file of a large Part 10 file to
        the consumer; delete it once the request is handled (a copy saved with
        :meth:`Request.save` is a link of its own)."""
        document = request.envelope.get("part10")
        uri = document.get("BulkDataURI") if isinstance(document, dict) else None
        if isinstance(uri, str) and self.store is not None:
            self.store.delete(uri)

    def _failure_body(self, request: Request, exc: Exception) -> bytes:
        self.stats.failed += 1
        log.error(
            "%s handler failed", request.service.dimse_name, exc_info=exc,
            extra={"correlation_id": request.id},
        )  # fmt: skip
        return build_reply(
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
                assert self._workers is not None, "start() first"
                body = await self._workers.run(_run_single, handler, request, self._sink)
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
            bodies = _stream_bodies(request, lambda: result, self._sink, self._file_sink)
        else:
            bodies = _stream_bodies(request, lambda: handler(request), self._sink, self._file_sink)
        pipe = _Pipe(loop, STREAM_WINDOW)
        self._streams[correlation_id] = pipe
        assert self._workers is not None, "start() first"
        self._workers.run(pipe.run, bodies)
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
            broker.reply_message(body, message.correlation_id),
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
        """Publish a single reply, mandatory, and wait for the broker's confirm.

        Straight on aiormq's channel rather than through ``aio_pika.Message`` and
        ``Exchange.publish``: the same frames and confirm, without building and validating
        a message object per reply (the hot path; see docs/performance.md)."""
        channel = self._reply_channel
        if not message.reply_to or channel is None:
            log.warning("request without reply_to: no reply sent", extra=_ids(message))
            return
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=1,  # not persistent: the requester's reply queue is exclusive
            correlation_id=message.correlation_id,
            message_type=f"{message.type}-reply" if message.type else None,
            # Unique per channel: aiormq finds a returned message's confirm by it. A
            # counter spares the random UUID it would make otherwise.
            message_id=f"{self._id_prefix}{next(self._reply_ids)}",
        )
        try:
            # aiormq's Channel: its abstract base lacks the ``wait`` parameter.
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            # wait=False: the confirm is what we wait for; waiting for the socket write
            # too would hold the channel's publish lock across a loop iteration.
            await underlay.basic_publish(
                body,
                routing_key=message.reply_to,
                properties=properties,
                mandatory=True,
                timeout=10,
                wait=False,
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


class _Workers:
    """Worker threads for plain (``def``) handlers, at most ``size`` of them.

    A cheaper hop than ``loop.run_in_executor``: a job is a put on a ``SimpleQueue``, a
    thread starts only when no started one is free (so a job never waits while fewer than
    ``size`` are busy, as with ``ThreadPoolExecutor``), and results go back to the loop in
    batches: a worker wakes the loop only when no wake-up is pending already, so jobs that
    finish together cost one wake-up. Threads are not daemons: at interpreter exit,
    running handlers finish, as they did in a ``ThreadPoolExecutor``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self._loop = loop
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._free = 0
        """Started threads not running a job, less the jobs queued (negative: short)."""
        self._results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._wake_pending = False
        self._closed = False

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``function(*args)`` in a worker thread; its result or exception comes back
        as the returned future's, on the loop."""
        future = self._loop.create_future()
        if self._closed:
            future.cancel()
            return future
        with self._lock:
            self._free -= 1
            start = self._free < 0 and self._threads < self._size
            if start:
                self._threads += 1
                self._free += 1
        self._jobs.put((future, function, args))
        if start:
            threading.Thread(target=self._work, name=f"{self._name}_{self._threads - 1}").start()
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            try:
                result, error = function(*args), None
            except BaseException as exc:  # handed to the loop, as an executor does
                result, error = None, exc
            with self._lock:
                self._free += 1
                self._results.append((future, result, error))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._deliver)
            del job, future, result, error  # hold nothing while waiting for the next job

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, []
            self._wake_pending = False
        for future, result, error in results:
            if future.done():  # cancelled
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def shutdown(self) -> None:
        """Cancel the queued jobs and let the threads end after their current one."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job[0].cancel()
        for _ in range(self._threads):
            self._jobs.put(None)


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class _Acks:
    """Acknowledgements of the requests delivered on one channel, coalesced.

    The consumer calls :meth:`ack` when a request is answered (its reply confirmed) and
    :meth:`settled` after it has nacked or rejected one itself. Due acks go out at the end
    of the loop iteration in which they fell due, in one task:

    - the due requests whose delivery tags continue the run of settled tags above the
      last one acked get a single ``basic.ack`` with ``multiple=True`` (on a quorum queue,
      each ack frame is a Raft command: fewer frames, less broker work);
    - every other due request gets its own ``basic.ack`` at once, so a slow request never
      holds back the acks of the requests after it, nor the prefetch window.

    Correct only on a channel where every delivery needs an ack (no ``no_ack`` consumer):
    the delivery tags are then 1, 2, 3..., and a tag this tracker has not seen as due or
    settled (a delivery still being handled, or not yet handed to the consumer) ends the
    run. A ``multiple`` ack up to a due tag therefore settles only requests that are done;
    requests settled before by their own frame are no longer unacked for the broker.

    The tags settled above the run are kept as ranges: behind a request that runs for
    minutes, the thousands acked meanwhile are one range, and the run jumps over it when
    that request is done. A request never settled (its channel closes first) ends the
    run for good: from then on its channel gets one ack per request.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._floor = 0
        """Every tag up to here has been settled by a frame already queued."""
        self._due: set[int] = set()
        self._starts: list[int] = []
        self._ends: list[int] = []
        """Sorted, disjoint ranges ``starts[i]..ends[i]`` of tags above the floor that
        were settled by their own ack, nack or reject."""
        self._scheduled = False
        self._outbox: deque[tuple[int, bool]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def ack(self, tag: int) -> None:
        self._due.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def settled(self, tag: int) -> None:
        """``tag`` was nacked or rejected by a frame already queued on the channel."""
        if tag > self._floor:
            self._mark(tag)

    def _mark(self, tag: int) -> None:
        """Add ``tag`` (above the floor, settled once) to the ranges, merging neighbours."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, tag)
        left = i > 0 and ends[i - 1] == tag - 1
        right = i < len(starts) and starts[i] == tag + 1
        if left and right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif left:
            ends[i - 1] = tag
        elif right:
            starts[i] = tag
        else:
            starts.insert(i, tag)
            ends.insert(i, tag)

    def flush(self) -> None:
        """Queue the due acks now (at most one ``multiple`` ack, then single ones)."""
        self._scheduled = False
        if not self._due:
            return
        floor, top = self._floor, 0
        while True:
            if floor + 1 in self._due:
                floor += 1
                self._due.discard(floor)
                top = floor
            elif self._starts and self._starts[0] == floor + 1:
                floor = self._ends[0]
                del self._starts[0], self._ends[0]
            else:
                break
        self._floor = floor
        frames = [(top, True)] if top else []
        if self._due:
            for tag in sorted(self._due):
                frames.append((tag, False))
                self._mark(tag)
            self._due.clear()
        self._outbox.extend(frames)
        # One sender, so the frames keep their order: the connection's write queue is
        # bounded, and tasks blocked on it do not resume in the order they blocked. A
        # multiple ack overtaken by a later one would name an acked tag, which the broker
        # answers by closing the channel.
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._outbox:
                tag, multiple = self._outbox.popleft()
                # wait=False: only queue the frame; nothing needs its write to the socket.
                await self.channel.basic_ack(tag, multiple=multiple, wait=False)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as exc:
            # The channel is gone, and the broker requeued what was unacked on it.
            self._outbox.clear()
            log.warning("acks not sent (channel closed: requests will be redelivered): %s", exc)

    async def drain(self) -> None:
        """Queue the due acks and wait until they are handed to the connection."""
        self.flush()
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


def _stream_bodies(
    request: Request, produce: Callable[[], Any], sink: BulkSink, files: FileSink
) -> Iterator[bytes]:
    """The reply bodies of a streamed request; the handler runs on the first next()."""
    with tracing.consumer_span(request.service.dimse_name, request.headers):
        if request.service is Service.C_FIND:
            yield from find_replies(produce(), sink)
        else:
            yield from retrieve_replies(produce(), request.service, sink, files)


def _ids(message: AbstractIncomingMessage) -> dict[str, str]:
    return {"correlation_id": message.correlation_id or ""}
