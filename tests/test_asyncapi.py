"""schemas/asyncapi.yaml is valid AsyncAPI 3.0.0 and says what the code does."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from bridge.config import BrokerSettings
from bridge.protocol.envelope import Envelope, iso_time
from bridge.protocol.model import SPECS, Service, routing_key
from bridge.protocol.reply import REPLY_ELEMENTS, STREAM_FIELDS
from tests.schemas import SCHEMAS, validate_envelope, validate_reply

DATA = Path(__file__).resolve().parent / "data"
META_SCHEMA = DATA / "asyncapi-3.0.0.schema.json"
# @asyncapi/specs 6.11.1, schemas/3.0.0.json (tests/data/README.md).
META_SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"

DOC: dict[str, Any] = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))


def pointer(document: Any, path: str) -> Any:
    """Resolve a JSON pointer (``/a/b``) in ``document``."""
    node = document
    for raw in path.lstrip("/").split("/") if path.strip("/") else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def deref(node: Any) -> Any:
    """Follow internal ``$ref``s until a real object."""
    while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#"):
        node = pointer(DOC, node["$ref"][1:])
    return node


def refs(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(location, $ref) of every reference in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            else:
                yield from refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{path}/{index}")


def schema_validator(schema: dict[str, Any]) -> Draft7Validator:
    """AsyncAPI schema objects are a superset of draft-07."""
    return Draft7Validator(deref(schema), format_checker=Draft7Validator.FORMAT_CHECKER)


def request_channels() -> dict[Service, dict[str, Any]]:
    """Request channels by the service their messages carry."""
    found: dict[Service, dict[str, Any]] = {}
    for channel in DOC["channels"].values():
        for message in channel["messages"].values():
            amqp = deref(message).get("bindings", {}).get("amqp", {})
            if amqp.get("messageType") in {s.value for s in Service}:
                found[Service(amqp["messageType"])] = channel
    return found


def address_regex(address: str) -> re.Pattern[str]:
    """The routing keys an address with ``{parameters}`` stands for."""
    parts = re.split(r"(\{[A-Za-z]+\})", address)
    return re.compile(
        "".join("[^.]+" if p.startswith("{") else re.escape(p) for p in parts if p) + r"\Z"
    )


# -- an envelope as the bridge builds it ------------------------------------------------------

DEADLINE = datetime.fromisoformat("2026-11-28T04:57:49.516704+00:00")


def envelope(service: Service, sop_class: str, calling_ae: str = "MY.AE") -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": 1,
        "id": "58493bfa-d7c3-4f75-94ba-6025738ce396",
        "service": service.value,
        "event": service.event_name,
        "timestamp": "2026-11-28T04:57:44.516640Z",
        "deadline": iso_time(DEADLINE),
        "association": {
            "id": "7b431b86-c608-448c-a313-7109efc3ce6c",
            "calling_ae": calling_ae,
            "called_ae": "DICOM-BRIDGE",
            "peer": {"address": "127.0.0.1", "port": 34557},
            "implementation_class_uid": "1.2.826.0.1.3680043.9.3811.3.0.4",
            "implementation_version_name": "PYNETDICOM_304",
        },
        "context": {
            "id": 1,
            "abstract_syntax": sop_class,
            "transfer_syntax": "1.2.840.10008.1.2.1",
        },
        "sop_class_uid": sop_class,
        "request": {"message_id": 7, "affected_sop_class_uid": sop_class},
    }
    for name in service.spec.request_datasets:
        document[name] = None
    if service is Service.C_STORE:
        document["part10"] = None
    if service.spec.streamed:
        document["identifier"] = {"00080052": {"vr": "CS", "Value": ["STUDY"]}}
        document["query_model"] = "study-root"
        document["query_level"] = "STUDY"
    validate_envelope(document)
    return document


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


# -- validity ---------------------------------------------------------------------------------


def test_vendored_meta_schema_is_the_official_file() -> None:
    digest = hashlib.sha256(META_SCHEMA.read_bytes()).hexdigest()
    assert digest == META_SCHEMA_SHA256, "tests/data/README.md says where it comes from"


def test_document_is_valid_asyncapi_3_0_0() -> None:
    meta = json.loads(META_SCHEMA.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(meta)
    validator = Draft7Validator(meta, format_checker=Draft7Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(DOC)]
    assert not errors, "\n".join(errors)
    assert DOC["asyncapi"] == "3.0.0"


def test_meta_schema_catches_mistakes() -> None:
    """The validation above is not vacuous."""
    meta = json.loads(META_SCHEMA.read_text(encoding="utf-8"))
    validator = Draft7Validator(meta)
    broken = yaml.safe_load(yaml.safe_dump(DOC))
    broken["operations"]["sendReply"]["action"] = "publish"
    broken["components"]["channelBindings"]["dicomExchange"]["amqp"]["exchange"]["type"] = "x"
    assert not validator.is_valid(broken)


def test_every_reference_resolves_to_the_real_schema_files() -> None:
    external: set[str] = set()
    for where, ref in refs(DOC):
        target, _, fragment = ref.partition("#")
        if not target:
            pointer(DOC, fragment)  # raises KeyError when dangling
            continue
        path = (SCHEMAS / target).resolve()
        assert path.parent == SCHEMAS.resolve(), f"{where}: {ref} leaves schemas/"
        assert path.is_file(), f"{where}: {ref} does not exist"
        pointer(json.loads(path.read_text(encoding="utf-8")), fragment)
        external.add(path.name)
    assert external == {p.name for p in SCHEMAS.glob("*.schema.json")}


def test_operations_use_their_channels_messages() -> None:
    for name, operation in DOC["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
        if "reply" in operation:
            reply = deref(operation["reply"])
            for message in reply["messages"]:
                assert message["$ref"].startswith(reply["channel"]["$ref"] + "/messages/")


def test_address_parameters_are_declared() -> None:
    for name, channel in DOC["channels"].items():
        address = channel.get("address")
        used = set(re.findall(r"\{([A-Za-z]+)\}", address or ""))
        assert used == set(channel.get("parameters", {})), name


def test_examples_validate_against_their_schemas() -> None:
    checked = 0
    for message in DOC["components"]["messages"].values():
        for example in message.get("examples", []):
            payload_ref = message["payload"].get("$ref", "")
            if payload_ref == "./envelope.schema.json":
                validate_envelope(example["payload"])
            elif payload_ref == "./reply.schema.json":
                validate_reply(example["payload"])
            else:
                schema_validator(message["payload"]).validate(example["payload"])
            if "headers" in example:
                schema_validator(message["headers"]).validate(example["headers"])
            checked += 1
    assert checked >= 5


# -- in step with the code ----------------------------------------------------------------


def test_every_service_has_a_request_channel_and_both_operations() -> None:
    channels = request_channels()
    assert set(channels) == set(Service)
    for service, channel in channels.items():
        assert channel["address"] == f"{service.value}.{{sopClass}}.{{callingAe}}"
        key = routing_key(service, "1.2.840.10008.1.1", "MY AE.1")
        assert address_regex(channel["address"]).match(key), key
        actions = {
            op["action"]
            for op in DOC["operations"].values()
            if deref(op["channel"]) is channel and "reply" in op
        }
        assert actions == {"send", "receive"}, service


def test_exchange_binding_is_what_the_bridge_declares() -> None:
    exchange = DOC["components"]["channelBindings"]["dicomExchange"]["amqp"]["exchange"]
    assert exchange["name"] == BrokerSettings.model_fields["exchange"].default
    assert exchange["type"] == "topic"
    assert exchange["durable"] is True
    bridge_op = DOC["components"]["operationBindings"]["bridgeRequest"]["amqp"]
    assert bridge_op["mandatory"] is True


def test_request_headers_are_what_the_envelope_emits() -> None:
    schema = DOC["components"]["schemas"]["requestHeaders"]
    for service in Service:
        request = Envelope.from_json(envelope(service, "1.2.840.10008.1.1"))
        assert request.deadline == DEADLINE
        headers = request.headers()
        assert set(headers) == set(schema["properties"]) == set(schema["required"])
        schema_validator(schema).validate(headers)
    example = DOC["components"]["messages"]["cEchoRequest"]["examples"][0]
    deadline = datetime.fromisoformat(example["payload"]["deadline"])
    request = Envelope.from_json(example["payload"])
    assert request.deadline == deadline
    assert request.headers() == example["headers"]


def test_request_messages_point_at_the_envelope_and_correlation_properties() -> None:
    for channel in request_channels().values():
        message = deref(channel["messages"]["request"])
        assert message["payload"] == {"$ref": "./envelope.schema.json"}
        assert deref(message["headers"]) is DOC["components"]["schemas"]["requestHeaders"]
        correlation = deref(message["correlationId"])
        assert correlation["location"] == "$message.header#/correlation_id"
    reply = DOC["components"]["replies"]["reply"]
    assert deref(reply["address"])["location"] == "$message.header#/reply_to"
    assert DOC["channels"]["replies"]["address"] is None


def _reply_table() -> dict[str, set[str]]:
    description = DOC["components"]["messages"]["reply"]["description"]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|$", description, re.MULTILINE)
    every = {s.value for s in Service}
    return {
        field: every if cell.strip().startswith("all") else set(cell.strip().split(", "))
        for field, cell in rows
    }


def test_reply_fields_are_what_the_reply_parser_accepts() -> None:
    table = _reply_table()
    fields = set(table) - {"version", "status", "dataset", "x-..."}
    assert fields == set(REPLY_ELEMENTS) | set(STREAM_FIELDS)
    reply_schema: dict[str, Any] = json.loads((SCHEMAS / "reply.schema.json").read_text())
    assert set(reply_schema["properties"]) == set(table) - {"x-..."}
    for field, services in table.items():
        if field in REPLY_ELEMENTS:
            keyword = REPLY_ELEMENTS[field]
            expected = {
                s.value
                for s in Service
                if keyword in (*s.spec.status_elements, *s.spec.reply_fields)
            }
        elif field in STREAM_FIELDS:
            expected = {s.value for s in Service if field in s.spec.stream_fields}
        elif field == "dataset":
            expected = {s.value for s in Service if s.spec.reply_dataset}
        else:
            continue
        assert services == expected, field
    message = DOC["components"]["messages"]["reply"]
    assert message["payload"] == {"$ref": "./reply.schema.json"}


@pytest.mark.parametrize("service", [s for s in Service if SPECS[s].streamed])
def test_cancel_notice_is_what_the_envelope_publishes(service: Service) -> None:
    request = Envelope.from_json(envelope(service, STUDY_ROOT_FIND, calling_ae="MY.AE"))
    key, body = request.cancel_notice()
    request_key = routing_key(service, STUDY_ROOT_FIND, "MY.AE")
    assert key == f"cancel.{request_key}"
    channel = DOC["channels"]["cancelNotices"]
    assert channel["address"].startswith("cancel.")
    assert address_regex(channel["address"]).match(key)
    schema = DOC["components"]["schemas"]["cancelNotice"]
    schema_validator(schema).validate(json.loads(body))
    assert set(json.loads(body)) == set(schema["required"])
    streamed = [s.value for s in Service if SPECS[s].streamed]
    assert channel["parameters"]["service"]["enum"] == streamed
    assert schema["properties"]["service"]["enum"] == streamed
