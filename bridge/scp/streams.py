"""C-FIND, C-GET and C-MOVE: one request, a stream of consumer replies.

Each handler is a generator in pynetdicom's handler protocol (``doc_handle_find``,
``doc_handle_c_get``, ``doc_handle_move``): it yields to pynetdicom as replies arrive, so
the peer gets the first match before the consumer has produced the last, and nothing is
collected in between. A C-CANCEL is noticed within :data:`~bridge.scp.conversation.CANCEL_POLL`
seconds, the peer gets Cancel (0xFE00) at once, consumers get a cancel notice, and later
replies are dropped as late.

pynetdicom needs a C-GET's or C-MOVE's number of sub-operations before anything else, so
a failure before any sub-operation is reported with 1 failed sub-operation. An instance
reply's dataset is decoded for pynetdicom to encode; a ``part10`` file is sent as it is
(:mod:`bridge.scp.sending`). The claim-check files of an instance, and the file an inline
``part10`` is written to, are deleted once its sub-operation is done, and when the stream
ends before (a failure, a cancel, an aborted association).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts, build_context, evt
from pynetdicom.presentation import PresentationContext

from bridge.config import AETable
from bridge.errors import BridgeError, BrokerUnavailable, CodecError, Failure, ReplyError
from bridge.protocol import dicomjson, part10
from bridge.protocol.model import Category, Service
from bridge.protocol.reply import Reply, status_dataset
from bridge.scp import sending
from bridge.scp.conversation import Conversation
from bridge.transport.bulkstore import BulkStore

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

CANCEL = 0xFE00
PENDING = 0xFF00
WITHOUT_BULK_DATA = "1.2.840.10008.5.1.4.1.2.5.3"
"""Composite Instance Retrieve Without Bulk Data - GET: pynetdicom removes the bulk data
of the Datasets it sends, so a file is sent decoded."""

Start = Callable[["Event", Service], Conversation]
FindResult = tuple[Dataset | int, Dataset | None]


def _failure(conversation: Conversation | None, service: Service, exc: Exception) -> Dataset:
    """The failure status for ``exc``, logged once; internal errors with a traceback."""
    extra = {"correlation_id": conversation.id} if conversation else {}
    failure = exc.failure if isinstance(exc, BridgeError) else Failure.INTERNAL
    if conversation is not None:
        conversation.failed(failure)
    if isinstance(exc, BridgeError):
        status = service.spec.failure_status(exc.failure)
        log.warning(
            "%s failed (%s): %s; answered 0x%04X",
            service.dimse_name, exc.failure.value, exc.message, status, extra=extra,
        )  # fmt: skip
        return status_dataset(status, {"ErrorComment": exc.comment})
    status = service.spec.failure_status(Failure.INTERNAL)
    log.error(
        "%s failed: internal error; answered 0x%04X", service.dimse_name, status,
        exc_info=exc, extra=extra,
    )  # fmt: skip
    return status_dataset(status, {"ErrorComment": "bridge internal error"})


def _cancelled(conversation: Conversation) -> Dataset:
    conversation.notify_cancel()
    log.info(
        "%s cancelled by the peer", conversation.service.dimse_name,
        extra={"correlation_id": conversation.id},
    )  # fmt: skip
    return status_dataset(CANCEL)


def handle_find(event: Event, start: Start) -> Iterator[FindResult]:
    """C-FIND: every Pending reply becomes a match, the final reply ends the stream."""
    service = Service.C_FIND
    conversation: Conversation | None = None
    try:
        conversation = start(event, service)
        yield from _in_context(conversation, _find(event, conversation))
    except Exception as exc:
        yield _failure(conversation, service, exc), None
    finally:
        if conversation is not None:
            conversation.close()


def _in_context(conversation: Conversation, stream: Iterator[Any]) -> Iterator[Any]:
    with conversation.logging_context():
        yield from stream


def _find(event: Event, conversation: Conversation) -> Iterator[FindResult]:
    conversation.publish()
    while True:
        reply = conversation.reply(lambda: bool(event.is_cancelled))
        if reply is None:
            yield _cancelled(conversation), None
            return
        status = status_dataset(reply.status, reply.elements)
        if reply.final:
            yield status, None
            return
        if reply.dataset is None:
            raise ReplyError("a Pending C-FIND reply needs a dataset")
        yield status, _decode(reply.dataset)


class _Retrieval:
    """What C-GET and C-MOVE share: sub-operation instances from consumer replies."""

    def __init__(self, event: Event, service: Service, store: BulkStore) -> None:
        self.event = event
        self.service = service
        self.store = store
        self.announced = 0
        self.delivered = 0
        self.without_bulk_data = event.context.abstract_syntax == WITHOUT_BULK_DATA

    def cancelled(self) -> bool:
        return bool(self.event.is_cancelled)

    def first(self, conversation: Conversation) -> Reply | None:
        reply = conversation.reply(self.cancelled)
        if reply is not None and not reply.final:
            count = reply.stream.get("sub_operations")
            if count is None:
                raise ReplyError(f"first {self.service.dimse_name} reply needs sub_operations")
            self.announced = count
        return reply

    def instances(self, conversation: Conversation) -> Iterator[tuple[Dataset | int, Any]]:
        """Yield ``(0xFF00, dataset)`` per instance, then the end of the stream."""
        while True:
            reply = conversation.reply(self.cancelled)
            if reply is None:
                yield _cancelled(conversation), None
                return
            if reply.final:
                yield from self._final(reply)
                return
            if reply.dataset is None and reply.part10 is None:
                raise ReplyError(
                    f"a Pending {self.service.dimse_name} reply needs a dataset or part10"
                )
            if self.delivered >= self.announced:
                self._release(reply.part10.uri if reply.part10 else None)
                raise ReplyError("more instances than sub_operations announced")
            dataset, read = self._instance(reply)
            self.delivered += 1
            try:
                yield PENDING, dataset
            finally:
                # The sub-operation is done (or will never be): the claim-check files are
                # ours, and so is the file an inline part10 went to.
                self._release(*read)

    def _release(self, *uris: str | None) -> None:
        """Delete these files of the store (None: nothing); a failure is logged."""
        for uri in uris:
            if uri is not None:
                self.store.delete(uri)

    def _instance(self, reply: Reply) -> tuple[Dataset, list[str]]:
        if reply.part10 is not None:
            return self._file(reply.part10)
        read: list[str] = []

        def fetch(uri: str) -> bytes:
            read.append(uri)
            return self.store.get(uri)

        assert reply.dataset is not None
        dataset = _decode(reply.dataset, fetch)
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = UID(
            reply.stream.get("transfer_syntax_uid", ExplicitVRLittleEndian)
        )
        return dataset, read

    def _file(self, ref: part10.Part10Ref) -> tuple[Dataset, list[str]]:
        """The instance of a ``part10`` reply, in a file of the claim-check store (an
        inline one is written there first), and the URIs to delete after its
        sub-operation. A data set of odd length (a deflated one may be) gets one
        trailing zero byte, past the end of its last element or deflate stream: message
        fragments have even lengths (PS3.8), and DCMTK refuses an odd one. Deletes what
        it claimed when it raises."""
        claimed: list[str] = []
        try:
            if ref.data is not None:
                data = ref.data
                meta = part10.read_meta(data)  # checked by parse_reply already
                if (len(data) - meta.dataset_offset) % 2:
                    data += b"\0"
                claimed.append(self._put(lambda: self.store.put(data)))
                path = self.store.local_path(claimed[0])
            else:
                assert ref.uri is not None
                claimed.append(ref.uri)
                path = self.store.local_path(ref.uri)
                try:
                    meta, size = sending.read_file_meta(path)
                except OSError:
                    raise ReplyError("part10 BulkDataURI cannot be read") from None
                if size != ref.length or meta.dataset_offset != ref.dataset_offset:
                    raise ReplyError("part10 file differs from its length or dataset_offset")
                if (size - meta.dataset_offset) % 2:
                    # A copy: the file may be a link to the consumer's own.
                    claimed.append(self._put(lambda: self._padded_copy(path, size)))
                    path = self.store.local_path(claimed[-1])
            instance = sending.FileInstance(path, meta)
            if not self.without_bulk_data:
                return instance, claimed
            try:
                return instance.decoded(), claimed
            except Exception as exc:
                raise ReplyError("part10 file cannot be decoded") from exc
        except CodecError as exc:
            self._release(*claimed)
            raise ReplyError(f"part10: {exc.message}") from exc
        except BaseException:
            self._release(*claimed)
            raise

    @staticmethod
    def _put(write: Callable[[], str]) -> str:
        """The URI ``write`` stored a file under; BrokerUnavailable (the peer hears the
        claim-check directory is unusable) when it raised OSError."""
        try:
            return write()
        except OSError as exc:
            raise BrokerUnavailable(f"claim-check store: {exc.strerror or exc}") from exc

    def _padded_copy(self, path: Path, size: int) -> str:
        """A copy of the file at ``path`` with one zero byte appended, in the store."""
        with open(path, "rb") as source:
            uri = self.store.put_range(source.fileno(), 0, size)
        try:
            with open(self.store.local_path(uri), "ab") as target:
                target.write(b"\0")
        except BaseException:
            self.store.delete(uri)
            raise
        return uri

    def _final(self, reply: Reply) -> Iterator[tuple[Dataset | int, Any]]:
        if reply.category is not Category.SUCCESS:
            yield status_dataset(reply.status, reply.elements), None
        elif self.delivered < self.announced:
            # pynetdicom counts the missing ones as failed sub-operations.
            status = 0xB000 if self.delivered else 0xA702
            comment = f"consumer sent {self.delivered} of {self.announced} instances"
            yield status_dataset(status, {"ErrorComment": comment[:64]}), None
        # else: pynetdicom sends the final status from its sub-operation counts


def handle_get(event: Event, start: Start, store: BulkStore) -> Iterator[Any]:
    """C-GET: the sub-operations run on the peer's own association."""
    service = Service.C_GET
    retrieval = _Retrieval(event, service, store)
    conversation: Conversation | None = None
    counted = False
    try:
        sending.route(event.assoc)  # part10 instances go out as their files
        conversation = start(event, service)
        conversation.publish()
        with conversation.logging_context():
            first = retrieval.first(conversation)
        if first is None:
            counted = True
            yield 1
            yield _cancelled(conversation), None
            return
        if first.final:
            counted = True
            if first.category is Category.SUCCESS:
                yield 0  # no matches: pynetdicom answers Success with zero counts
                return
            yield 1
            yield status_dataset(first.status, first.elements), None
            return
        counted = True
        yield retrieval.announced
        yield from _in_context(conversation, retrieval.instances(conversation))
    except Exception as exc:
        if not counted:
            yield 1
        yield _failure(conversation, service, exc), None
    finally:
        if conversation is not None:
            conversation.close()


def _contexts(reply: Reply | None) -> list[PresentationContext]:
    declared = reply.stream.get("presentation_contexts") if reply is not None else None
    if declared:
        return [build_context(abstract, list(syntaxes)) for abstract, syntaxes in declared]
    return list(StoragePresentationContexts)


def handle_move(event: Event, start: Start, store: BulkStore, ae_table: AETable) -> Iterator[Any]:
    """C-MOVE: the destination comes from the consumer's first reply or the AE table."""
    service = Service.C_MOVE
    retrieval = _Retrieval(event, service, store)
    conversation: Conversation | None = None
    destination_ae = _text(event.move_destination)
    first: Reply | None = None
    failure: Exception | None = None
    try:
        conversation = start(event, service)
        conversation.publish()
        first = retrieval.first(conversation)
    except Exception as exc:
        failure = exc
    known = ae_table.lookup(destination_ae)
    chosen = first.stream.get("destination") if first is not None else None
    destination = chosen or ((known.host, known.port) if known else None)
    try:
        if destination is None:
            log.warning(
                "C-MOVE destination %r unknown: not in the AE table and not named by the "
                "consumer; answered 0xA801", destination_ae,
            )  # fmt: skip
            if conversation is not None:
                conversation.notify_cancel()
            yield None, None
            return
        # The association to the destination sends part10 instances as their files.
        routed = [(evt.EVT_CONN_OPEN, sending.on_connection)]
        yield destination[0], destination[1], {"contexts": _contexts(first), "evt_handlers": routed}
        if failure is not None:
            yield 1
            yield _failure(conversation, service, failure), None
            return
        if first is None:
            yield 1
            assert conversation is not None
            yield _cancelled(conversation), None
            return
        if first.final:
            if first.category is Category.SUCCESS:
                yield 0
                return
            yield 1
            yield status_dataset(first.status, first.elements), None
            return
        yield retrieval.announced
        assert conversation is not None
        yield from _in_context(conversation, retrieval.instances(conversation))
    except Exception as exc:
        yield _failure(conversation, service, exc), None
    finally:
        if conversation is not None:
            conversation.close()


def _decode(document: dict[str, Any], fetch: Callable[[str], bytes] | None = None) -> Dataset:
    try:
        return dicomjson.json_to_dataset(document, bulk_data=fetch)
    except CodecError as exc:
        raise ReplyError(f"reply dataset: {exc.message}") from exc


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    return str(value or "").strip()
