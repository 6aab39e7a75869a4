"""Replies: a consumer's JSON reply -> the DIMSE answer pynetdicom sends, and the consumer's
way out (:func:`build_reply`).

Pure. Runs in pynetdicom's handler threads on the way in (:func:`parse_reply`,
:func:`reply_to_dimse`) and in the consumer SDK on the way out. The document is described
by ``schemas/reply.schema.json``; datasets use the DICOM JSON Model
(:mod:`bridge.protocol.dicomjson`). Requests are :mod:`bridge.protocol.envelope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.dataset import Dataset

from bridge.errors import CodecError, ReplyError
from bridge.protocol import dicomjson, part10
from bridge.protocol.model import ENVELOPE_VERSION, Category, Service, ServiceSpec
from bridge.protocol.values import is_tag_text, is_uid, json_object

JSONDict = dict[str, Any]

# Reply fields that become elements of the DIMSE response: reply key -> keyword.
REPLY_ELEMENTS: dict[str, str] = {
    "error_comment": "ErrorComment",
    "error_id": "ErrorID",
    "offending_element": "OffendingElement",
    "attribute_identifier_list": "AttributeIdentifierList",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
}
KEYWORD_TO_REPLY_KEY = {keyword: key for key, keyword in REPLY_ELEMENTS.items()}
STREAM_FIELDS = (
    "sub_operations",
    "transfer_syntax_uid",
    "part10",
    "destination",
    "presentation_contexts",
)


@dataclass(frozen=True)
class Reply:
    """A consumer's reply, validated for its service."""

    status: int
    category: Category
    dataset: JSONDict | None = None
    elements: Mapping[str, Any] = field(default_factory=dict)
    """Status elements and response fields by DICOM keyword, as pynetdicom wants them."""
    stream: Mapping[str, Any] = field(default_factory=dict)
    """Fields that steer a streamed service (``sub_operations``, ``destination``...)."""

    @property
    def final(self) -> bool:
        """False for a Pending reply: more replies follow."""
        return self.category is not Category.PENDING

    @property
    def part10(self) -> part10.Part10Ref | None:
        """C-GET, C-MOVE: the instance as a Part 10 file to send as it is (instead of
        ``dataset``); its ``length`` and ``dataset_offset`` are always set, and inline
        bytes are a Part 10 file whose File Meta Information says that offset."""
        ref: part10.Part10Ref | None = self.stream.get("part10")
        return ref


def _tag_list(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, str) and is_tag_text(v) for v in value):
        raise ReplyError(f"{key} must be a list of 8-hex-digit tags")
    return [int(v, 16) for v in value]


def _element(key: str, value: Any) -> Any:
    if key == "error_comment":
        if not isinstance(value, str) or len(value) > 64 or "\\" in value:
            raise ReplyError("error_comment must be a string of <= 64 chars, no '\\'")
        return value
    if key == "error_id":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ReplyError("error_id must be an integer 0..65535")
        return value
    if key in ("offending_element", "attribute_identifier_list"):
        return _tag_list(value, key)
    if key == "affected_sop_instance_uid":
        return _uid(value, key)
    raise ReplyError(f"unknown reply field {key!r}")  # pragma: no cover - keys checked first


def _uid(value: Any, key: str) -> str:
    if not isinstance(value, str) or not is_uid(value):
        raise ReplyError(f"{key} must be a UID")
    return value


def _stream_field(key: str, value: Any) -> Any:
    if key == "sub_operations":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ReplyError("sub_operations must be an integer 0..65535")
        return value
    if key == "transfer_syntax_uid":
        return _uid(value, key)
    if key == "destination":
        host = value.get("host") if isinstance(value, dict) else None
        port = value.get("port") if isinstance(value, dict) else None
        if (
            not isinstance(host, str)
            or not host
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 0 < port <= 0xFFFF
            or set(value) - {"host", "port"}
        ):
            raise ReplyError("destination must be {host, port}")
        return (host, port)
    if key == "part10":
        return _part10(value)
    if key == "presentation_contexts":
        if not isinstance(value, list) or not 0 < len(value) <= 128:
            raise ReplyError("presentation_contexts must be a list of 1..128 contexts")
        contexts = []
        for item in value:
            syntaxes = item.get("transfer_syntaxes") if isinstance(item, dict) else None
            if not isinstance(syntaxes, list) or not syntaxes:
                raise ReplyError("a presentation context needs transfer_syntaxes")
            contexts.append(
                (
                    _uid(item.get("abstract_syntax"), "abstract_syntax"),
                    tuple(_uid(ts, "transfer_syntaxes") for ts in syntaxes),
                )
            )
        return tuple(contexts)
    raise ReplyError(f"unknown reply field {key!r}")  # pragma: no cover - keys checked first


def _part10(value: Any) -> part10.Part10Ref:
    """A reply's ``part10`` (:func:`bridge.protocol.part10.from_json`); inline bytes must
    be a Part 10 file whose File Meta Information ends at ``dataset_offset``. The file
    behind a URI is checked where it is read (``bridge.scp.streams``)."""
    try:
        ref = part10.from_json(value)
        meta = part10.read_meta(ref.data) if ref.data is not None else None
    except CodecError as exc:
        raise ReplyError(f"reply {exc.message}") from exc
    if meta is not None and meta.dataset_offset != ref.dataset_offset:
        raise ReplyError("part10 dataset_offset is not where its File Meta Information ends")
    return ref


def parse_reply(body: bytes, spec: ServiceSpec) -> Reply:
    """Decode and validate a consumer's reply for ``spec``'s service.

    Raises :class:`~bridge.errors.ReplyError` with a message fit for the peer's Error
    Comment (no values from the reply) when the reply is not usable.
    """
    document = json_object(body, "consumer reply", ReplyError)
    version = document.get("version", ENVELOPE_VERSION)
    if version != ENVELOPE_VERSION:
        raise ReplyError("consumer reply has an unsupported version")
    status = document.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 0xFFFF:
        raise ReplyError("consumer reply has no integer status 0..65535")
    category = spec.statuses.category(status)
    if category is None:
        raise ReplyError(f"status 0x{status:04X} not allowed for {spec.service.dimse_name}")

    allowed = {KEYWORD_TO_REPLY_KEY[k] for k in (*spec.status_elements, *spec.reply_fields)}
    elements: dict[str, Any] = {}
    stream: dict[str, Any] = {}
    dataset: JSONDict | None = None
    for key, value in document.items():
        if key in ("status", "version") or key.startswith("x-"):
            continue
        if key == "dataset":
            if value is None:
                continue
            if spec.reply_dataset is None:
                raise ReplyError(f"{spec.service.dimse_name} reply takes no dataset")
            if not isinstance(value, dict):
                raise ReplyError("reply dataset is not a JSON object")
            dataset = value
        elif key in allowed:
            elements[REPLY_ELEMENTS[key]] = _element(key, value)
        elif key in spec.stream_fields:
            stream[key] = _stream_field(key, value)
        elif key in REPLY_ELEMENTS or key in STREAM_FIELDS:
            raise ReplyError(f"{key} not allowed for {spec.service.dimse_name}")
        else:
            raise ReplyError(f"unknown reply field {key[:32]!r}")
    if "part10" in stream:
        # The file is the instance, and its File Meta Information names the transfer
        # syntax: one source for each.
        if category is not Category.PENDING:
            raise ReplyError("part10 only in a Pending reply")
        if dataset is not None:
            raise ReplyError("reply has both dataset and part10")
        if "transfer_syntax_uid" in stream:
            raise ReplyError("transfer_syntax_uid goes with dataset, not with part10")
    return Reply(
        status=status, category=category, dataset=dataset, elements=elements, stream=stream
    )


def status_dataset(status: int, elements: Mapping[str, Any] | None = None) -> Dataset:
    """A Status dataset as pynetdicom's handlers return it: Status plus status elements.

    pynetdicom copies every element of it into the response primitive.
    """
    ds = Dataset()
    ds.Status = status
    for keyword, value in (elements or {}).items():
        setattr(ds, keyword, value)
    return ds


def reply_to_dimse(
    reply: Reply, spec: ServiceSpec, *, request_instance_uid: str | None = None
) -> tuple[Dataset, Dataset | None]:
    """The (status, dataset) pair a pynetdicom handler returns for ``reply``.

    The dataset is kept only for Success and Warning (PS3.7: the response carries it only
    then). When an N-CREATE request has no Affected SOP Instance UID, the consumer's
    ``affected_sop_instance_uid`` is required for Success and also travels as (0000,1000) in
    the Attribute List, where pynetdicom looks for it (PS3.7 10.1.5.1.4); when the request
    has one, the reply may only repeat it.
    Raises :class:`~bridge.errors.ReplyError` when the reply dataset does not decode.
    """
    instance_uid = reply.elements.get("AffectedSOPInstanceUID")
    if instance_uid is not None and request_instance_uid not in (None, instance_uid):
        raise ReplyError("affected_sop_instance_uid differs from the request's")
    status = status_dataset(reply.status, reply.elements)
    if reply.category not in (Category.SUCCESS, Category.WARNING):
        return status, None
    dataset: Dataset | None = None
    if reply.dataset is not None:
        try:
            dataset = dicomjson.json_to_dataset(reply.dataset)
        except CodecError as exc:
            raise ReplyError(f"reply dataset: {exc.message}") from exc
    if (
        spec.service is Service.N_CREATE
        and request_instance_uid is None
        and reply.category is Category.SUCCESS
    ):
        if instance_uid is None:
            raise ReplyError("N-CREATE reply needs affected_sop_instance_uid")
        dataset = dataset if dataset is not None else Dataset()
        dataset.AffectedSOPInstanceUID = instance_uid
    return status, dataset


def build_reply(
    status: int,
    *,
    dataset: JSONDict | None = None,
    elements: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode a reply (consumer side). ``elements`` uses the reply's own keys."""
    document: JSONDict = {"version": ENVELOPE_VERSION, "status": status}
    if dataset is not None:
        document["dataset"] = dataset
    for key, value in (elements or {}).items():
        if value is not None:
            document[key] = value
    return orjson.dumps(document)
