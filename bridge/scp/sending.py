"""The C-STORE sub-operations of C-GET and C-MOVE: Part 10 files sent as they are.

A consumer's instance reply may carry the instance as a Part 10 file (``part10``) rather
than as DICOM JSON. The bridge then sends the file's data set bytes unchanged, never
decoded and re-encoded (checksums, signatures and private encodings survive), when the
peer accepted a presentation context for the file's SOP class with exactly its transfer
syntax. Otherwise it decodes the file and sends the Dataset, and pynetdicom converts
between uncompressed transfer syntaxes as it does for datasets from JSON.

pynetdicom takes only Datasets from C-GET and C-MOVE handlers, so the handler yields a
:class:`FileInstance`, a Dataset that stands in for the file, and :func:`route` makes the
association's ``send_c_store`` send the file instead (:mod:`bridge._pynetdicom.send`).

Which transfer syntax a C-GET's sub-operations may use is settled when the peer's
association is accepted, before any file is known: pynetdicom accepts, of the syntaxes a
peer proposes in a context, the first in the acceptor's list. For the storage classes a
peer asks to be the SCP of (a C-GET SCU proposing where it stores what it retrieves),
:func:`prefer_peer_syntaxes` makes it the first in the peer's list instead: the peer
says which encoding it wants, and stored files in that syntax go unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from bridge._pynetdicom import send
from bridge.protocol import part10, sopclasses

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)


class FileInstance(Dataset):
    """A Part 10 file where pynetdicom wants a Dataset: SOP Class and Instance UIDs from its
    File Meta Information (pynetdicom lists the instance UID of a failed sub-operation),
    the path and the meta as attributes. Sent as the file by an association made to
    :func:`route` its C-STOREs. It has no ``file_meta``: any other association refuses to
    send it (pynetdicom needs the transfer syntax), and the sub-operation fails rather
    than deliver two elements."""

    def __init__(self, path: Path, meta: part10.FileMeta) -> None:
        super().__init__()
        self.SOPClassUID = meta.sop_class_uid
        self.SOPInstanceUID = meta.sop_instance_uid
        self.part10_path = path
        self.part10_meta = meta

    def decoded(self) -> Dataset:
        """The file read into a Dataset (the whole file into memory). Raises what
        ``dcmread`` raises."""
        return dcmread(self.part10_path)


def read_file_meta(path: Path) -> tuple[part10.FileMeta, int]:
    """The File Meta Information of the Part 10 file at ``path`` (reading only its first
    bytes) and the file's size. Raises CodecError as
    :func:`bridge.protocol.part10.read_meta_prefix` does, OSError when it cannot be read."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        return part10.read_meta_prefix(lambda n: os.pread(fd, n, 0)), os.fstat(fd).st_size


def accepts(assoc: Association, sop_class: str, transfer_syntax: str) -> bool:
    """True when ``assoc`` may send a C-STORE of ``sop_class`` in exactly
    ``transfer_syntax``: an accepted context with both, in which we are the SCU (the
    contexts pynetdicom's ``send_c_store`` chooses from)."""
    return any(
        cx.abstract_syntax == sop_class
        and cx.transfer_syntax
        and cx.transfer_syntax[0] == transfer_syntax
        and cx.as_scu
        for cx in assoc.accepted_contexts
    )


def _send(
    assoc: Association, send_c_store: send.SendCStore, dataset: Dataset, *args: Any, **kwargs: Any
) -> Dataset:
    """A C-STORE sub-operation on ``assoc``: a :class:`FileInstance` as its file when the
    peer accepted its transfer syntax, else decoded (logged at DEBUG); a Dataset as
    pynetdicom sends it. Returns the response status; raises what ``send_c_store``
    raises (pynetdicom counts it a failed sub-operation)."""
    if not isinstance(dataset, FileInstance):
        return send_c_store(dataset, *args, **kwargs)
    meta = dataset.part10_meta
    if accepts(assoc, meta.sop_class_uid, meta.transfer_syntax):
        return send_c_store(dataset.part10_path, *args, **kwargs)
    log.debug(
        "no accepted context for %s in %s: instance %s sent decoded",
        meta.sop_class_uid, meta.transfer_syntax, meta.sop_instance_uid,
    )  # fmt: skip
    return send_c_store(dataset.decoded(), *args, **kwargs)


def route(assoc: Association) -> None:
    """Send the :class:`FileInstance` yielded to pynetdicom for ``assoc`` as their files
    (Datasets as before). Call it in the thread of a C-GET handler for the peer's
    association, or in an ``EVT_CONN_OPEN`` handler of the association to a C-MOVE
    destination (:func:`on_connection`)."""
    send.route_c_stores(assoc, _send)


def on_connection(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler for the association to a C-MOVE destination."""
    route(event.assoc)


def prefer_peer_syntaxes(assoc: Association) -> None:
    """``EVT_REQUESTED`` (the peer's A-ASSOCIATE-RQ is in, negotiation not begun): for
    every storage class the peer proposes the SCP role for, order the transfer syntaxes
    ``assoc`` supports for it as the peer proposes them (first context first), keeping
    only those it proposes, so that each of its contexts gets the first syntax of its own
    list that the bridge supports. Other classes keep the bridge's order. Changes this
    association's copy of the supported contexts only."""
    requestor = assoc.requestor
    receiving = {
        uid
        for uid, item in requestor.role_selection.items()
        if item.scp_role and sopclasses.is_storage(uid)
    }
    if not receiving:
        return
    proposed: dict[str, dict[str, None]] = {}
    for context in requestor.requested_contexts:
        if context.abstract_syntax in receiving:
            order = proposed.setdefault(str(context.abstract_syntax), {})
            order.update(dict.fromkeys(context.transfer_syntax))
    for context in assoc.acceptor.supported_contexts:
        wanted = proposed.get(str(context.abstract_syntax))
        if not wanted:
            continue
        supported = set(context.transfer_syntax)
        preferred = [syntax for syntax in wanted if syntax in supported]
        if preferred and preferred != context.transfer_syntax[: len(preferred)]:
            context.transfer_syntax = preferred  # type: ignore[assignment]
