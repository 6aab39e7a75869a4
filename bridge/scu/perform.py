"""Requests sent as an SCU: one command's request on a pooled association.

Runs in worker threads only (pynetdicom blocks); nothing here touches the event loop.

:func:`perform` sends one command's request and hands each response to ``emit``: once for
the single-response services, once per match and once more for the final status for
C-FIND. Nothing is retried once the request is on the wire (N-ACTION, N-CREATE... are
not idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from bridge.protocol import sopclasses
from bridge.protocol.command import Command, CommandError, Reason
from bridge.protocol.model import Service
from bridge.scu.pool import UNCOMPRESSED, AssociationPool, Lease, Need, Peer

if TYPE_CHECKING:
    from pynetdicom.association import Association

Emit = Callable[[Dataset, Dataset | None, bool], None]
"""``(status, response dataset, final)`` for each response of the peer."""


def needs_for(command: Command, datasets: dict[str, Dataset | None]) -> list[Need]:
    """The presentation context ``command`` needs."""
    service = command.service
    r = command.request
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
) -> None:
    """Send ``command``'s request to ``peer`` and ``emit`` each response.

    Raises :class:`CommandError`: the pool's errors before sending; ``timeout`` when no
    response came within the DIMSE timeout; ``aborted`` when the association was aborted
    or lost (or the response was invalid, which makes pynetdicom abort it);
    ``bad-dataset`` when pynetdicom cannot encode a dataset.
    """
    needs = needs_for(command, datasets)
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
                _send(lease, pool.dimse_timeout, command, datasets, guarded)
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
                datasets["dataset"],  # type: ignore[arg-type]
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
