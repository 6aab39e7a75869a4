"""The request envelope (bridge/protocol/envelope.py): what it writes, byte for byte, what
is derived from it (routing key, headers, cancel notice), and reading it back."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import orjson
import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import dimse_primitives, evt
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from bridge.errors import CodecError
from bridge.protocol.envelope import (
    AssociationInfo,
    Envelope,
    build_envelope,
    iso_time,
    parse_envelope,
)
from bridge.protocol.model import Service, routing_key
from tests.schemas import validate_envelope

ID = "58493bfa-d7c3-4f75-94ba-6025738ce396"
TIMESTAMP = datetime(2026, 11, 28, 4, 57, 44, 516640, tzinfo=UTC)
DEADLINE = datetime(2026, 11, 28, 4, 57, 54, 516704, tzinfo=UTC)
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
COMMITMENT = "1.2.840.10008.1.20.1"
INFO = AssociationInfo(
    "7b431b86-c608-448c-a313-7109efc3ce6c", "MY.AE", "DICOM-BRIDGE", "127.0.0.1", 34557,
    "1.2.826.0.1.3680043.9.3811.3.0.4", "PYNETDICOM_304",
)  # fmt: skip
ASSOCIATION_JSON = {
    "id": "7b431b86-c608-448c-a313-7109efc3ce6c",
    "calling_ae": "MY.AE",
    "called_ae": "DICOM-BRIDGE",
    "peer": {"address": "127.0.0.1", "port": 34557},
    "implementation_class_uid": "1.2.826.0.1.3680043.9.3811.3.0.4",
    "implementation_version_name": "PYNETDICOM_304",
}


def _context_json(abstract_syntax: str) -> dict[str, Any]:
    return {"id": 5, "abstract_syntax": abstract_syntax, "transfer_syntax": "1.2.840.10008.1.2.1"}


def _encoded(**elements: Any) -> BytesIO:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    data = encode(ds, False, True)
    assert data is not None
    return BytesIO(data)


def _event(service: Service, request: Any, sop_class: str) -> Event:
    """The event pynetdicom hands a handler for ``request`` (explicit VR little endian)."""
    context = PresentationContext()
    context.context_id = 5
    context.abstract_syntax = sop_class
    context.transfer_syntax = [ExplicitVRLittleEndian]
    event = Event(
        None,  # type: ignore[arg-type]
        getattr(evt, service.event_name),
        {"request": request, "context": context.as_tuple},
    )
    event.timestamp = TIMESTAMP
    return event


def _n_action() -> Event:
    request = dimse_primitives.N_ACTION()
    request.MessageID = 7
    request.RequestedSOPClassUID = COMMITMENT
    request.RequestedSOPInstanceUID = COMMITMENT + ".1"
    request.ActionTypeID = 1
    request.ActionInformation = _encoded(TransactionUID="1.2.3.4")
    return _event(Service.N_ACTION, request, COMMITMENT)


def _c_find() -> Event:
    request = dimse_primitives.C_FIND()
    request.MessageID = 8
    request.AffectedSOPClassUID = STUDY_ROOT_FIND
    request.Priority = 0
    request.Identifier = _encoded(QueryRetrieveLevel="STUDY", PatientID="*")
    return _event(Service.C_FIND, request, STUDY_ROOT_FIND)


def _n_create(instance: str | None) -> Event:
    request = dimse_primitives.N_CREATE()
    request.MessageID = 9
    request.AffectedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    if instance is not None:
        request.AffectedSOPInstanceUID = instance
    return _event(Service.N_CREATE, request, "1.2.840.10008.3.1.2.3.3")


def _n_get() -> Event:
    request = dimse_primitives.N_GET()
    request.MessageID = 10
    request.RequestedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    request.RequestedSOPInstanceUID = "1.2.3"
    request.AttributeIdentifierList = [Tag(0x00100010), Tag(0x7FE00010)]
    return _event(Service.N_GET, request, "1.2.840.10008.3.1.2.3.3")


def _build(event: Event, service: Service, deadline: datetime | None) -> Envelope:
    return build_envelope(event, service, request_id=ID, association=INFO, deadline=deadline)


# -- the document ------------------------------------------------------------------------------


def test_publish_only_envelope_is_written_as_before() -> None:
    """Key order, ``reply_expected`` only when false, datasets after it: the bytes the
    bridge has always published (compared as the serialized dict, which keeps order)."""
    envelope = _build(_n_action(), Service.N_ACTION, None)
    expected = {
        "version": 1,
        "id": ID,
        "service": "n-action",
        "event": "EVT_N_ACTION",
        "timestamp": "2026-11-28T04:57:44.516640Z",
        "deadline": None,
        "association": ASSOCIATION_JSON,
        "context": _context_json(COMMITMENT),
        "sop_class_uid": COMMITMENT,
        "request": {
            "message_id": 7,
            "requested_sop_class_uid": COMMITMENT,
            "requested_sop_instance_uid": COMMITMENT + ".1",
            "action_type_id": 1,
        },
        "reply_expected": False,
        "action_information": {"00081195": {"vr": "UI", "Value": ["1.2.3.4"]}},
    }
    assert envelope.to_json() == orjson.dumps(expected)
    validate_envelope(orjson.loads(envelope.to_json()))
    assert not envelope.reply_expected
    assert "deadline-ms" not in envelope.headers()


def test_streamed_envelope_is_written_as_before() -> None:
    envelope = _build(_c_find(), Service.C_FIND, DEADLINE)
    expected = {
        "version": 1,
        "id": ID,
        "service": "c-find",
        "event": "EVT_C_FIND",
        "timestamp": "2026-11-28T04:57:44.516640Z",
        "deadline": "2026-11-28T04:57:54.516704Z",
        "association": ASSOCIATION_JSON,
        "context": _context_json(STUDY_ROOT_FIND),
        "sop_class_uid": STUDY_ROOT_FIND,
        "request": {"message_id": 8, "priority": 0, "affected_sop_class_uid": STUDY_ROOT_FIND},
        "identifier": {
            "00080052": {"vr": "CS", "Value": ["STUDY"]},
            "00100020": {"vr": "LO", "Value": ["*"]},
        },
        "query_model": "study-root",
        "query_level": "STUDY",
    }
    assert envelope.to_json() == orjson.dumps(expected)
    validate_envelope(orjson.loads(envelope.to_json()))
    assert envelope.reply_expected
    assert envelope.headers() == {
        "service": "c-find",
        "sop-class": STUDY_ROOT_FIND,
        "calling-ae": "MY.AE",
        "called-ae": "DICOM-BRIDGE",
        "deadline-ms": 1795841874516,
        "ce-specversion": "1.0",
        "ce-id": ID,
        "ce-source": "dicom://DICOM-BRIDGE",
        "ce-type": "org.dicom-bridge.c-find.request",
        "ce-time": "2026-11-28T04:57:44.516640Z",
    }


def test_headers_are_a_new_dict_every_time() -> None:
    """The tracing span adds ``traceparent`` to the headers it is given."""
    envelope = _build(_c_find(), Service.C_FIND, DEADLINE)
    envelope.headers()["traceparent"] = "x"
    assert "traceparent" not in envelope.headers()


def test_routing_key_and_cancel_notice() -> None:
    envelope = _build(_c_find(), Service.C_FIND, DEADLINE)
    key = routing_key(Service.C_FIND, STUDY_ROOT_FIND, "MY.AE")
    assert envelope.routing_key() == key
    notice_key, body = envelope.cancel_notice()
    assert notice_key == f"cancel.{key}"
    assert orjson.loads(body) == {"version": 1, "type": "cancel", "id": ID, "service": "c-find"}


@pytest.mark.parametrize("instance", [None, "1.2.3.4"])
def test_request_instance_uid(instance: str | None) -> None:
    envelope = _build(_n_create(instance), Service.N_CREATE, DEADLINE)
    assert envelope.request_instance_uid == instance
    assert envelope.request.get("affected_sop_instance_uid") == instance


def test_tags_of_the_request_are_upper_case_hex() -> None:
    envelope = _build(_n_get(), Service.N_GET, DEADLINE)
    assert envelope.request["attribute_identifier_list"] == ["00100010", "7FE00010"]
    validate_envelope(envelope.as_json())


def test_a_level_the_model_does_not_have_is_refused() -> None:
    request = dimse_primitives.C_FIND()
    request.MessageID = 8
    request.AffectedSOPClassUID = STUDY_ROOT_FIND
    request.Identifier = _encoded(QueryRetrieveLevel="IMAGES")
    with pytest.raises(CodecError, match="Query/Retrieve Level not one of"):
        _build(_event(Service.C_FIND, request, STUDY_ROOT_FIND), Service.C_FIND, DEADLINE)


def test_the_envelope_is_frozen() -> None:
    envelope = _build(_c_find(), Service.C_FIND, DEADLINE)
    with pytest.raises(AttributeError):
        envelope.id = "other"  # type: ignore[misc]


# -- reading it back ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "service"),
    [(_n_action, Service.N_ACTION), (_c_find, Service.C_FIND), (_n_get, Service.N_GET)],
)
@pytest.mark.parametrize("deadline", [DEADLINE, None])
def test_from_json_reads_back_what_to_json_wrote(
    make: Any, service: Service, deadline: datetime | None
) -> None:
    envelope = _build(make(), service, deadline)
    body = envelope.to_json()
    again = Envelope.from_json(orjson.loads(body))
    assert again.to_json() == body
    assert again.headers() == envelope.headers()
    assert again.routing_key() == envelope.routing_key()
    assert again.deadline == deadline


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("association"), "not an envelope"),
        (lambda d: d.update(version=2), "unsupported envelope version"),
        (lambda d: d.update(service="c-fetch"), "not an envelope"),
        (lambda d: d["request"].update(color="blue"), "unknown command field"),
        (lambda d: d["context"].update(id="1"), "not an envelope"),
        (lambda d: d["association"]["peer"].update(port=True), "not an envelope"),
        (lambda d: d.update(deadline="tomorrow"), "not an envelope"),
        (lambda d: d.pop("identifier"), "not an envelope"),
    ],
)
def test_from_json_refuses_what_is_no_envelope(change: Any, message: str) -> None:
    document = orjson.loads(_build(_c_find(), Service.C_FIND, DEADLINE).to_json())
    change(document)
    with pytest.raises(CodecError, match=message):
        Envelope.from_json(document)


# -- consumer side ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"version": 2, "service": "c-echo"}', "unsupported envelope version"),
        (b'{"version": 1, "service": "c-fetch"}', "no known service"),
    ],
)
def test_parse_envelope_refuses_garbage(body: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_envelope(body)


def test_iso_time_is_utc_with_microseconds() -> None:
    moment = datetime(2026, 11, 28, 4, 36, 40, 123456, tzinfo=UTC)
    assert iso_time(moment) == "2026-11-28T04:36:40.123456Z"
