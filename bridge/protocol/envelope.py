"""The request envelope: pynetdicom ``Event`` -> :class:`Envelope` -> JSON, and the
consumer's way back in (:func:`parse_envelope`).

Pure: no I/O but through the bulk data sink and data set file callers pass, no clock
(callers pass times in). Runs in pynetdicom's handler threads. Datasets use the DICOM JSON
Model (:mod:`bridge.protocol.dicomjson`); the document is described by
``schemas/envelope.schema.json``. Replies are :mod:`bridge.protocol.reply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, cast

import orjson
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from bridge.errors import CodecError
from bridge.protocol import dicomjson, sopclasses
from bridge.protocol.model import ENVELOPE_VERSION, Service, routing_key
from bridge.protocol.values import json_object, tag_text

if TYPE_CHECKING:
    from pynetdicom.events import Event

JSONDict = dict[str, Any]
HeaderValue = str | int | float | bool | None
"""A value of an AMQP header the bridge sets."""

# (primitive attribute, envelope key) of every command field a request may carry, in the
# order of the envelope's ``request`` object.
COMMAND_FIELDS: tuple[tuple[str, str], ...] = (
    ("MessageID", "message_id"),
    ("Priority", "priority"),
    ("AffectedSOPClassUID", "affected_sop_class_uid"),
    ("AffectedSOPInstanceUID", "affected_sop_instance_uid"),
    ("RequestedSOPClassUID", "requested_sop_class_uid"),
    ("RequestedSOPInstanceUID", "requested_sop_instance_uid"),
    ("EventTypeID", "event_type_id"),
    ("ActionTypeID", "action_type_id"),
    ("AttributeIdentifierList", "attribute_identifier_list"),
    ("MoveOriginatorApplicationEntityTitle", "move_originator_ae_title"),
    ("MoveOriginatorMessageID", "move_originator_message_id"),
    ("MoveDestination", "move_destination"),
)
_COMMAND_KEYS = frozenset(key for _, key in COMMAND_FIELDS)


class DatasetFile(dicomjson.DeferredValues, Protocol):
    """A C-STORE data set that pynetdicom received into a file
    (:class:`bridge.scp.received.ReceivedDataSet`)."""

    def load(self) -> Dataset | None:
        """The data set, its large values left in the file; None when it is empty."""
        ...

    def file_meta(self) -> Dataset:
        """The File Meta Information in front of the data set (after :meth:`load`)."""
        ...


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """What the envelope says about the association a request came on."""

    id: str
    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None

    def as_json(self) -> JSONDict:
        return {
            "id": self.id,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": {"address": self.peer_address, "port": self.peer_port},
            "implementation_class_uid": self.implementation_class_uid,
            "implementation_version_name": self.implementation_version_name,
        }


class CommandFields(TypedDict, total=False):
    """The command fields a request carries (PS3.7), by envelope key; absent when the
    request has none. Text is stripped of padding, tags are
    :func:`~bridge.protocol.values.tag_text`."""

    message_id: int
    priority: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    event_type_id: int
    action_type_id: int
    attribute_identifier_list: list[str]
    move_originator_ae_title: str
    move_originator_message_id: int
    move_destination: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """One request as the bridge publishes it: built by :func:`build_envelope`, written
    by :meth:`to_json`, read back by :meth:`from_json`.

    Its documents (``request``, ``datasets``) are held, not copied, and go into the JSON as
    they are: nothing changes them once the envelope is built.
    """

    id: str
    """Unique per request: the AMQP correlation id."""
    service: Service
    timestamp: str
    """When pynetdicom received the request, as :func:`iso_time` writes it."""
    deadline: datetime | None
    """When the bridge stops waiting for a reply; None for a publish-only request."""
    association: AssociationInfo
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    sop_class_uid: str
    """Affected or Requested SOP Class UID (else the abstract syntax)."""
    request: CommandFields
    datasets: Mapping[str, JSONDict | None]
    """The request's datasets by name (``service.spec.request_datasets``, in that order),
    DICOM JSON Model; None for an absent optional one."""
    query_model: str | None = None
    """C-FIND/C-GET/C-MOVE: the SOP class's information model (None when unknown)."""
    query_level: str | None = None
    """C-FIND/C-GET/C-MOVE: the Identifier's Query/Retrieve Level."""
    part10: JSONDict | None = None
    """C-STORE: the data set as received, as a Part 10 file (:mod:`bridge.protocol.part10`);
    None when the request has no data set."""

    @property
    def reply_expected(self) -> bool:
        """False for a publish-only request: the peer has its answer already."""
        return self.deadline is not None

    @property
    def request_instance_uid(self) -> str | None:
        """The request's Affected SOP Instance UID, if it has one."""
        return self.request.get("affected_sop_instance_uid")

    def as_json(self) -> JSONDict:
        """The document (``schemas/envelope.schema.json``)."""
        document: JSONDict = {
            "version": ENVELOPE_VERSION,
            "id": self.id,
            "service": self.service.value,
            "event": self.service.event_name,
            "timestamp": self.timestamp,
            "deadline": iso_time(self.deadline) if self.deadline is not None else None,
            "association": self.association.as_json(),
            "context": {
                "id": self.context_id,
                "abstract_syntax": self.abstract_syntax,
                "transfer_syntax": self.transfer_syntax,
            },
            "sop_class_uid": self.sop_class_uid,
            "request": self.request,
        }
        if self.deadline is None:
            document["reply_expected"] = False
        document.update(self.datasets)
        if self.service is Service.C_STORE:
            document["part10"] = self.part10
        if self.service.spec.streamed:
            document["query_model"] = self.query_model
            document["query_level"] = self.query_level
        return document

    def to_json(self) -> bytes:
        """The message body."""
        return orjson.dumps(self.as_json())

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Envelope:
        """The envelope a document describes: the inverse of :meth:`as_json`.

        Raises CodecError when a key is missing, a command field unknown, or an id, AE
        title, peer, context, time or SOP class is of the wrong type; the other values are
        taken as they are (``schemas/envelope.schema.json`` checks them).
        """
        try:
            if document["version"] != ENVELOPE_VERSION:
                raise CodecError(f"unsupported envelope version {document['version']!r}")
            service = Service(document["service"])
            association = document["association"]
            peer = association["peer"]
            context = document["context"]
            request = dict(document["request"])
            unknown = set(request) - _COMMAND_KEYS
            if unknown:
                raise CodecError(f"unknown command field {min(unknown)[:32]!r}")
            deadline = document["deadline"]
            return cls(
                id=_typed(document["id"], str),
                service=service,
                timestamp=_typed(document["timestamp"], str),
                deadline=None if deadline is None else datetime.fromisoformat(deadline),
                association=AssociationInfo(
                    id=_typed(association["id"], str),
                    calling_ae=_typed(association["calling_ae"], str),
                    called_ae=_typed(association["called_ae"], str),
                    peer_address=_typed(peer["address"], str),
                    peer_port=_typed(peer["port"], int),
                    implementation_class_uid=association.get("implementation_class_uid"),
                    implementation_version_name=association.get("implementation_version_name"),
                ),
                context_id=_typed(context["id"], int),
                abstract_syntax=_typed(context["abstract_syntax"], str),
                transfer_syntax=_typed(context["transfer_syntax"], str),
                sop_class_uid=_typed(document["sop_class_uid"], str),
                request=cast(CommandFields, request),
                datasets={name: document[name] for name in service.spec.request_datasets},
                query_model=document.get("query_model"),
                query_level=document.get("query_level"),
                part10=document.get("part10"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"not an envelope ({type(exc).__name__})") from exc

    def routing_key(self) -> str:
        """``<service>.<sop class>.<calling AE>``."""
        return routing_key(self.service, self.sop_class_uid, self.association.calling_ae)

    def headers(self) -> dict[str, HeaderValue]:
        """AMQP headers: routing and filtering facts plus CloudEvents attributes
        (``deadline-ms`` only when a reply is expected). A new dict on every call."""
        association = self.association
        values: dict[str, HeaderValue] = {
            "service": self.service.value,
            "sop-class": self.sop_class_uid,
            "calling-ae": association.calling_ae,
            "called-ae": association.called_ae,
        }
        if self.deadline is not None:
            values["deadline-ms"] = int(self.deadline.timestamp() * 1000)
        return values | {
            "ce-specversion": "1.0",
            "ce-id": self.id,
            "ce-source": f"dicom://{association.called_ae}",
            "ce-type": f"org.dicom-bridge.{self.service.value}.request",
            "ce-time": self.timestamp,
        }

    def cancel_notice(self) -> tuple[str, bytes]:
        """Routing key and body of the notice that the peer cancelled this request:
        ``cancel.<service>.<sop class>.<calling AE>`` (the request's key behind ``cancel.``)."""
        body = {"version": ENVELOPE_VERSION, "type": "cancel", "id": self.id,
                "service": self.service.value}  # fmt: skip
        return f"cancel.{self.routing_key()}", orjson.dumps(body)


def _typed(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(kind.__name__)
    return value


# -- building ------------------------------------------------------------------------------


def iso_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: ``2026-11-28T04:36:40.123456Z``.

    A naive ``moment`` (pynetdicom's ``Event.timestamp``) is taken as local time.
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _command_value(keyword: str, value: Any) -> Any:
    if keyword == "AttributeIdentifierList":
        tags = value if isinstance(value, list) else [value]
        return [tag_text(int(Tag(t))) for t in tags]
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, BaseTag):
        return tag_text(int(value))
    return value


def command_fields(request: Any) -> CommandFields:
    """The command fields a DIMSE request primitive carries, by envelope key."""
    fields: JSONDict = {}
    for keyword, key in COMMAND_FIELDS:
        value = getattr(request, keyword, None)
        if value is None or value == []:
            continue
        fields[key] = _command_value(keyword, value)
    return cast(CommandFields, fields)


def sop_class_of(fields: CommandFields, abstract_syntax: str) -> str:
    """The SOP Class a request addresses: Affected or Requested SOP Class UID."""
    uid = fields.get("affected_sop_class_uid") or fields.get("requested_sop_class_uid")
    return str(uid or abstract_syntax)


def _request_dataset(
    event: Event,
    name: str,
    bulk_data: dicomjson.BulkDataSink | None,
    dataset_file: DatasetFile | None = None,
) -> JSONDict | None:
    deferred = None
    if name == "file_meta":
        # The Part 10 file's own File Meta when there is one: what the consumer stores.
        ds: Dataset = dataset_file.file_meta() if dataset_file is not None else event.file_meta
    elif name == "dataset" and dataset_file is not None:
        try:
            loaded = dataset_file.load()
        except Exception as exc:  # what the in-memory path below says for the same bytes
            if _disk_error(exc):
                raise
            raise CodecError(f"{name} cannot be decoded ({type(exc).__name__})") from exc
        if loaded is None:
            return None
        ds, deferred = loaded, dataset_file
    else:
        # An absent optional dataset (N-EVENT-REPORT without Event Information...) is null,
        # an empty one is {}.
        attribute = {
            "dataset": "DataSet",
            "identifier": "Identifier",
            "event_information": "EventInformation",
            "action_information": "ActionInformation",
            "attribute_list": "AttributeList",
            "modification_list": "ModificationList",
        }[name]
        stream = getattr(event.request, attribute, None)
        if stream is None or not stream.getbuffer().nbytes:
            return None
        try:
            ds = getattr(event, name)
        except Exception as exc:
            raise CodecError(f"{name} cannot be decoded ({type(exc).__name__})") from exc
    try:
        return dicomjson.dataset_to_json(ds, bulk_data=bulk_data, deferred=deferred)
    except CodecError as exc:
        raise CodecError(f"{name}: {exc.message}") from exc
    except Exception as exc:
        if _disk_error(exc):
            raise
        # pydicom parses lazily, so a broken element surfaces only here.
        raise CodecError(f"{name} cannot be decoded ({type(exc).__name__})") from exc


def _disk_error(exc: Exception) -> bool:
    """Whether ``exc`` is an error of the bridge's disk (the claim-check store, a received
    data set file), which callers report as such: an OSError with an errno. pydicom also
    raises OSError, without one, for bytes it cannot parse: that is the peer's data."""
    return isinstance(exc, OSError) and exc.errno is not None


def build_envelope(
    event: Event,
    service: Service,
    *,
    request_id: str,
    association: AssociationInfo,
    deadline: datetime | None,
    bulk_data: dicomjson.BulkDataSink | None = None,
    dataset_file: DatasetFile | None = None,
) -> Envelope:
    """The envelope for one request.

    ``dataset_file`` is the C-STORE data set when pynetdicom received it into a file
    (``event.request.DataSet`` is then empty); the envelope is the same as for the data
    set in memory, its large binary values going to ``dataset_file.claim`` instead of
    ``bulk_data``.

    Raises :class:`~bridge.errors.CodecError` when a dataset of the request cannot be
    decoded or converted, OSError (with an errno) when the claim-check store or
    ``dataset_file`` cannot be written or read. A ``deadline`` of None marks a
    publish-only request: the bridge has answered the peer already and expects no reply
    (``"reply_expected": false``).
    """
    context = event.context
    abstract_syntax = str(context.abstract_syntax)
    fields = command_fields(event.request)
    sop_class_uid = sop_class_of(fields, abstract_syntax)
    datasets = {
        name: _request_dataset(event, name, bulk_data, dataset_file)
        for name in service.spec.request_datasets
    }
    model = level = None
    if service.spec.streamed:
        model = sopclasses.query_model(sop_class_uid)
        level = check_query_level(model, datasets.get("identifier"))
    return Envelope(
        id=request_id,
        service=service,
        timestamp=iso_time(event.timestamp),
        deadline=deadline,
        association=association,
        context_id=context.context_id,
        abstract_syntax=abstract_syntax,
        transfer_syntax=str(context.transfer_syntax),
        sop_class_uid=sop_class_uid,
        request=fields,
        datasets=datasets,
        query_model=model,
        query_level=level,
    )


def check_query_level(model: str | None, identifier: JSONDict | None) -> str | None:
    """The Query/Retrieve Level (0008,0052) of ``identifier``; for the hierarchical models
    it must be one the model has (PS3.4 C.6), else CodecError (answered with 0xA900)."""
    element = (identifier or {}).get("00080052") or {}
    values = element.get("Value") or [None]
    level = values[0] if isinstance(values[0], str) else None
    allowed = sopclasses.LEVELS.get(model or "")
    if allowed is not None and level not in allowed:
        shown = "missing" if level is None else "not one of " + "/".join(allowed)
        raise CodecError(f"Query/Retrieve Level {shown}"[:64])
    return level


# -- consumer side -------------------------------------------------------------------------


def parse_envelope(body: bytes) -> JSONDict:
    """Decode an envelope (consumer side) into its document, checking only its version
    and service. Raises CodecError for anything unusable."""
    document = json_object(body, "envelope", CodecError)
    if document.get("version") != ENVELOPE_VERSION:
        raise CodecError(f"unsupported envelope version {document.get('version')!r}")
    try:
        Service(str(document.get("service")))
    except ValueError:
        raise CodecError("envelope names no known service") from None
    return document
