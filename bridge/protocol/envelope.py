"""The request envelope: pynetdicom ``Event`` -> JSON envelope, and the consumer's way back
in (:func:`parse_envelope`).

Pure: no I/O but through the bulk data sink and data set file callers pass, no clock
(callers pass times in). Runs in pynetdicom's handler threads. Datasets use the DICOM JSON
Model (:mod:`bridge.protocol.dicomjson`); the document is described by
``schemas/envelope.schema.json``. Replies are :mod:`bridge.protocol.reply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from bridge.errors import CodecError
from bridge.protocol import dicomjson, sopclasses
from bridge.protocol.model import ENVELOPE_VERSION, Service, routing_key
from bridge.protocol.values import tag_text

if TYPE_CHECKING:
    from pynetdicom.events import Event

JSONDict = dict[str, Any]
HeaderValue = str | int | float | bool | None
"""A value of an AMQP header the bridge sets."""

# (primitive attribute, envelope key) of every command field a request may carry.
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


class DatasetFile(dicomjson.DeferredValues, Protocol):
    """A C-STORE data set that pynetdicom received into a file
    (:class:`bridge.scp.received.ReceivedDataSet`)."""

    def load(self) -> Dataset | None:
        """The data set, its large values left in the file; None when it is empty."""
        ...


@dataclass(frozen=True)
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


def command_fields(request: Any) -> JSONDict:
    """The command fields a DIMSE request primitive carries, by envelope key."""
    fields: JSONDict = {}
    for keyword, key in COMMAND_FIELDS:
        value = getattr(request, keyword, None)
        if value is None or value == []:
            continue
        fields[key] = _command_value(keyword, value)
    return fields


def sop_class_of(fields: Mapping[str, Any], abstract_syntax: str) -> str:
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
        ds: Dataset = event.file_meta
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
) -> JSONDict:
    """The envelope for one request, as a JSON-ready dict.

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
    fields = command_fields(event.request)
    envelope: JSONDict = {
        "version": ENVELOPE_VERSION,
        "id": request_id,
        "service": service.value,
        "event": service.event_name,
        "timestamp": iso_time(event.timestamp),
        "deadline": iso_time(deadline) if deadline is not None else None,
        "association": association.as_json(),
        "context": {
            "id": context.context_id,
            "abstract_syntax": str(context.abstract_syntax),
            "transfer_syntax": str(context.transfer_syntax),
        },
        "sop_class_uid": sop_class_of(fields, str(context.abstract_syntax)),
        "request": fields,
    }
    if deadline is None:
        envelope["reply_expected"] = False
    for name in service.spec.request_datasets:
        envelope[name] = _request_dataset(event, name, bulk_data, dataset_file)
    if service.spec.streamed:
        model = sopclasses.query_model(envelope["sop_class_uid"])
        envelope["query_model"] = model
        envelope["query_level"] = check_query_level(model, envelope.get("identifier"))
    return envelope


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


def cancel_notice(envelope: Mapping[str, Any]) -> tuple[str, bytes]:
    """Routing key and body of the notice that the peer cancelled request ``envelope``:
    ``cancel.<service>.<sop class>.<calling AE>`` (the request's key behind ``cancel.``)."""
    association = envelope["association"]
    key = routing_key(
        Service(envelope["service"]), envelope["sop_class_uid"], association["calling_ae"]
    )
    body = {"version": ENVELOPE_VERSION, "type": "cancel", "id": envelope["id"],
            "service": envelope["service"]}  # fmt: skip
    return f"cancel.{key}", orjson.dumps(body)


def dumps(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document)


def headers(envelope: Mapping[str, Any], deadline: datetime | None) -> dict[str, HeaderValue]:
    """AMQP headers: routing and filtering facts plus CloudEvents attributes
    (``deadline-ms`` only when a reply is expected)."""
    association = envelope["association"]
    values: dict[str, HeaderValue] = {
        "service": envelope["service"],
        "sop-class": envelope["sop_class_uid"],
        "calling-ae": association["calling_ae"],
        "called-ae": association["called_ae"],
    }
    if deadline is not None:
        values["deadline-ms"] = int(deadline.timestamp() * 1000)
    return values | {
        "ce-specversion": "1.0",
        "ce-id": envelope["id"],
        "ce-source": f"dicom://{association['called_ae']}",
        "ce-type": f"org.dicom-bridge.{envelope['service']}.request",
        "ce-time": envelope["timestamp"],
    }


# -- consumer side -------------------------------------------------------------------------


def parse_envelope(body: bytes) -> JSONDict:
    """Decode an envelope (consumer side). Raises CodecError for anything unusable."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError("envelope is not JSON") from exc
    if not isinstance(document, dict):
        raise CodecError("envelope is not a JSON object")
    if document.get("version") != ENVELOPE_VERSION:
        raise CodecError(f"unsupported envelope version {document.get('version')!r}")
    try:
        Service(str(document.get("service")))
    except ValueError:
        raise CodecError("envelope names no known service") from None
    return document
