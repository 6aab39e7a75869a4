"""One DIMSE request's exchange with the consumers, driven from its handler thread.

Builds the envelope (bulk data above the threshold goes to the claim-check store; a
C-STORE data set that pynetdicom received into a spool or a file is read from there, its
large values copied to the store without passing through memory, and the spool or file
deleted), publishes it, reads replies through the seam, and cleans up: forgets the
correlation id and deletes the claim-check files it wrote. Every method raises only
:class:`~bridge.errors.BridgeError` subclasses for failures the peer must hear about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import orjson
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from bridge.errors import BrokerUnavailable, CodecError, Failure, ReplyError, ReplyTimeout
from bridge.ops import tracing
from bridge.ops.logging import request_context
from bridge.ops.metrics import Metrics
from bridge.protocol import part10
from bridge.protocol.envelope import AssociationInfo, Envelope, JSONDict, build_envelope
from bridge.protocol.model import Service
from bridge.protocol.reply import Reply, parse_reply
from bridge.scp import received
from bridge.scp.events import EventPublisher
from bridge.transport import Call, Outbound, Transport, request_reply
from bridge.transport.bulkstore import BulkStore
from bridge.transport.seam import Seam

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

CANCEL_POLL = 0.05
"""Seconds between checks for a C-CANCEL while a streamed request waits for a reply."""
BACKLOG_LIMIT = 64
"""Replies of a stream fetched from the loop in one hop when they are already there."""


@dataclass(frozen=True)
class Limits:
    reply_timeout: float
    publish_timeout: float
    bulk_threshold: int
    max_message_size: int


class Conversation:
    """Envelope out, replies in, for one request. Not thread-safe: one handler thread."""

    def __init__(
        self,
        event: Event,
        service: Service,
        info: AssociationInfo,
        *,
        transport: Transport,
        seam: Seam,
        store: BulkStore,
        limits: Limits,
        metrics: Metrics | None = None,
    ) -> None:
        self.event = event
        self.service = service
        self.info = info
        self.id = str(uuid.uuid4())
        self.started = time.perf_counter()
        self._envelope: Envelope | None = None
        self._transport = transport
        self._seam = seam
        self._store = store
        self._limits = limits
        self._metrics = metrics
        self._call: Call | None = None
        self._span = contextlib.ExitStack()
        self._backlog: deque[bytes] = deque()
        self._written: list[str] = []

    @property
    def envelope(self) -> Envelope:
        """The request's envelope, built by :meth:`round_trip`, :meth:`publish` or
        :meth:`hand_over`; RuntimeError before."""
        if self._envelope is None:
            raise RuntimeError("the envelope is not built yet")
        return self._envelope

    # -- out ------------------------------------------------------------------------------

    def _sink(self, tag: int, vr: str, value: bytes) -> str | None:
        if len(value) <= self._limits.bulk_threshold:
            return None
        uri = self._store.put(value)
        self._written.append(uri)
        return uri

    def _claim(self, tag: int, vr: str, value: received.FileRange) -> str | None:
        """:meth:`_sink` for a value still in the received file: the same decision, and a
        copy from file to file instead of a write from memory."""
        if len(value) <= self._limits.bulk_threshold:
            return None
        uri = self._store.put_range(value.fileno, value.offset, value.length)
        self._written.append(uri)
        return uri

    def _dataset_file(self) -> received.ReceivedDataSet | None:
        """The C-STORE data set as a Part 10 file, not read yet: the spool or file
        pynetdicom received it into (:mod:`bridge.scp.received`), or, when it was received
        into memory, its bytes behind File Meta Information made from the request. None
        for other services and for a C-STORE without a data set."""
        if self.service is not Service.C_STORE:
            return None
        event = self.event
        source: Path | received.Spool | bytes | None = received.source_of(event)
        if source is None:
            request = cast("C_STORE", event.request)
            stream = request.DataSet
            if stream is None or not stream.getbuffer().nbytes:
                return None
            ae = getattr(event.assoc, "ae", None)
            source = part10.header(
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                transfer_syntax=str(event.context.transfer_syntax),
                implementation_class_uid=str(
                    getattr(ae, "implementation_class_uid", PYNETDICOM_IMPLEMENTATION_UID)
                ),
                implementation_version=getattr(ae, "implementation_version_name", None),
                source_ae=self.info.calling_ae,
            ) + bytes(stream.getbuffer())
        return received.ReceivedDataSet(
            source,
            event.context.transfer_syntax,
            defer_size=min(received.REFERENCE_MIN, self._limits.bulk_threshold),
            claim=self._claim,
            references=True,
        )

    def _part10(self, dataset_file: received.ReceivedDataSet) -> JSONDict:
        """The ``part10`` of the envelope: inline up to the bulk threshold, else the file
        in the claim-check store (linked there, not copied, where the filesystem allows),
        deleted with the request's other claim-check files."""
        offset = dataset_file.dataset_offset
        memory = dataset_file.part10_memory()
        if memory is not None and len(memory) - offset <= self._limits.bulk_threshold:
            return part10.inline_json(memory, offset)
        if memory is not None:
            uri = self._store.put(bytes(memory))
            size = len(memory)
        else:
            path = dataset_file.part10_path()
            assert path is not None
            uri = self._store.put_file(path, owned=True)
            size = path.stat().st_size
        self._written.append(uri)
        return part10.uri_json(uri, size, offset)

    def _message(self, *, reply: bool = True) -> Outbound:
        limits = self._limits
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=limits.reply_timeout) if reply else None
        dataset_file = self._dataset_file()
        try:
            envelope = build_envelope(
                self.event,
                self.service,
                request_id=self.id,
                association=self.info,
                deadline=deadline,
                bulk_data=self._sink,
                dataset_file=dataset_file,
            )
            if dataset_file is not None and envelope.datasets.get("dataset") is not None:
                envelope = dataclasses.replace(envelope, part10=self._part10(dataset_file))
        except OSError as exc:
            raise BrokerUnavailable(f"claim-check store: {exc.strerror or exc}") from exc
        finally:
            if dataset_file is not None:
                # Its large values are in the claim-check store, the rest in the envelope:
                # free the memory or disk now rather than after the reply (pynetdicom's
                # own delete then finds nothing, which it allows).
                dataset_file.discard()
        self._envelope = envelope
        body = envelope.to_json()
        if self._metrics is not None:
            self._metrics.sent(len(body))
        if len(body) > limits.max_message_size:
            raise CodecError(f"envelope of {len(body)} bytes exceeds the max message size")
        headers = envelope.headers()
        # The span lasts until close(): the trace shows the whole round trip.
        self._span.enter_context(tracing.producer_span(self.service.dimse_name, headers))
        return Outbound(
            routing_key=envelope.routing_key(),
            body=body,
            correlation_id=self.id,
            type=self.service.value,
            timestamp=now,
            expiration=limits.reply_timeout if reply else None,
            headers=headers,
            persistent=not reply,
        )

    def round_trip(self) -> Reply:
        """Publish and wait for the one reply, in a single hop into the loop."""
        message = self._message()
        limits = self._limits
        body = self._seam.run(
            request_reply(self._transport, message, limits.reply_timeout),
            timeout=limits.publish_timeout + limits.reply_timeout + 1.0,
        )
        return self._parse(body)

    def _parse(self, body: bytes) -> Reply:
        if self._metrics is not None:
            self._metrics.received(len(body))
        if len(body) > self._limits.max_message_size:
            raise ReplyError(f"reply of {len(body)} bytes exceeds the max message size")
        try:
            return parse_reply(body, self.service.spec)
        except ReplyError:
            self._drop_part10(body)
            raise

    def _drop_part10(self, body: bytes) -> None:
        """Delete the claim-check file of a reply's ``part10`` that will not be sent on
        (the reply is refused, or the stream ended before it was read): once the
        consumer has replied, the file is the bridge's. Only files of the store."""
        try:
            document = orjson.loads(body)
            uri = document["part10"]["BulkDataURI"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if isinstance(uri, str):
            self._store.delete(uri)

    def hand_over(self, publisher: EventPublisher) -> None:
        """Publish-only: publish (mandatory, persistent, confirmed) or spool the request;
        no reply is awaited. Claim-check files it wrote stay for the consumer to delete.

        Raises Unroutable when no queue is bound and SpoolFull when the broker is away and
        the spool has no room.
        """
        message = self._message(reply=False)
        self._written.clear()  # the consumer reads them later, and deletes them
        self._seam.run(publisher.deliver(message), timeout=self._limits.publish_timeout + 2.0)

    def publish(self) -> None:
        """Publish the request of a streamed service; replies follow with :meth:`reply`."""
        message = self._message()
        self._call = self._seam.run(
            self._transport.call(message), timeout=self._limits.publish_timeout + 1.0
        )

    # -- in -------------------------------------------------------------------------------

    def reply(self, cancelled: Callable[[], bool]) -> Reply | None:
        """The next reply, or None once ``cancelled()`` turns true (checked every
        :data:`CANCEL_POLL` seconds while waiting). Raises ReplyTimeout when the consumer
        stays silent for the reply timeout: the deadline runs between replies."""
        assert self._call is not None, "publish() first"
        timeout = self._limits.reply_timeout
        deadline = time.monotonic() + timeout
        while not self._backlog:
            if cancelled():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(f"no reply within {timeout:g} s")
            wait = min(remaining, CANCEL_POLL)
            try:
                self._backlog.extend(
                    self._seam.run(self._call.next_replies(wait, BACKLOG_LIMIT), timeout=wait + 1.0)
                )
            except ReplyTimeout:
                continue
        if cancelled():
            return None
        return self._parse(self._backlog.popleft())

    def logging_context(self) -> AbstractContextManager[None]:
        """Log lines in this block name the association and the request."""
        return request_context(
            association_id=self.info.id, correlation_id=self.id, calling_ae=self.info.calling_ae
        )

    def failed(self, failure: Failure) -> None:
        if self._metrics is not None:
            self._metrics.failed(self.service, failure)

    def notify_cancel(self) -> None:
        """Tell consumers the peer cancelled (best effort: the peer is answered anyway)."""
        if self._metrics is not None:
            self._metrics.cancels.labels(self.service.value).inc()
        if self._envelope is None:
            return
        key, body = self._envelope.cancel_notice()
        message = Outbound(
            routing_key=key,
            body=body,
            correlation_id=self.id,
            type="cancel",
            timestamp=datetime.now(UTC),
            headers={"service": self.service.value, "cancels": self.id},
            mandatory=False,
        )
        try:
            self._seam.run(
                self._transport.publish(message), timeout=self._limits.publish_timeout + 1.0
            )
        except Exception as exc:  # the peer's Cancel response does not depend on it
            log.warning("cancel notice not published: %s", exc, extra={"correlation_id": self.id})

    def close(self) -> None:
        """End the request: forget the correlation id (later replies are late), delete the
        claim-check files it wrote, and record how long it took (streams: until the last
        answer)."""
        call, self._call = self._call, None
        if call is not None:
            try:
                self._seam.run(call.close(), timeout=2.0)
            except Exception as exc:
                log.warning("closing call failed: %s", exc, extra={"correlation_id": self.id})
        for uri in self._written:
            self._store.delete(uri)
        self._written.clear()
        while self._backlog:  # fetched, never read: a cancel or a failure ended the stream
            self._drop_part10(self._backlog.popleft())
        self._span.close()
        if self._metrics is not None:
            self._metrics.duration.labels(self.service.value).observe(self.elapsed_ms() / 1000)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
