"""What a consumer's handler returns, turned into reply bodies (consumer SDK side).

Single-reply services: a status, a ``(status, dataset)`` pair or a :class:`Response`.
C-FIND: an iterable of matches (Datasets, ``(status, dataset)`` pairs or Responses; a
non-Pending Response ends the stream). C-GET and C-MOVE: an iterable of instances
(Datasets with file meta, or paths of DICOM files), a :class:`Retrieval` that also names a
C-MOVE destination, or a failure :class:`Response`.

A Dataset travels as DICOM JSON (``dataset``), which the bridge decodes and pynetdicom
encodes again. A path travels as the file itself (``part10``), never decoded here: the
bridge sends its data set bytes unchanged when the peer accepts its transfer syntax.
Only its File Meta Information is read to plan the retrieval. Up to the bulk threshold
the file goes inline (base64), above it the claim-check store takes it (a hard link,
else a copy in the kernel: never through memory). A file whose File Meta Information
lacks the Media Storage SOP Class or Instance UID or the Transfer Syntax UID is decoded
and sent as a Dataset.

Pure apart from reading the instance files a retrieval names; runs in worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from bridge.errors import CodecError
from bridge.protocol import dicomjson, part10
from bridge.protocol.model import Service
from bridge.protocol.reply import build_reply
from bridge.protocol.values import tag_text

PENDING = 0xFF00
BulkSink = dicomjson.BulkDataSink
FileSink = Callable[[Path, int], str | None]
"""Where an instance file of the given size goes: its claim-check URI, or None to carry
it inline. Raises OSError when the store cannot take it."""


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

    @property
    def pending(self) -> bool:
        return self.status in (0xFF00, 0xFF01)

    def encode(self, bulk_data: BulkSink | None = None) -> bytes:
        elements: dict[str, Any] = {
            "error_comment": self.error_comment,
            "error_id": self.error_id,
            "offending_element": _tags(self.offending_element),
            "attribute_identifier_list": _tags(self.attribute_identifier_list),
            "affected_sop_instance_uid": self.affected_sop_instance_uid,
        }
        dataset = (
            None
            if self.dataset is None
            else dicomjson.dataset_to_json(self.dataset, bulk_data=bulk_data)
        )
        return build_reply(self.status, dataset=dataset, elements=elements)


Instance = Dataset | str | os.PathLike[str]


@dataclass
class Retrieval:
    """Instances for a C-GET or C-MOVE, and optionally where a C-MOVE sends them (when
    the bridge's AE table does not know the Move Destination)."""

    instances: Iterable[Instance]
    destination: tuple[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _tags(tags: list[int] | None) -> list[str] | None:
    return None if tags is None else [tag_text(t) for t in tags]


def to_response(result: Any) -> Response:
    """A single-reply handler's result as a Response."""
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        status, dataset = result
        return Response(status=status, dataset=dataset)
    if isinstance(result, int) and not isinstance(result, bool):
        return Response(status=result)
    raise TypeError(f"handler returned {type(result).__name__}; expected int, tuple, Response")


def find_replies(result: Any, bulk_data: BulkSink | None = None) -> Iterator[bytes]:
    """Reply bodies for a C-FIND handler's result: a Pending reply per match, then the
    final one (Success unless the handler ended with another status)."""
    if result is None:
        result = ()
    if isinstance(result, int | Response | tuple) and not isinstance(result, Dataset):
        response = to_response(result)
        yield response.encode(bulk_data)
        if response.pending:
            yield build_reply(0x0000)
        return
    for item in result:
        response = Response(PENDING, item) if isinstance(item, Dataset) else to_response(item)
        yield response.encode(bulk_data)
        if not response.pending:
            return
    yield build_reply(0x0000)


def read_file_meta(path: str | os.PathLike[str]) -> part10.FileMeta | None:
    """The File Meta Information of a Part 10 file, reading its first bytes only; None
    when it lacks what the bridge needs to send the file as it is (no preamble and
    ``DICM``, no Media Storage SOP Class or Instance UID, no Transfer Syntax UID). Raises
    OSError when the file cannot be read."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        try:
            return part10.read_meta_prefix(lambda n: os.pread(fd, n, 0))
        except CodecError:
            return None


def _header(item: Instance) -> tuple[str, str]:
    """(SOP Class UID, Transfer Syntax UID) of an instance, reading only its header."""
    if isinstance(item, Dataset):
        meta = getattr(item, "file_meta", None)
        syntax = getattr(meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
        return str(item.SOPClassUID), str(syntax)
    file_meta = read_file_meta(item)
    if file_meta is not None:
        return file_meta.sop_class_uid, file_meta.transfer_syntax
    ds = dcmread(item, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _load(item: Instance) -> tuple[Dataset, str]:
    if isinstance(item, Dataset):
        return item, _header(item)[1]
    ds = dcmread(item)
    return ds, str(ds.file_meta.TransferSyntaxUID)


def _contexts(items: list[Instance]) -> list[dict[str, Any]]:
    """The presentation contexts to propose to a C-MOVE destination, at most 128 (PS3.8
    9.3.2.2): per SOP class one with Explicit VR Little Endian and every transfer syntax
    the instances are in (the destination accepts one of them), then, space permitting,
    one per transfer syntax other than Explicit VR Little Endian, so that the destination
    can accept each file's own syntax and the file go as it is."""
    by_class: dict[str, dict[str, None]] = {}
    for item in items:
        sop_class, syntax = _header(item)
        by_class.setdefault(sop_class, {ExplicitVRLittleEndian: None})[syntax] = None
    contexts = [
        {"abstract_syntax": sop_class, "transfer_syntaxes": list(syntaxes)}
        for sop_class, syntaxes in by_class.items()
    ]
    contexts += [
        {"abstract_syntax": sop_class, "transfer_syntaxes": [syntax]}
        for sop_class, syntaxes in by_class.items()
        for syntax in list(syntaxes)[1:]
    ]
    return contexts[:128]


def file_part10(path: Path, files: FileSink | None) -> dict[str, Any]:
    """The ``part10`` object of the Part 10 file at ``path``: a claim-check URI when
    ``files`` takes the file, else the file inline; only its File Meta Information is read
    for the former. Raises CodecError when the file has no preamble and ``DICM`` or its
    File Meta lacks what the bridge needs to send it as it is (Media Storage SOP Class and
    Instance UIDs, Transfer Syntax UID), OSError when it cannot be read."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        meta = part10.read_meta_prefix(lambda n: os.pread(fd, n, 0))
        size = os.fstat(fd).st_size
        uri = files(path, size) if files is not None else None
        if uri is None:
            return part10.inline_json(handle.read(), meta.dataset_offset)
    return part10.uri_json(uri, size, meta.dataset_offset)


def _instance_reply(item: Instance, bulk_data: BulkSink | None, files: FileSink | None) -> bytes:
    """The Pending reply of one instance: a path as its Part 10 file (``part10``) when its
    File Meta Information allows, else (and for a Dataset) the DICOM JSON of the data
    set."""
    if not isinstance(item, Dataset):
        try:
            document = file_part10(Path(item), files)
        except CodecError:
            pass  # not what the bridge can send as it is: the data set's JSON below
        else:
            return build_reply(PENDING, elements={"part10": document})
    dataset, syntax = _load(item)
    return build_reply(
        PENDING,
        dataset=dicomjson.dataset_to_json(dataset, bulk_data=bulk_data),
        elements={"transfer_syntax_uid": syntax},
    )


def retrieve_replies(
    result: Any,
    service: Service,
    bulk_data: BulkSink | None = None,
    files: FileSink | None = None,
) -> Iterator[bytes]:
    """Reply bodies for a C-GET or C-MOVE handler's result: the announcement (number of
    sub-operations; for C-MOVE the contexts to propose and any destination), one Pending
    reply per instance, then Success. Instance files are read one at a time; ``files``
    decides which go through the claim-check store (all inline without it), ``bulk_data``
    the same for large values of Datasets."""
    if isinstance(result, Response | int):
        yield to_response(result).encode()
        return
    retrieval = result if isinstance(result, Retrieval) else Retrieval(result or ())
    items = list(retrieval.instances)
    if not items:
        yield build_reply(0x0000)
        return
    first: dict[str, Any] = {"sub_operations": len(items), **retrieval.extra}
    if service is Service.C_MOVE:
        first["presentation_contexts"] = _contexts(items)
        if retrieval.destination is not None:
            host, port = retrieval.destination
            first["destination"] = {"host": host, "port": port}
    yield build_reply(PENDING, elements=first)
    for item in items:
        yield _instance_reply(item, bulk_data, files)
    yield build_reply(0x0000)
