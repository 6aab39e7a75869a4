"""Requests sent as an SCU: one command's request on a pooled association.

Runs in worker threads only (pynetdicom blocks); nothing here touches the event loop.

:func:`perform` sends one command's request and hands each response to ``emit``: once for
the single-response services, once per match and once more for the final status for
C-FIND. Nothing is retried once the request is on the wire (N-ACTION, N-CREATE... are
not idempotent).

A C-STORE of a Part 10 file (:func:`part10_file`) sends the file's data set bytes as they
are when the peer accepted the file's transfer syntax, which is proposed in a context of
its own; else, for the little endian uncompressed syntaxes (:data:`CONVERTIBLE`), the
file is decoded and pynetdicom re-encodes it in the one the peer accepted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from bridge.errors import CodecError
from bridge.protocol import sopclasses
from bridge.protocol.command import Command, CommandError, Reason, part10_meta
from bridge.protocol.model import Service
from bridge.protocol.part10 import FileMeta
from bridge.scu.pool import UNCOMPRESSED, AssociationPool, Lease, Need, Peer
from bridge.transport.bulkstore import BulkStore, copy_range

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

Emit = Callable[[Dataset, Dataset | None, bool], None]
"""``(status, response dataset, final)`` for each response of the peer."""

CONVERTIBLE: Final = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
"""Transfer syntaxes of a Part 10 file that may be re-encoded in an uncompressed syntax
(:data:`~bridge.scu.pool.UNCOMPRESSED`) when the peer does not accept the file's own.
Not big endian (pynetdicom converts no byte order, and OW values would need swapping),
not the compressed ones."""

TEMPORARY_PREFIX: Final = "dicom-bridge-store-"
"""Names of the temporary files that Part 10 files carried in commands are sent from."""


@dataclass(frozen=True)
class Part10File:
    """A C-STORE command's Part 10 file on the local disk, checked: what is sent."""

    path: Path
    meta: FileMeta


@contextlib.contextmanager
def part10_file(command: Command, store: BulkStore | None) -> Iterator[Part10File | None]:
    """The command's Part 10 file as a local file for the block (None when it has none),
    its File Meta checked (:func:`bridge.protocol.command.part10_meta`) before anything
    is sent. Bytes carried in the command are written to a temporary file, deleted when
    the block ends, however it ends; a claim-check file is used where it is (deleting it
    is the caller's, by the claim-check rule), unless it needs padding.

    A data set is sent as it is, but for one thing: a deflated data set of odd length
    gets the trailing NULL byte PS3.5 A.5 asks for (network peers refuse odd lengths),
    in a temporary copy. No other data set can be of odd length.

    Raises :class:`CommandError`: ``bad-dataset`` (not a Part 10 file, UIDs that differ
    from the request's, a data set of odd length, a BulkDataURI that is not the store's
    or cannot be read), ``unavailable`` (no temporary file could be written; not
    permanent)."""
    ref = command.part10
    if ref is None:
        yield None
        return
    if ref.data is not None:
        data = ref.data
        meta = part10_meta(command, lambda size: data[:size])
        pad = _padding(meta, len(data))

        def write(fd: int) -> None:
            _write_all(fd, data)
            _write_all(fd, pad)

        with _temporary(write) as path:
            yield Part10File(path, meta)
        return
    if store is None:
        raise CommandError(Reason.BAD_DATASET, "part10: BulkDataURI but no bulk data store")
    assert ref.uri is not None  # part10.from_json: one of the two
    try:
        claimed = store.local_path(ref.uri)
        with open(claimed, "rb") as handle:
            fd = handle.fileno()
            meta = part10_meta(command, lambda size: os.pread(fd, size, 0))
            size = os.fstat(fd).st_size
    except CodecError as exc:
        raise CommandError(Reason.BAD_DATASET, f"part10: {exc.message}") from None
    except OSError:
        raise CommandError(Reason.BAD_DATASET, "part10: BulkDataURI cannot be read") from None
    pad = _padding(meta, size)
    if not pad:
        yield Part10File(claimed, meta)
        return

    def copy(fd: int) -> None:
        with open(claimed, "rb") as source:
            copy_range(source.fileno(), fd, 0, size)
        _write_all(fd, pad)

    with _temporary(copy) as path:
        yield Part10File(path, meta)


def _padding(meta: FileMeta, size: int) -> bytes:
    if (size - meta.dataset_offset) % 2 == 0:
        return b""
    if meta.transfer_syntax == DeflatedExplicitVRLittleEndian:
        return b"\0"
    raise CommandError(Reason.BAD_DATASET, "part10: the data set has an odd length")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _temporary(fill: Callable[[int], None]) -> Iterator[Path]:
    """A temporary file, written by ``fill(fd)``, deleted when the block ends. Raises
    :class:`CommandError` (``unavailable``, not permanent) when it cannot be written."""
    path: Path | None = None
    try:
        try:
            fd, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=".dcm")
            path = Path(name)
            try:
                fill(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CommandError(
                Reason.UNAVAILABLE,
                f"cannot write a temporary file ({exc.strerror or type(exc).__name__})",
                permanent=False,
            ) from exc
        yield path
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def needs_for(
    command: Command, datasets: dict[str, Dataset | None], part10: Part10File | None = None
) -> list[Need]:
    """The presentation context ``command`` needs (a C-STORE of a Part 10 file: its SOP
    class, its transfer syntax on its own, and the uncompressed ones when
    :data:`CONVERTIBLE`)."""
    service = command.service
    r = command.request
    if service is Service.C_STORE and part10 is not None:
        syntax = part10.meta.transfer_syntax
        fallback = UNCOMPRESSED if syntax in CONVERTIBLE else ()
        syntaxes = tuple(dict.fromkeys((syntax, *fallback)))
        return [Need(part10.meta.sop_class_uid, syntaxes, exact=syntax)]
    if service is Service.C_STORE:
        dataset = datasets["dataset"]
        assert dataset is not None
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        syntaxes = (syntax,) if syntax not in UNCOMPRESSED else (syntax, *UNCOMPRESSED)
        return [Need(str(dataset.SOPClassUID), tuple(dict.fromkeys(syntaxes)))]
    if service is Service.C_ECHO:
        return [Need(sopclasses.VERIFICATION)]
    uid = r.meta_sop_class_uid or command.sop_class_uid
    assert uid is not None  # parse_command requires it
    return [Need(uid, as_scp=command.role == "scp")]


def perform(
    pool: AssociationPool,
    command: Command,
    peer: Peer,
    datasets: dict[str, Dataset | None],
    emit: Emit,
    *,
    give_up_at: float | None = None,
    part10: Part10File | None = None,
) -> None:
    """Send ``command``'s request to ``peer`` and ``emit`` each response; a C-STORE sends
    ``part10`` (:func:`part10_file`) when given, else ``datasets["dataset"]``.

    Raises :class:`CommandError`: the pool's errors before sending; ``timeout`` when no
    response came within the DIMSE timeout; ``aborted`` when the association was aborted
    or lost (or the response was invalid, which makes pynetdicom abort it);
    ``bad-dataset`` when pynetdicom cannot encode a dataset.
    """
    needs = needs_for(command, datasets, part10)
    emit_failed = False

    def guarded(status: Dataset, dataset: Dataset | None, final: bool) -> None:
        nonlocal emit_failed
        try:
            emit(status, dataset, final)
        except BaseException:
            emit_failed = True
            raise

    for attempt in range(2):
        with pool.lease(peer, needs, give_up_at=give_up_at) as lease:
            if not lease.assoc.is_established:  # closed by the peer while idle
                lease.discard()
                if attempt == 0:
                    continue
                raise CommandError(Reason.UNAVAILABLE, f"association to {peer} closed")
            try:
                _send(lease, pool.dimse_timeout, command, datasets, guarded, part10=part10)
            except BaseException:
                # A stream cut short by our side leaves the peer mid-operation: the
                # association cannot serve another request.
                if emit_failed or not lease.assoc.is_established:
                    lease.discard()
                raise
            return


def _send(
    lease: Lease,
    dimse_timeout: float,
    command: Command,
    datasets: dict[str, Dataset | None],
    emit: Emit,
    *,
    part10: Part10File | None,
) -> None:
    assoc = lease.assoc
    r = command.request
    msg_id = r.message_id if r.message_id is not None else lease.next_message_id()
    started = time.monotonic()
    meta = UID(r.meta_sop_class_uid) if r.meta_sop_class_uid else None
    service = command.service
    try:
        if service is Service.C_FIND:
            for status, identifier in _find(assoc, command, datasets, msg_id):
                _check(status, assoc, started, dimse_timeout)
                pending = int(status.Status) in (0xFF00, 0xFF01)
                emit(status, identifier if pending else None, not pending)
            return
        result: Dataset | tuple[Dataset, Dataset | None]
        if service is Service.C_ECHO:
            result = assoc.send_c_echo(msg_id)
        elif service is Service.C_STORE:
            result = assoc.send_c_store(
                _stored(assoc, datasets, part10),
                msg_id,
                r.priority if r.priority is not None else 2,
                r.move_originator_ae_title,
                r.move_originator_message_id,
            )
        elif service is Service.N_EVENT_REPORT:
            result = assoc.send_n_event_report(
                datasets.get("event_information"),
                r.event_type_id,  # type: ignore[arg-type]
                r.affected_sop_class_uid,  # type: ignore[arg-type]
                r.affected_sop_instance_uid,  # type: ignore[arg-type]
                msg_id,
                meta,
            )
        elif service is Service.N_GET:
            result = assoc.send_n_get(
                [BaseTag(t) for t in r.attribute_identifier_list or ()],
                r.requested_sop_class_uid,  # type: ignore[arg-type]
                r.requested_sop_instance_uid,  # type: ignore[arg-type]
                msg_id,
                meta,
            )
        elif service is Service.N_SET:
            result = assoc.send_n_set(
                datasets["modification_list"],  # type: ignore[arg-type]
                r.requested_sop_class_uid,  # type: ignore[arg-type]
                r.requested_sop_instance_uid,  # type: ignore[arg-type]
                msg_id,
                meta,
            )
        elif service is Service.N_ACTION:
            result = assoc.send_n_action(
                datasets.get("action_information"),
                r.action_type_id,  # type: ignore[arg-type]
                r.requested_sop_class_uid,  # type: ignore[arg-type]
                r.requested_sop_instance_uid,  # type: ignore[arg-type]
                msg_id,
                meta,
            )
        elif service is Service.N_CREATE:
            result = assoc.send_n_create(
                datasets.get("attribute_list"),
                r.affected_sop_class_uid,  # type: ignore[arg-type]
                r.affected_sop_instance_uid,
                msg_id,
                meta,
            )
        elif service is Service.N_DELETE:
            result = assoc.send_n_delete(
                r.requested_sop_class_uid,  # type: ignore[arg-type]
                r.requested_sop_instance_uid,  # type: ignore[arg-type]
                msg_id,
                meta,
            )
        else:  # pragma: no cover - parse_command allows no other service
            raise CommandError(Reason.BAD_COMMAND, f"{service.dimse_name} is not performed")
    except (ValueError, AttributeError, TypeError) as exc:
        # pynetdicom raises these for a dataset it cannot encode (its messages may hold
        # values: keep only the type).
        raise CommandError(
            Reason.BAD_DATASET, f"dataset cannot be encoded ({type(exc).__name__})"
        ) from exc
    status, dataset = result if isinstance(result, tuple) else (result, None)
    _check(status, assoc, started, dimse_timeout)
    created = getattr(lease.last_response, "AffectedSOPInstanceUID", None)
    if service is Service.N_CREATE and created and "AffectedSOPInstanceUID" not in status:
        status.AffectedSOPInstanceUID = created
    emit(status, dataset, True)


def _stored(
    assoc: Association, datasets: dict[str, Dataset | None], part10: Part10File | None
) -> Dataset | Path:
    """What a C-STORE sends: the Part 10 file's path when the peer accepted its transfer
    syntax (pynetdicom sends its data set bytes as they are), else the file decoded (the
    need let only :data:`CONVERTIBLE` syntaxes get here), else the command's dataset."""
    if part10 is None:
        dataset = datasets["dataset"]
        assert dataset is not None  # parse_command requires one of the two
        return dataset
    meta = part10.meta
    for cx in assoc.accepted_contexts:
        if (
            str(cx.abstract_syntax) == meta.sop_class_uid
            and str(cx.transfer_syntax[0]) == meta.transfer_syntax
            and cx.as_scu
        ):
            return part10.path
    log.debug(
        "C-STORE: the peer did not accept the Part 10 file's transfer syntax %s for %s: "
        "the data set is decoded and re-encoded",
        meta.transfer_syntax,
        meta.sop_class_uid,
    )
    try:
        return dcmread(part10.path)
    except Exception as exc:  # pydicom raises many kinds for malformed bytes
        raise CommandError(
            Reason.BAD_DATASET, f"part10 cannot be decoded ({type(exc).__name__})"
        ) from exc


def _find(
    assoc: Association, command: Command, datasets: dict[str, Dataset | None], msg_id: int
) -> Iterator[tuple[Dataset, Dataset | None]]:
    r = command.request
    identifier = datasets["identifier"]
    assert identifier is not None
    assert r.affected_sop_class_uid is not None
    responses: Iterator[Any] = assoc.send_c_find(
        identifier, r.affected_sop_class_uid, msg_id, r.priority if r.priority is not None else 2
    )
    yield from responses


def _check(status: Dataset, assoc: Association, started: float, dimse_timeout: float) -> None:
    """pynetdicom answers an empty status when no valid response came: tell why."""
    if "Status" in status:
        return
    elapsed = time.monotonic() - started
    if elapsed >= dimse_timeout * 0.9:
        raise CommandError(
            Reason.TIMEOUT, f"no response within the DIMSE timeout ({dimse_timeout:g} s)"
        )
    raise CommandError(
        Reason.ABORTED,
        "association aborted before the response (by the peer, a lost connection or an "
        "invalid response)",
    )
