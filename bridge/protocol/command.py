"""Commands: what a consumer asks the bridge to perform as an SCU, and the replies it gets.

Pure: no I/O, no clock (callers pass ``now``), no logging. A command document
(``schemas/command.schema.json``) names a service, a destination AE and the request's
command fields and datasets, with the same keys the envelope uses for requests the bridge
receives (``request.event_type_id``, ``event_information``, ...), so that a consumer can
turn an envelope into a command by changing little. :func:`parse_command` validates one
into a :class:`Command`; :func:`decode_datasets` turns its DICOM JSON into pydicom
datasets and :func:`part10_meta` checks the Part 10 file a C-STORE command may carry
instead; :func:`reply_body` builds the documents of ``schemas/command-reply.schema.json``.
The builders (:func:`echo`, :func:`store`, ..., :func:`find`) write command documents for
a sender to publish.

Every error is a :class:`CommandError` with a :class:`Reason` that the reply carries; its
message names fields, tags and VRs, never values, so it is safe to log and to send.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Final, Literal, TypedDict, Unpack

import orjson
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.status import code_to_category

from bridge.errors import BridgeError, CodecError, Failure
from bridge.protocol import dicomjson, sopclasses
from bridge.protocol.model import ENVELOPE_VERSION, Service, routing_word
from bridge.protocol.part10 import FileMeta, Part10Ref, from_json, read_meta, read_meta_prefix
from bridge.protocol.values import is_ae_title, is_loose_uid, is_tag_text, is_uid, json_object

JSONDict = dict[str, Any]

COMMAND_VERSION: Final = ENVELOPE_VERSION
"""Version of command and command-reply documents (``"version"`` in both)."""

ROUTING_PREFIX: Final = "command"
"""Commands are published with routing key ``command.<service>.<destination AE>``."""

SERVICES: Final = (
    Service.C_ECHO,
    Service.C_STORE,
    Service.C_FIND,
    Service.N_EVENT_REPORT,
    Service.N_GET,
    Service.N_SET,
    Service.N_ACTION,
    Service.N_CREATE,
    Service.N_DELETE,
)
"""The services the bridge performs as an SCU."""


class Reason(StrEnum):
    """Why the bridge could not get (all of) a DIMSE answer for a command."""

    BAD_COMMAND = "bad-command"
    """Not JSON, fails the command schema, or asks for something the service lacks."""
    BAD_DATASET = "bad-dataset"
    """A dataset of the command does not decode or encode (or a response dataset does
    not convert to DICOM JSON)."""
    UNKNOWN_DESTINATION = "unknown-destination"
    """The AE title is not in the AE table and the command names no host and port."""
    EXPIRED = "expired"
    """The command's deadline passed before it was sent."""
    REFUSED = "refused"
    """The peer rejected the association or accepted no presentation context for it."""
    UNAVAILABLE = "unavailable"
    """No association could be opened (connection refused, unreachable, ACSE timeout) in
    the retry budget, or the bridge is shutting down."""
    TIMEOUT = "timeout"
    """The request was sent and no response came within the DIMSE timeout."""
    ABORTED = "aborted"
    """The association was aborted or lost while the request was outstanding."""
    INTERNAL = "internal"
    """A bug in the bridge; logged with a traceback."""


_PERMANENT: Final = frozenset(
    {Reason.BAD_COMMAND, Reason.BAD_DATASET, Reason.UNKNOWN_DESTINATION, Reason.EXPIRED}
)
_FAILURES: Final = {
    Reason.BAD_COMMAND: Failure.BAD_REQUEST,
    Reason.BAD_DATASET: Failure.BAD_REQUEST,
    Reason.UNAVAILABLE: Failure.UNAVAILABLE,
    Reason.TIMEOUT: Failure.TIMEOUT,
}


class CommandError(BridgeError):
    """A command cannot be performed (completely). ``permanent`` errors can never succeed:
    the command is dead-lettered after its error reply."""

    def __init__(self, reason: Reason, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = reason in _PERMANENT if permanent is None else permanent
        self.failure = _FAILURES.get(reason, Failure.INTERNAL)

    def as_json(self) -> JSONDict:
        return {"reason": self.reason.value, "message": self.message[:256]}


def _bad(message: str) -> CommandError:
    return CommandError(Reason.BAD_COMMAND, message)


# -- the command --------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a command goes: the Called AE title and, optionally, its address (else the
    AE table has it)."""

    ae_title: str
    host: str | None = None
    port: int | None = None

    def as_json(self) -> JSONDict:
        document: JSONDict = {"ae_title": self.ae_title}
        if self.host is not None:
            document.update(host=self.host, port=self.port)
        return document


@dataclass(frozen=True)
class RequestFields:
    """The command fields of the DIMSE request, as in the envelope's ``request``."""

    message_id: int | None = None
    priority: int | None = None
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_class_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    action_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None
    meta_sop_class_uid: str | None = None


@dataclass(frozen=True)
class Command:
    """A validated command. Datasets stay DICOM JSON until :func:`decode_datasets`."""

    id: str
    service: Service
    destination: Destination
    request: RequestFields = field(default_factory=RequestFields)
    datasets: Mapping[str, JSONDict | None] = field(default_factory=dict)
    """By envelope key: ``dataset``, ``file_meta``, ``identifier``, ``event_information``..."""
    calling_ae: str | None = None
    deadline: datetime | None = None
    role: Literal["scu", "scp"] = "scu"
    """``scp``: propose SCP/SCU role selection as the SCP of the SOP class (PS3.7 D.3.3.4),
    the default for N-EVENT-REPORT, which the SCP of a class sends (PS3.4 J.3.3)."""
    transfer_syntax_uid: str | None = None
    """C-STORE: the transfer syntax the dataset is in (its pixel data stays as it is)."""
    part10: Part10Ref | None = None
    """C-STORE: the instance as a DICOM Part 10 file, instead of ``dataset``: its data set
    is sent as it is (see :func:`part10_meta`)."""

    @property
    def sop_class_uid(self) -> str | None:
        """The SOP class the request addresses, when the command names it."""
        r = self.request
        if self.service is Service.C_ECHO:
            return sopclasses.VERIFICATION
        return r.affected_sop_class_uid or r.requested_sop_class_uid

    def expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline

    def bulk_uris(self) -> list[str]:
        """Every ``BulkDataURI`` in the command's datasets and its ``part10`` (claim-check
        files)."""
        uris: list[str] = []
        for document in self.datasets.values():
            if document is not None:
                _collect_uris(document, uris)
        if self.part10 is not None and self.part10.uri is not None:
            uris.append(self.part10.uri)
        return uris


def _collect_uris(document: Mapping[str, Any], uris: list[str]) -> None:
    for attribute in document.values():
        if not isinstance(attribute, Mapping):
            continue
        uri = attribute.get("BulkDataURI")
        if isinstance(uri, list) and len(uri) == 1:
            uri = uri[0]
        if isinstance(uri, str):
            uris.append(uri)
        for item in attribute.get("Value") or ():
            if isinstance(item, Mapping) and attribute.get("vr") == "SQ":
                _collect_uris(item, uris)


def routing_key(service: Service | str, ae_title: str) -> str:
    """``command.<service>.<destination AE>``: the AE title stripped of padding and
    percent-encoded like the calling AE of request routing keys (so is a service name
    that is not one: the bridge answers such a command with ``bad-command``)."""
    return f"{ROUTING_PREFIX}.{routing_word(service)}.{routing_word(ae_title.strip()) or '-'}"


# -- validation ---------------------------------------------------------------------------

_N_CLASS = ("message_id", "meta_sop_class_uid")
_REQUESTED = ("requested_sop_class_uid", "requested_sop_instance_uid")
# Request fields each service takes, and those it needs.
FIELDS: Final[dict[Service, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    Service.C_ECHO: (("message_id",), ()),
    Service.C_STORE: (
        (
            "message_id",
            "priority",
            "affected_sop_class_uid",
            "affected_sop_instance_uid",
            "move_originator_ae_title",
            "move_originator_message_id",
        ),
        (),
    ),
    Service.C_FIND: (("message_id", "priority", "affected_sop_class_uid"), ()),
    Service.N_EVENT_REPORT: (
        (*_N_CLASS, "affected_sop_class_uid", "affected_sop_instance_uid", "event_type_id"),
        ("affected_sop_class_uid", "affected_sop_instance_uid", "event_type_id"),
    ),
    Service.N_GET: ((*_N_CLASS, *_REQUESTED, "attribute_identifier_list"), _REQUESTED),
    Service.N_SET: ((*_N_CLASS, *_REQUESTED), _REQUESTED),
    Service.N_ACTION: (
        (*_N_CLASS, *_REQUESTED, "action_type_id"),
        (*_REQUESTED, "action_type_id"),
    ),
    Service.N_CREATE: (
        (*_N_CLASS, "affected_sop_class_uid", "affected_sop_instance_uid"),
        ("affected_sop_class_uid",),
    ),
    Service.N_DELETE: ((*_N_CLASS, *_REQUESTED), _REQUESTED),
}
REQUIRED_DATASETS: Final = {
    Service.C_STORE: "dataset",
    Service.C_FIND: "identifier",
    Service.N_SET: "modification_list",
}
_TOP_LEVEL = frozenset(
    {"version", "id", "service", "destination", "calling_ae", "deadline", "request", "role",
     "transfer_syntax_uid", "query_model", "part10"}
)  # fmt: skip


def _uid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not is_uid(value):
        raise _bad(f"{name} must be a UID")
    return value


def _ushort(value: Any, name: str, high: int = 0xFFFF) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise _bad(f"{name} must be an integer 0..{high}")
    return value


def _ae(value: Any, name: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not is_ae_title(text):
        raise _bad(f"{name} must be an AE title of 1-16 characters")
    return text


def _request_field(key: str, value: Any) -> Any:
    if key.endswith("_uid"):
        return _uid(value, f"request.{key}")
    if key == "priority":
        return _ushort(value, "request.priority", 2)
    if key == "move_originator_ae_title":
        return _ae(value, "request.move_originator_ae_title")
    if key == "attribute_identifier_list":
        if not isinstance(value, list) or not all(
            isinstance(v, str) and is_tag_text(v) for v in value
        ):
            raise _bad("request.attribute_identifier_list must be a list of 8-hex-digit tags")
        return tuple(int(v, 16) for v in value)
    return _ushort(value, f"request.{key}")


def _request(service: Service, value: Any) -> RequestFields:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("request must be an object")
    allowed, required = FIELDS[service]
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        if key.startswith("x-"):
            continue
        if key not in allowed:
            raise _bad(f"request.{key[:40]} not allowed for {service.dimse_name}")
        if item is not None:
            parsed[key] = _request_field(key, item)
    missing = [key for key in required if key not in parsed]
    if missing:
        raise _bad(f"{service.dimse_name} needs request.{missing[0]}")
    return RequestFields(**parsed)


def _destination(value: Any) -> Destination:
    if not isinstance(value, dict):
        raise _bad("destination must be an object with ae_title")
    if value.keys() - {"ae_title", "host", "port"}:
        raise _bad("destination takes ae_title, host and port only")
    title = _ae(value.get("ae_title"), "destination.ae_title")
    host, port = value.get("host"), value.get("port")
    if host is None and port is None:
        return Destination(title)
    if not isinstance(host, str) or not 0 < len(host) <= 255:
        raise _bad("destination.host must be a host name or address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise _bad("destination.port must be an integer 1..65535")
    return Destination(title, host, port)


def _deadline(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _bad("deadline must be an RFC 3339 date-time with a time zone")
    return moment


@functools.cache
def find_models() -> dict[str, str]:
    """C-FIND information models by name (``study-root``, ``modality-worklist``...) ->
    the SOP Class UID of their FIND class."""
    models: dict[str, str] = {}
    for name in dir(pynetdicom_sop_class):
        uid = getattr(pynetdicom_sop_class, name)
        if not isinstance(uid, pynetdicom_sop_class.SOPClass):
            continue
        if not (name.endswith("Find") or name.endswith("Query")):
            continue
        model = sopclasses.query_model(str(uid))
        if model is not None:
            models.setdefault(model, str(uid))
    return models


def _dataset_field(name: str, value: Any) -> JSONDict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(f"{name} must be a DICOM JSON object or null")
    return value


def _part10(document: dict[str, Any]) -> Part10Ref | None:
    """The C-STORE command's ``part10`` (decoded when inline), checked as the schema
    checks it; the file's content is checked by :func:`part10_meta`."""
    if "part10" not in document:
        return None
    if document.get("service") != Service.C_STORE.value:
        raise _bad("part10 is for C-STORE only")
    for other in ("dataset", "file_meta", "transfer_syntax_uid"):
        if other in document:
            raise _bad(f"{other} not allowed with part10 (the Part 10 file has its own)")
    try:
        return from_json(document["part10"])
    except CodecError as exc:
        raise _bad(exc.message) from None


def parse_command(body: bytes, *, default_id: str | None = None) -> Command:
    """Validate a command document. ``default_id`` (the AMQP correlation id) names it when
    it has no ``id``. Raises :class:`CommandError` (``bad-command``) naming the first
    problem; datasets are only checked to be objects here (see :func:`decode_datasets`).
    """
    document = json_object(body, "command", _bad)
    if document.get("version") != COMMAND_VERSION:
        raise _bad(f"command needs version {COMMAND_VERSION}")
    try:
        service = Service(str(document.get("service")))
    except ValueError:
        service = None
    if service not in SERVICES:
        raise _bad("service must be one of " + ", ".join(s.value for s in SERVICES))
    datasets_allowed = service.spec.request_datasets
    for key in document:
        if key not in _TOP_LEVEL and key not in datasets_allowed and not key.startswith("x-"):
            raise _bad(f"{key[:40]} not allowed in a {service.dimse_name} command")
    command_id = document.get("id", default_id)
    if command_id is None:
        command_id = str(uuid.uuid4())
    if not isinstance(command_id, str) or not 0 < len(command_id) <= 128:
        raise _bad("id must be a string of 1-128 characters")
    datasets = {
        name: _dataset_field(name, document.get(name))
        for name in datasets_allowed
        if name in document
    }
    stored_file = _part10(document)
    required = REQUIRED_DATASETS.get(service)
    if required is not None and datasets.get(required) is None and stored_file is None:
        alternative = " or part10" if service is Service.C_STORE else ""
        raise _bad(f"{service.dimse_name} needs {required}{alternative}")
    request = _request(service, document.get("request"))
    role = document.get("role", "scp" if service is Service.N_EVENT_REPORT else "scu")
    if role not in ("scu", "scp"):
        raise _bad("role must be scu or scp")
    if role == "scp" and service is not Service.N_EVENT_REPORT:
        raise _bad("role scp is for N-EVENT-REPORT only")
    syntax = document.get("transfer_syntax_uid")
    if syntax is not None:
        if service is not Service.C_STORE:
            raise _bad("transfer_syntax_uid is for C-STORE only")
        syntax = _uid(syntax, "transfer_syntax_uid")
    model = document.get("query_model")
    if model is not None or service is Service.C_FIND:
        request = _with_find_model(service, request, model)
    calling = document.get("calling_ae")
    return Command(
        id=command_id,
        service=service,
        destination=_destination(document.get("destination")),
        request=request,
        datasets=datasets,
        calling_ae=None if calling is None else _ae(calling, "calling_ae"),
        deadline=_deadline(document.get("deadline")),
        role=role,
        transfer_syntax_uid=syntax,
        part10=stored_file,
    )


def _with_find_model(service: Service, request: RequestFields, model: Any) -> RequestFields:
    if service is not Service.C_FIND:
        raise _bad("query_model is for C-FIND only")
    if model is None:
        if request.affected_sop_class_uid is None:
            raise _bad("C-FIND needs query_model or request.affected_sop_class_uid")
        return request
    uid = find_models().get(model) if isinstance(model, str) else None
    if uid is None:
        raise _bad("query_model must be one of " + ", ".join(sorted(find_models())))
    if request.affected_sop_class_uid not in (None, uid):
        raise _bad("query_model and request.affected_sop_class_uid differ")
    return RequestFields(**{**vars(request), "affected_sop_class_uid": uid})


# -- datasets -----------------------------------------------------------------------------


def decode_datasets(
    command: Command, bulk_data: dicomjson.BulkDataSource | None = None
) -> dict[str, Dataset | None]:
    """The command's datasets as pydicom Datasets, checked to be encodable (text in its
    Specific Character Set). For C-STORE the dataset gets ``file_meta`` with the transfer
    syntax to send it in, and must have its SOP Class and Instance UIDs, matching the
    request's when it gives them (a C-STORE of a Part 10 file has no datasets: see
    :func:`part10_meta`). Raises :class:`CommandError` (``bad-dataset``)."""
    decoded: dict[str, Dataset | None] = {}
    for name, document in command.datasets.items():
        if document is None:
            decoded[name] = None
            continue
        try:
            ds = dicomjson.json_to_dataset(document, bulk_data=bulk_data)
        except BridgeError as exc:
            raise CommandError(Reason.BAD_DATASET, f"{name}: {exc.message}") from exc
        check_encodable(ds, name)
        decoded[name] = ds
    if command.service is Service.C_STORE and command.part10 is None:
        _prepare_store(command, decoded)
    return decoded


def part10_meta(command: Command, read: Callable[[int], bytes]) -> FileMeta:
    """The File Meta Information of a C-STORE command's Part 10 file, which ``read(n)``
    reads the first ``n`` bytes of (see :func:`bridge.protocol.part10.read_meta_prefix`):
    its transfer syntax, and the SOP Class and Instance UIDs of the request, which must
    match the request's when it gives them. The data set itself is not looked at: it is
    sent as it is. Raises :class:`CommandError` (``bad-dataset``) when the file is not a
    Part 10 file or its File Meta Information lacks one of the three; OSError from
    ``read``."""
    try:
        meta = read_meta_prefix(read)
    except CodecError as exc:
        raise CommandError(Reason.BAD_DATASET, f"part10: {exc.message}") from None
    for name, value, given in (
        ("Media Storage SOP Class UID", meta.sop_class_uid,
         command.request.affected_sop_class_uid),
        ("Media Storage SOP Instance UID", meta.sop_instance_uid,
         command.request.affected_sop_instance_uid),
        ("Transfer Syntax UID", meta.transfer_syntax, None),
    ):  # fmt: skip
        if not is_loose_uid(value):
            raise CommandError(Reason.BAD_DATASET, f"part10: {name} is not a UID")
        if given is not None and value != given:
            raise CommandError(Reason.BAD_DATASET, f"part10: {name} differs from the request's")
    return meta


def _prepare_store(command: Command, decoded: dict[str, Dataset | None]) -> None:
    dataset = decoded.get("dataset")
    assert dataset is not None  # parse_command requires it
    meta = decoded.pop("file_meta", None)
    for keyword, given in (
        ("SOPClassUID", command.request.affected_sop_class_uid),
        ("SOPInstanceUID", command.request.affected_sop_instance_uid),
    ):
        value = dataset.get(keyword)
        if not value:
            raise CommandError(Reason.BAD_DATASET, f"dataset has no {keyword}")
        if given is not None and str(value) != given:
            raise CommandError(Reason.BAD_DATASET, f"dataset {keyword} differs from the request's")
    syntax = command.transfer_syntax_uid or (
        str(meta.get("TransferSyntaxUID") or "") if meta is not None else ""
    )
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(syntax or ExplicitVRLittleEndian)


_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def check_encodable(ds: Dataset, name: str) -> None:
    """Raise :class:`CommandError` (``bad-dataset``) when a text value cannot be written in
    the dataset's Specific Character Set (pydicom would substitute '?', losing data)."""
    _check_text(ds, name, _encodings(ds.get("SpecificCharacterSet")))


def _encodings(charset: Any) -> list[str]:
    """Python codecs of a Specific Character Set. The default repertoire is ASCII
    (PS3.5 6.1.2.1), although pydicom would write Latin-1 for it."""
    terms = [t for t in (charset if isinstance(charset, list) else [charset]) if t]
    if not terms or terms == ["ISO_IR 6"]:
        return ["ascii"]
    return list(convert_encodings(terms))


def _check_text(ds: Dataset, name: str, encodings: list[str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                inner = item.get("SpecificCharacterSet")
                _check_text(item, name, _encodings(inner) if inner else encodings)
            continue
        if elem.VR not in _CHARSET_VRS or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, list) else [elem.value]
        for value in values:
            text = str(value)
            if not all(_encodes(char, encodings) for char in frozenset(text)):
                raise CommandError(
                    Reason.BAD_DATASET,
                    f"{name}: ({elem.tag.group:04X},{elem.tag.element:04X}) {elem.VR}: text "
                    "not representable in its Specific Character Set",
                )


def _encodes(char: str, encodings: list[str]) -> bool:
    if char.isascii():
        return True
    for encoding in encodings:
        try:
            char.encode(encoding)
        except (UnicodeError, LookupError):
            continue
        return True
    return False


# -- replies ------------------------------------------------------------------------------

# Status dataset keyword -> reply key.
STATUS_ELEMENTS: Final = {
    "ErrorComment": "error_comment",
    "ErrorID": "error_id",
    "OffendingElement": "offending_element",
    "AttributeIdentifierList": "attribute_identifier_list",
    "AffectedSOPClassUID": "affected_sop_class_uid",
    "AffectedSOPInstanceUID": "affected_sop_instance_uid",
    "EventTypeID": "event_type_id",
    "ActionTypeID": "action_type_id",
}
_TAG_KEYS = frozenset({"offending_element", "attribute_identifier_list"})


def status_fields(status: Dataset) -> JSONDict:
    """Status (0000,0900), its category and the status elements of a DIMSE response."""
    code = int(status.Status)
    fields: JSONDict = {"status": code, "category": category(code)}
    for keyword, key in STATUS_ELEMENTS.items():
        value = status.get(keyword)
        if value is None or value == "":
            continue
        if key in _TAG_KEYS:
            tags = [value] if isinstance(value, int) else list(value)
            fields[key] = [f"{int(BaseTag(Tag(t))):08X}" for t in tags]
        elif isinstance(value, bytes):
            fields[key] = value.decode("ascii", "replace").strip()
        elif isinstance(value, int):
            fields[key] = int(value)
        else:
            fields[key] = str(value).strip()
    return fields


def category(code: int) -> str:
    """PS3.7 Annex C category of any status code: success, warning, failure, cancel,
    pending."""
    return str(code_to_category(code)).lower()


def reply_body(
    command_id: str,
    service: Service,
    *,
    final: bool = True,
    status: Dataset | None = None,
    dataset: JSONDict | None = None,
    error: CommandError | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """A command reply. ``status`` is pynetdicom's status dataset of the peer's response
    (absent when there was none); ``error`` says why the bridge could not do all of it."""
    document: JSONDict = {
        "version": COMMAND_VERSION,
        "id": command_id,
        "service": service.value,
        "final": final,
    }
    if status is not None and "Status" in status:
        document.update(status_fields(status))
    if dataset is not None:
        document["dataset"] = dataset
    if error is not None:
        document["error"] = error.as_json()
    document.update(extra or {})
    return orjson.dumps(document)


def error_body(command_id: str, service: Service | None, error: CommandError) -> bytes:
    """The final reply of a command that could not be performed at all (service may be
    unknown for a command that did not parse)."""
    document: JSONDict = {
        "version": COMMAND_VERSION,
        "id": command_id,
        "service": service.value if service is not None else None,
        "final": True,
        "error": error.as_json(),
    }
    return orjson.dumps(document)


def encode_response_dataset(
    ds: Dataset | None, sink: dicomjson.BulkDataSink | None = None
) -> JSONDict | None:
    """A peer's response dataset as DICOM JSON (None stays None). Raises
    :class:`CommandError` (``bad-dataset``, not permanent) when it has no JSON form."""
    if ds is None:
        return None
    try:
        return dicomjson.dataset_to_json(ds, bulk_data=sink)
    except BridgeError as exc:
        raise CommandError(
            Reason.BAD_DATASET, f"response dataset: {exc.message}", permanent=False
        ) from exc
    except Exception as exc:  # pydicom decodes lazily: a broken element surfaces here
        raise CommandError(
            Reason.BAD_DATASET,
            f"response dataset cannot be decoded ({type(exc).__name__})",
            permanent=False,
        ) from exc


# -- building commands --------------------------------------------------------------------
# Pure like the rest: a builder's document has no ``id`` and its ``deadline``, if any, is
# relative. The sender (bridge.sdk.client) encodes its pydicom Datasets, names it and
# stamps the deadline when it publishes it. The N-SET builder is named ``set``: in this
# module, the builtin is ``frozenset`` or a set display.

DatasetLike = Dataset | JSONDict
"""A dataset of a command: a pydicom Dataset (the sender encodes it) or DICOM JSON."""

Part10Source = str | PurePath | bytes | bytearray | memoryview
"""A DICOM Part 10 file for a C-STORE command: its path, or its bytes."""


class BuildOptions(TypedDict, total=False):
    """Keyword options every builder takes."""

    host: str | None
    """With ``port``: the destination's address (else the bridge's AE table has it)."""
    port: int | None
    calling_ae: str | None
    """The Calling AE title for this command (default the bridge's)."""
    timeout: float | None
    """Seconds the command is good for once sent: its ``deadline``, a
    :class:`~datetime.timedelta` until the sender stamps the time (and waits as long for
    each reply)."""
    request: Mapping[str, Any] | None
    """More request fields (``message_id``, ``meta_sop_class_uid``, ...)."""


def build(
    service: Service | str,
    ae_title: str,
    *,
    request: Mapping[str, Any] | None = None,
    datasets: Mapping[str, DatasetLike | None] | None = None,
    host: str | None = None,
    port: int | None = None,
    calling_ae: str | None = None,
    timeout: float | None = None,
    **fields: Any,
) -> JSONDict:
    """Any command document (``schemas/command.schema.json``, but for ``id`` and the
    deadline, see above): request fields and top-level ``fields`` that are None are left
    out; datasets are kept as given, None too."""
    destination: JSONDict = {"ae_title": ae_title}
    if host is not None or port is not None:
        destination.update(host=host, port=port)
    document: JSONDict = {
        "version": COMMAND_VERSION,
        "service": Service(service).value,
        "destination": destination,
    }
    if timeout:
        document["deadline"] = timedelta(seconds=timeout)
    fields_of_request = {k: v for k, v in (request or {}).items() if v is not None}
    if fields_of_request:
        document["request"] = fields_of_request
    document.update(datasets or {})
    fields["calling_ae"] = calling_ae
    document.update({k: v for k, v in fields.items() if v is not None})
    return document


def _options(options: BuildOptions, **request: Any) -> BuildOptions:
    """``options`` with the fields of ``request`` that are not None added to its request
    fields (over those of the same name)."""
    given = {k: v for k, v in request.items() if v is not None}
    return {**options, "request": {**(options.get("request") or {}), **given}}


def _requested(
    options: BuildOptions, sop_class_uid: str, sop_instance_uid: str, **more: Any
) -> BuildOptions:
    return _options(
        options,
        requested_sop_class_uid=sop_class_uid,
        requested_sop_instance_uid=sop_instance_uid,
        **more,
    )


def echo(ae: str, **options: Unpack[BuildOptions]) -> JSONDict:
    """C-ECHO."""
    return build(Service.C_ECHO, ae, **options)


def store(
    ae: str,
    dataset: DatasetLike | Part10Source,
    *,
    priority: int | None = None,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
    transfer_syntax_uid: str | None = None,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """C-STORE of ``dataset``: a pydicom Dataset or DICOM JSON (``transfer_syntax_uid``
    is the encoding its values are in, by default its ``file_meta``'s when it has one),
    or a DICOM Part 10 file, by path (``str`` or :class:`~pathlib.Path`) or as
    ``bytes``, whose data set the bridge sends as it is when the peer accepts the file's
    transfer syntax.

    A file goes in the document as ``part10`` (a :class:`~pathlib.Path` or ``bytes``
    until the sender reads or links it: :meth:`bridge.sdk.client.CommandClient.prepare`).
    Raises ValueError for bytes that are not a Part 10 file (missing preamble, ``DICM``,
    Transfer Syntax or Media Storage SOP Class or Instance UID) and for a
    ``transfer_syntax_uid`` given with a file (its File Meta names it); the sender
    checks a file at a path the same way."""
    fields = _options(
        options,
        priority=priority,
        move_originator_ae_title=move_originator_ae_title,
        move_originator_message_id=move_originator_message_id,
    )
    if isinstance(dataset, str | PurePath | bytes | bytearray | memoryview):
        if transfer_syntax_uid is not None:
            raise ValueError("transfer_syntax_uid: a Part 10 file's is in its File Meta")
        source: Path | bytes
        if isinstance(dataset, str | PurePath):
            source = Path(dataset)
        else:
            source = bytes(dataset)
            try:
                read_meta(source)
            except CodecError as exc:
                raise ValueError(exc.message) from None
        return build(Service.C_STORE, ae, part10=source, **fields)
    if transfer_syntax_uid is None:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        transfer_syntax_uid = str(syntax) if syntax else None
    return build(
        Service.C_STORE,
        ae,
        datasets={"dataset": dataset},
        transfer_syntax_uid=transfer_syntax_uid,
        **fields,
    )


def event_report(
    ae: str,
    event_type_id: int,
    event_information: DatasetLike | None,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    role: Literal["scu", "scp"] = "scp",
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """N-EVENT-REPORT. The bridge proposes to be the SCP of the class (role selection)
    unless ``role="scu"``."""
    return build(
        Service.N_EVENT_REPORT,
        ae,
        datasets={"event_information": event_information},
        role=role,
        **_options(
            options,
            event_type_id=event_type_id,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid,
        ),
    )


def action(
    ae: str,
    action_type_id: int,
    action_information: DatasetLike | None,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """N-ACTION."""
    return build(
        Service.N_ACTION,
        ae,
        datasets={"action_information": action_information},
        **_requested(options, sop_class_uid, sop_instance_uid, action_type_id=action_type_id),
    )


def create(
    ae: str,
    attribute_list: DatasetLike | None,
    *,
    sop_class_uid: str,
    sop_instance_uid: str | None = None,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """N-CREATE; without ``sop_instance_uid`` the peer assigns one."""
    return build(
        Service.N_CREATE,
        ae,
        datasets={"attribute_list": attribute_list},
        **_options(
            options,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid,
        ),
    )


def set(  # the service's name, shadowing the builtin here: see the section's comment
    ae: str,
    modification_list: DatasetLike,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """N-SET."""
    return build(
        Service.N_SET,
        ae,
        datasets={"modification_list": modification_list},
        **_requested(options, sop_class_uid, sop_instance_uid),
    )


def get(
    ae: str,
    attribute_identifier_list: Sequence[int] | None = None,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """N-GET of the given tags (every attribute when None)."""
    tags = None
    if attribute_identifier_list is not None:
        tags = [f"{tag:08X}" for tag in attribute_identifier_list]
    return build(
        Service.N_GET,
        ae,
        **_requested(options, sop_class_uid, sop_instance_uid, attribute_identifier_list=tags),
    )


def delete(
    ae: str, *, sop_class_uid: str, sop_instance_uid: str, **options: Unpack[BuildOptions]
) -> JSONDict:
    """N-DELETE."""
    return build(Service.N_DELETE, ae, **_requested(options, sop_class_uid, sop_instance_uid))


def find(
    ae: str,
    identifier: DatasetLike,
    *,
    query_model: str | None = "study-root",
    sop_class_uid: str | None = None,
    priority: int | None = None,
    **options: Unpack[BuildOptions],
) -> JSONDict:
    """C-FIND: ``query_model`` (``study-root``, ``patient-root``, ``modality-worklist``,
    ...) or ``sop_class_uid`` names the information model."""
    return build(
        Service.C_FIND,
        ae,
        datasets={"identifier": identifier},
        query_model=None if sop_class_uid else query_model,
        **_options(options, affected_sop_class_uid=sop_class_uid, priority=priority),
    )
