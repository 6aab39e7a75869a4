"""The pure parts of commands: parsing agrees with the JSON Schema, replies match theirs,
datasets are checked before anything is sent, settings refuse contradictions."""

from __future__ import annotations

import base64
import inspect
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import _config

from bridge.config import BridgeSettings
from bridge.errors import CodecError
from bridge.protocol import command as commands
from bridge.protocol import part10
from bridge.protocol.command import CommandError, Reason, parse_command
from bridge.protocol.dicomjson import dataset_to_json
from bridge.protocol.model import Service
from bridge.scu import pool as scu
from bridge.scu.commander import CommanderSettings
from bridge.scu.perform import TEMPORARY_PREFIX, needs_for, part10_file
from bridge.sdk.client import CommandClient, FindStream
from bridge.transport.bulkstore import DirectoryStore
from tests.schemas import validator

COMMAND = validator("command.schema.json")
REPLY = validator("command-reply.schema.json")
SC = "1.2.840.10008.1.20.1"
UID = "1.2.826.0.1.3680043.8.498.1"
DEST = {"ae_title": "ARCHIVE"}
FILE = bytes(128) + b"DICM" + bytes(8)
"""Enough of a Part 10 file for the parser and the schema (only the bridge reads it)."""
INLINE = {"length": 140, "dataset_offset": 132, "InlineBinary": base64.b64encode(FILE).decode()}

GOOD: list[dict[str, Any]] = [
    {"service": "c-echo"},
    {"service": "c-echo", "destination": {"ae_title": "A", "host": "h", "port": 104}},
    {
        "service": "c-store",
        "dataset": {"00080016": {"vr": "UI", "Value": [SC]}},
        "request": {"priority": 1, "move_originator_ae_title": "MOVER"},
        "transfer_syntax_uid": ExplicitVRLittleEndian,
    },
    {"service": "c-find", "identifier": {}, "query_model": "modality-worklist"},
    {"service": "c-find", "identifier": {}, "request": {"affected_sop_class_uid": SC}},
    {
        "service": "n-event-report",
        "request": {
            "event_type_id": 1,
            "affected_sop_class_uid": SC,
            "affected_sop_instance_uid": UID,
        },
        "event_information": None,
        "role": "scu",
    },
    {
        "service": "n-get",
        "request": {
            "requested_sop_class_uid": SC,
            "requested_sop_instance_uid": UID,
            "attribute_identifier_list": ["00100010"],
        },
    },
    {
        "service": "n-set",
        "request": {"requested_sop_class_uid": SC, "requested_sop_instance_uid": UID},
        "modification_list": {},
    },
    {
        "service": "n-action",
        "request": {
            "requested_sop_class_uid": SC,
            "requested_sop_instance_uid": UID,
            "action_type_id": 1,
            "x-note": "ignored",
        },
        "deadline": "2030-01-01T00:00:00Z",
        "x-trace": "ignored",
    },
    {"service": "n-create", "request": {"affected_sop_class_uid": SC}, "attribute_list": {}},
    {
        "service": "n-delete",
        "request": {
            "requested_sop_class_uid": SC,
            "requested_sop_instance_uid": UID,
            "meta_sop_class_uid": SC,
        },
        "calling_ae": "ME",
    },
    {"service": "c-store", "part10": INLINE, "request": {"affected_sop_instance_uid": UID}},
    {
        "service": "c-store",
        "part10": {"length": 200, "dataset_offset": 150, "BulkDataURI": "file:///bulk/1"},
    },
]

BAD: list[tuple[dict[str, Any], str]] = [
    ({"service": "c-move"}, "service must be one of"),
    ({"service": "c-echo", "destination": {}}, "destination.ae_title"),
    ({"service": "c-echo", "destination": {"ae_title": "A" * 17}}, "destination.ae_title"),
    ({"service": "c-echo", "destination": {"ae_title": "A", "host": "h"}}, "destination.port"),
    ({"service": "c-echo", "destination": {"ae_title": "A", "port": 1}}, "destination.host"),
    ({"service": "c-echo", "request": {"priority": 1}}, "request.priority not allowed"),
    ({"service": "c-echo", "role": "scp"}, "role scp is for N-EVENT-REPORT only"),
    ({"service": "c-echo", "deadline": "tomorrow"}, "deadline must be"),
    ({"service": "c-echo", "surprise": 1}, "surprise not allowed"),
    ({"service": "c-store"}, "C-STORE needs dataset"),
    ({"service": "c-store", "dataset": []}, "dataset must be a DICOM JSON object"),
    ({"service": "c-store", "dataset": {}, "request": {"priority": 3}}, "request.priority"),
    ({"service": "c-store", "dataset": {}, "part10": INLINE}, "dataset not allowed with part10"),
    ({"service": "c-store", "file_meta": {}, "part10": INLINE}, "file_meta not allowed with"),
    ({"service": "c-store", "transfer_syntax_uid": "1.2", "part10": INLINE},
     "transfer_syntax_uid not allowed with part10"),
    ({"service": "c-echo", "part10": INLINE}, "part10 is for C-STORE only"),
    ({"service": "c-store", "part10": None}, "part10 is not an object"),
    ({"service": "c-store", "part10": {**INLINE, "BulkDataURI": "file:///b"}}, "exactly one of"),
    ({"service": "c-store", "part10": {**INLINE, "length": 131}}, "part10 length must be"),
    ({"service": "c-store", "part10": {k: v for k, v in INLINE.items() if k != "dataset_offset"}},
     "part10 dataset_offset must be"),
    ({"service": "c-store", "part10": {**INLINE, "extra": 1}}, "part10 has an unknown field"),
    ({"service": "c-store", "part10": {"length": 140, "dataset_offset": 132,
                                       "BulkDataURI": "http://x/1"}}, "file:// URI"),
    ({"service": "c-find", "identifier": {}}, "C-FIND needs query_model"),
    ({"service": "c-find", "identifier": {}, "query_model": "nope"}, "query_model must be"),
    ({"service": "n-get", "request": {"requested_sop_class_uid": SC}},
     "needs request.requested_sop_instance_uid"),
    (
        {"service": "n-get", "request": {"requested_sop_class_uid": SC,
         "requested_sop_instance_uid": UID, "attribute_identifier_list": ["0010"]}},
        "8-hex-digit tags",
    ),
    ({"service": "n-create", "request": {"affected_sop_class_uid": "1.02"}}, "must be a UID"),
    ({"service": "n-set", "request": {"requested_sop_class_uid": SC,
      "requested_sop_instance_uid": UID}}, "N-SET needs modification_list"),
    ({"service": "n-action", "request": {"requested_sop_class_uid": SC,
      "requested_sop_instance_uid": UID, "action_type_id": True}}, "action_type_id must be"),
]  # fmt: skip


def _doc(fields: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "destination": DEST, **fields}


@pytest.mark.parametrize("fields", GOOD, ids=[f["service"] for f in GOOD])
def test_valid_commands_pass_parser_and_schema(fields: dict[str, Any]) -> None:
    document = _doc(fields)
    COMMAND.validate(document)
    command = parse_command(orjson.dumps(document), default_id="amqp-id")
    assert command.id == "amqp-id"
    assert command.service is Service(fields["service"])


@pytest.mark.parametrize(("fields", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_commands_fail_parser_and_schema(fields: dict[str, Any], message: str) -> None:
    document = _doc(fields)
    assert not COMMAND.is_valid(document)
    with pytest.raises(CommandError) as failed:
        parse_command(orjson.dumps(document))
    assert failed.value.reason is Reason.BAD_COMMAND
    assert failed.value.permanent
    assert message in failed.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "command is not JSON"),
        (b"[]", "command is not a JSON object"),
        (b'{"version": 2, "service": "c-echo"}', "command needs version 1"),
    ],
)
def test_unusable_bodies(body: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_command(body)


def test_defaults_and_find_model() -> None:
    assert parse_command(orjson.dumps(_doc(GOOD[5]))).role == "scu"
    report = parse_command(orjson.dumps(_doc({k: v for k, v in GOOD[5].items() if k != "role"})))
    assert report.role == "scp"
    find = parse_command(orjson.dumps(_doc(GOOD[3])))
    assert find.request.affected_sop_class_uid == "1.2.840.10008.5.1.4.31"
    assert commands.find_models()["study-root"] == "1.2.840.10008.5.1.4.1.2.2.1"


def test_routing_key_encodes_the_ae_title() -> None:
    assert (
        commands.routing_key(Service.N_EVENT_REPORT, "MY.AE ") == "command.n-event-report.MY%2EAE"
    )
    # The client routes any document: a service that is not one is encoded the same way.
    assert commands.routing_key("c-echo", "PACS") == commands.routing_key(Service.C_ECHO, "PACS")
    assert commands.routing_key("no.such", "  ") == "command.no%2Esuch.-"


def test_store_dataset_gets_its_transfer_syntax_and_must_name_itself() -> None:
    dataset = {
        "00080016": {"vr": "UI", "Value": [SC]},
        "00080018": {"vr": "UI", "Value": [UID]},
    }
    meta = {"00020010": {"vr": "UI", "Value": [JPEG2000Lossless]}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, ExplicitVRLittleEndian),
        ({"file_meta": meta}, JPEG2000Lossless),
        ({"file_meta": meta, "transfer_syntax_uid": "1.2.840.10008.1.2"}, "1.2.840.10008.1.2"),
    ]
    for extra, expected in cases:
        command = parse_command(
            orjson.dumps(_doc({"service": "c-store", "dataset": dataset, **extra}))
        )
        decoded = commands.decode_datasets(command)
        assert "file_meta" not in decoded
        ds = decoded["dataset"]
        assert ds is not None
        assert ds.file_meta.TransferSyntaxUID == expected
        needs = needs_for(command, decoded)
        assert needs[0].abstract_syntax == SC
        assert needs[0].transfer_syntaxes[0] == expected
    other = parse_command(
        orjson.dumps(
            _doc({"service": "c-store", "dataset": dataset,
                  "request": {"affected_sop_instance_uid": "1.2.3"}})
        )
    )  # fmt: skip
    with pytest.raises(CommandError, match="SOPInstanceUID differs"):
        commands.decode_datasets(other)


def test_bulk_uris_are_found_in_sequences() -> None:
    uri = "file:///tmp/x"
    document = _doc(
        {
            "service": "n-action",
            "request": {"requested_sop_class_uid": SC, "requested_sop_instance_uid": UID,
                        "action_type_id": 1},
            "action_information": {
                "00081199": {"vr": "SQ", "Value": [{"00420011": {"vr": "OB", "BulkDataURI": uri}}]},
                "00420011": {"vr": "OB", "BulkDataURI": [uri + "2"]},
            },
        }
    )  # fmt: skip
    assert sorted(parse_command(orjson.dumps(document)).bulk_uris()) == [uri, uri + "2"]


def test_text_outside_the_character_set_is_refused() -> None:
    ds = Dataset()
    ds.PatientName = "Zoë"
    with pytest.raises(CommandError, match=r"\(0010,0010\) PN"):
        commands.check_encodable(ds, "dataset")
    ds.SpecificCharacterSet = "ISO_IR 100"
    commands.check_encodable(ds, "dataset")
    item = Dataset()
    item.PatientName = "山田"
    ds.OtherPatientIDsSequence = [item]
    with pytest.raises(CommandError, match=r"\(0010,0010\) PN"):
        commands.check_encodable(ds, "dataset")


def test_replies_match_their_schema() -> None:
    status = Dataset()
    status.Status = 0xB000
    status.ErrorComment = "coerced"
    status.OffendingElement = [0x00100010, 0x00100020]
    body = commands.reply_body("c1", Service.C_STORE, status=status)
    document = orjson.loads(body)
    REPLY.validate(document)
    assert document == {
        "version": 1, "id": "c1", "service": "c-store", "final": True, "status": 0xB000,
        "category": "warning", "error_comment": "coerced",
        "offending_element": ["00100010", "00100020"],
    }  # fmt: skip
    pending = Dataset()
    pending.Status = 0xFF00
    match = orjson.loads(
        commands.reply_body("c2", Service.C_FIND, final=False, status=pending, dataset={})
    )
    REPLY.validate(match)
    assert (match["category"], match["final"]) == ("pending", False)
    error = CommandError(Reason.TIMEOUT, "no response")
    failed = orjson.loads(commands.error_body("c3", None, error))
    REPLY.validate(failed)
    assert failed["error"] == {"reason": "timeout", "message": "no response"}
    assert not error.permanent
    assert CommandError(Reason.EXPIRED, "late").permanent


def test_role_selection_is_proposed_once_per_abstract_syntax() -> None:
    pool = scu.AssociationPool("ME")
    try:
        destination = scu._Destination()
        as_scp = scu.Need(SC, as_scp=True)
        as_scu = scu.Need(SC)
        echo = scu.Need("1.2.840.10008.1.1")
        assert pool._proposal(destination, [as_scp]) == [as_scp]
        assert pool._proposal(destination, [echo]) == [echo, as_scp]
        # SCU of the class now: the remembered SCP role for it is left out.
        assert pool._proposal(destination, [as_scu]) == [as_scu, echo]
    finally:
        pool.close()


def test_commander_settings() -> None:
    timeouts: dict[str, Any] = {"command_idle_timeout": 90, "command_network_timeout": 60}
    with pytest.raises(ValidationError, match="command_idle_timeout"):
        CommanderSettings(**timeouts)
    delays: dict[str, Any] = {"command_retry_delay": 9, "command_retry_max_delay": 1}
    with pytest.raises(ValidationError, match="command_retry_delay"):
        CommanderSettings(**delays)
    given: dict[str, Any] = {"ae_title": "PACS-BRIDGE", "exchange": "x", "publish_timeout": 2}
    bridge = BridgeSettings(**given)
    settings = CommanderSettings.from_settings(bridge, command_pool_size=2)
    assert (settings.ae_title, settings.exchange, settings.publish_timeout) == (
        "PACS-BRIDGE", "x", 2.0,
    )  # fmt: skip
    assert settings.command_pool_size == 2


# -- builders -----------------------------------------------------------------------------

N: dict[str, Any] = {"sop_class_uid": SC, "sop_instance_uid": UID}


def _dataset(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


STORED = _dataset(SOPClassUID=SC, SOPInstanceUID=UID, PatientID="X")
STORED.file_meta = FileMetaDataset()
STORED.file_meta.TransferSyntaxUID = JPEG2000Lossless
QUERY = _dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="")

BUILT: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("echo", commands.echo("PACS"), {"service": "c-echo"}),
    (
        "store",
        commands.store("PACS", STORED, priority=2, move_originator_ae_title="MOVER"),
        {
            "service": "c-store",
            "dataset": STORED,
            "transfer_syntax_uid": JPEG2000Lossless,
            "request": {"priority": 2, "move_originator_ae_title": "MOVER"},
        },
    ),
    (
        "event_report",
        commands.event_report("PACS", 1, None, **N),
        {
            "service": "n-event-report",
            "event_information": None,
            "role": "scp",
            "request": {
                "event_type_id": 1,
                "affected_sop_class_uid": SC,
                "affected_sop_instance_uid": UID,
            },
        },
    ),
    (
        "action",
        commands.action("PACS", 3, QUERY, **N),
        {
            "service": "n-action",
            "action_information": QUERY,
            "request": {
                "requested_sop_class_uid": SC,
                "requested_sop_instance_uid": UID,
                "action_type_id": 3,
            },
        },
    ),
    (
        "create",
        commands.create("PACS", None, sop_class_uid=SC),
        {
            "service": "n-create",
            "attribute_list": None,
            "request": {"affected_sop_class_uid": SC},
        },
    ),
    (
        "set",
        commands.set("PACS", QUERY, **N),
        {
            "service": "n-set",
            "modification_list": QUERY,
            "request": {"requested_sop_class_uid": SC, "requested_sop_instance_uid": UID},
        },
    ),
    (
        "get",
        commands.get("PACS", [0x00100010, 0x7FE00010], **N),
        {
            "service": "n-get",
            "request": {
                "requested_sop_class_uid": SC,
                "requested_sop_instance_uid": UID,
                "attribute_identifier_list": ["00100010", "7FE00010"],
            },
        },
    ),
    (
        "delete",
        commands.delete("PACS", **N),
        {
            "service": "n-delete",
            "request": {"requested_sop_class_uid": SC, "requested_sop_instance_uid": UID},
        },
    ),
    (
        "find",
        commands.find("PACS", QUERY),
        {"service": "c-find", "identifier": QUERY, "query_model": "study-root"},
    ),
]


@pytest.mark.parametrize(("name", "built", "expected"), BUILT, ids=[b[0] for b in BUILT])
def test_builders_write_the_command_document(
    name: str, built: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert built == {"version": 1, "destination": {"ae_title": "PACS"}, **expected}
    # Once its datasets are DICOM JSON and it has an id, the parser and the schema take it.
    document = {
        key: dataset_to_json(value) if isinstance(value, Dataset) else value
        for key, value in built.items()
    }
    COMMAND.validate({"id": "c1", **document})
    command = parse_command(orjson.dumps(document), default_id="c1")
    assert command.service.value == expected["service"]
    assert command.deadline is None


def test_builders_are_pure() -> None:
    """No id and no clock: the sender adds both, so the same arguments give the same
    document."""
    for _, built, _ in BUILT:
        assert "id" not in built
        assert "deadline" not in built
    assert commands.echo("PACS", timeout=3) == commands.echo("PACS", timeout=3)
    assert commands.find("PACS", QUERY) == BUILT[-1][1]


def test_builder_options() -> None:
    document = commands.echo(
        "PACS", host="10.0.0.7", port=104, calling_ae="ME", timeout=7.5,
        request={"message_id": 9},
    )  # fmt: skip
    assert document == {
        "version": 1,
        "service": "c-echo",
        "destination": {"ae_title": "PACS", "host": "10.0.0.7", "port": 104},
        "deadline": timedelta(seconds=7.5),
        "request": {"message_id": 9},
        "calling_ae": "ME",
    }
    # Extra request fields join the builder's own; the builder's win where both are given.
    store = commands.store("PACS", {}, priority=1, request={"priority": 0, "message_id": 4})
    assert store["request"] == {"priority": 1, "message_id": 4}
    assert commands.store("PACS", {}, request={"priority": 0})["request"] == {"priority": 0}
    # A JSON dataset has no file_meta: no transfer syntax unless given.
    assert "transfer_syntax_uid" not in store
    explicit = commands.store("PACS", STORED, transfer_syntax_uid=ExplicitVRLittleEndian)
    assert explicit["transfer_syntax_uid"] == ExplicitVRLittleEndian
    # C-FIND: a SOP class names the model instead of query_model.
    by_class = commands.find("PACS", QUERY, sop_class_uid=SC, priority=1)
    assert "query_model" not in by_class
    assert by_class["request"] == {"affected_sop_class_uid": SC, "priority": 1}
    assert commands.event_report("PACS", 1, None, role="scu", **N)["role"] == "scu"
    assert "attribute_identifier_list" not in commands.get("PACS", **N)["request"]
    assert commands.create("PACS", None, sop_class_uid=SC, sop_instance_uid=UID)["request"] == {
        "affected_sop_class_uid": SC, "affected_sop_instance_uid": UID,
    }  # fmt: skip
    extension: dict[str, Any] = {"x-trace": "t"}
    assert commands.build("c-echo", "PACS", **extension)["x-trace"] == "t"


# -- the client's side, without a broker ---------------------------------------------------


def test_client_prepares_what_it_sends(tmp_path: Path) -> None:
    client = CommandClient(timeout=12, bulk_dir=tmp_path, bulk_threshold=4)
    before = datetime.now(UTC)
    action = commands.action("PACS", 1, _dataset(TransactionUID=UID), **N)
    document = client.prepare(action)
    assert document["action_information"] == dataset_to_json(_dataset(TransactionUID=UID))
    assert action["action_information"] == _dataset(TransactionUID=UID)  # not changed
    deadline = datetime.fromisoformat(document["deadline"])
    assert before + timedelta(seconds=12) <= deadline <= datetime.now(UTC) + timedelta(seconds=12)
    uuid.UUID(document["id"])
    COMMAND.validate(document)
    parse_command(orjson.dumps(document))
    # A relative deadline counts from now; a named id and deadline stay as they are.
    relative = datetime.fromisoformat(client.prepare(commands.echo("PACS", timeout=2))["deadline"])
    assert relative <= datetime.now(UTC) + timedelta(seconds=2)
    assert client.prepare(document) == document
    # Binary values above the threshold go to the claim-check directory.
    big = client.prepare(
        commands.store("PACS", _dataset(SOPClassUID=SC, EncapsulatedDocument=b"x" * 8))
    )
    assert "BulkDataURI" in big["dataset"]["00420011"]
    assert len(list(tmp_path.iterdir())) == 1
    # The generic form, as before the builders.
    generic = client.command(Service.C_ECHO, "PACS", host="h", port=104, timeout=3)
    assert generic["destination"] == {"ae_title": "PACS", "host": "h", "port": 104}
    assert datetime.fromisoformat(generic["deadline"]) <= datetime.now(UTC) + timedelta(seconds=3)


def test_client_shorthands_follow_the_builders() -> None:
    """``send_<name>`` and ``send_<name>_sync`` exist for every builder, with its
    signature; C-FIND's pair returns the stream."""
    client = CommandClient()
    names = {name for name, _, _ in BUILT}
    assert {Service(b[2]["service"]) for b in BUILT} == set(commands.SERVICES)
    for name in names:
        builder = getattr(commands, name)
        for shorthand in (f"send_{name}", f"send_{name}_sync"):
            method = getattr(client, shorthand)
            assert method.__name__ == shorthand
            assert inspect.signature(method) == inspect.signature(builder)
            assert builder.__doc__ in method.__doc__
            # The shorthands' first argument was always named ``ae``: callers pass it so.
            assert next(iter(inspect.signature(method).parameters)) == "ae"
    assert inspect.iscoroutinefunction(CommandClient.send)
    echo = client.send_echo("PACS")
    assert inspect.iscoroutine(echo)
    echo.close()
    stream = client.send_find("PACS", QUERY, timeout=4)
    assert isinstance(stream, FindStream)
    assert stream._timeout == 4
    assert stream._document["query_model"] == "study-root"
    assert isinstance(client.send_find_sync("PACS", QUERY), FindStream)
    assert CommandClient.stream_sync is CommandClient.stream


# -- C-STORE of a Part 10 file ----------------------------------------------------------------


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


CT = _testfile("CT_small.dcm")
CT_META = part10.read_meta(CT.read_bytes())


def _part10_command(data: bytes | None = None, uri: str | None = None, **request: Any) -> Any:
    document = commands.build(
        Service.C_STORE,
        "PACS",
        request=request,
        part10=part10.inline_json(data, 132)
        if data is not None
        else part10.uri_json(str(uri), 200, 132),
    )
    return parse_command(orjson.dumps(document), default_id="c1")


def test_store_builder_takes_a_part10_file() -> None:
    data = CT.read_bytes()
    for given in (str(CT), CT):
        assert commands.store("PACS", given, priority=1) == {
            "version": 1, "service": "c-store", "destination": {"ae_title": "PACS"},
            "part10": CT, "request": {"priority": 1},
        }  # fmt: skip
    assert commands.store("PACS", data)["part10"] is data
    assert commands.store("PACS", memoryview(data))["part10"] == data
    assert commands.store("PACS", bytearray(data))["part10"] == data
    with pytest.raises(ValueError, match="no preamble and DICM prefix"):
        commands.store("PACS", data[132:])
    with pytest.raises(ValueError, match="has no Transfer Syntax UID"):
        commands.store("PACS", part10.PREAMBLE + data[CT_META.dataset_offset :])
    with pytest.raises(ValueError, match="transfer_syntax_uid"):
        commands.store("PACS", CT, transfer_syntax_uid=ExplicitVRLittleEndian)
    # A path is not read by the (pure) builder: the client checks it.
    assert commands.store("PACS", "/no/such/file")["part10"] == Path("/no/such/file")


def test_client_prepares_a_part10_file(tmp_path: Path) -> None:
    data = CT.read_bytes()
    inline = CommandClient().prepare(commands.store("PACS", CT))
    assert inline["part10"] == part10.inline_json(data, CT_META.dataset_offset)
    assert "dataset" not in inline
    assert "transfer_syntax_uid" not in inline
    COMMAND.validate(inline)
    assert parse_command(orjson.dumps(inline)).part10 == part10.Part10Ref(
        data, None, len(data), CT_META.dataset_offset
    )
    bulk = tmp_path / "bulk"
    client = CommandClient(bulk_dir=bulk, bulk_threshold=len(data) - 1)
    client.store.ensure()  # type: ignore[union-attr]
    linked = client.prepare(commands.store("PACS", CT))
    uri = linked["part10"]["BulkDataURI"]
    assert linked["part10"] == part10.uri_json(uri, len(data), CT_META.dataset_offset)
    COMMAND.validate(linked)
    assert DirectoryStore(bulk).local_path(uri).read_bytes() == data
    copied = client.prepare(commands.store("PACS", data))["part10"]
    assert DirectoryStore(bulk).get(copied["BulkDataURI"]) == data
    small = CommandClient(bulk_dir=bulk).prepare(commands.store("PACS", data))
    assert "InlineBinary" in small["part10"]
    assert len(list(bulk.iterdir())) == 2
    # Checked before anything is stored.
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(data[132:])
    with pytest.raises(ValueError, match="no preamble and DICM prefix"):
        client.prepare(commands.store("PACS", junk))
    with pytest.raises(FileNotFoundError):
        client.prepare(commands.store("PACS", tmp_path / "missing.dcm"))
    assert len(list(bulk.iterdir())) == 2


def test_read_meta_prefix_reads_no_more_than_the_meta() -> None:
    data = CT.read_bytes()
    asked: list[int] = []

    def read(size: int) -> bytes:
        asked.append(size)
        return data[:size]

    assert part10.read_meta_prefix(read) == CT_META
    assert asked == [4096]
    asked.clear()
    assert part10.read_meta_prefix(read, first=200) == CT_META  # cut inside the meta
    assert asked == [200, 800]
    assert part10.read_meta_prefix(lambda size: data[: CT_META.dataset_offset]) == CT_META
    with pytest.raises(CodecError, match="cut off"):
        part10.read_meta_prefix(lambda size: data[:200][:size])
    with pytest.raises(CodecError, match="no preamble"):
        part10.read_meta_prefix(lambda size: b"x" * size)


def _temporary_files() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*"))


def test_part10_file_is_checked_and_temporary_files_go(tmp_path: Path) -> None:
    data = CT.read_bytes()
    command = _part10_command(data)
    with part10_file(command, None) as stored:
        assert stored is not None
        assert stored.meta == CT_META
        assert stored.path.read_bytes() == data
        assert stored.path.name.startswith(TEMPORARY_PREFIX)
    assert not stored.path.exists()
    sent: list[Path] = []

    def send_fails() -> None:
        with part10_file(command, None) as stored:
            assert stored is not None
            sent.append(stored.path)
            raise RuntimeError("the send failed")

    with pytest.raises(RuntimeError):
        send_fails()
    assert not sent[0].exists()
    assert not _temporary_files()
    for bad, message in [
        (_part10_command(data[132:]), "part10: not a DICOM Part 10 file"),
        (_part10_command(data, affected_sop_class_uid=SC), "SOP Class UID differs"),
        (_part10_command(data, affected_sop_instance_uid=UID), "SOP Instance UID differs"),
        (_part10_command(data + b"x"), "part10: the data set has an odd length"),
        (_part10_command(uri="file:///elsewhere/x"), "outside the bulk data directory"),
    ]:
        store = DirectoryStore(tmp_path / "bulk")
        with pytest.raises(CommandError) as failed, part10_file(bad, store):
            pass
        assert failed.value.reason is Reason.BAD_DATASET
        assert failed.value.permanent
        assert message in failed.value.message
    with (
        pytest.raises(CommandError, match="no bulk data store"),
        part10_file(_part10_command(uri="file:///bulk/x"), None),
    ):
        pass
    assert not _temporary_files()


def test_part10_file_from_the_claim_check_directory(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    uri = store.put_file(CT)
    command = _part10_command(uri=uri)
    assert command.bulk_uris() == [uri]
    with part10_file(command, store) as stored:
        assert stored is not None
        assert stored.path == store.local_path(uri)  # sent from where it is
    assert store.local_path(uri).exists()  # the caller deletes it (claim-check rule)
    missing = _part10_command(uri=store.root.joinpath("gone").as_uri())
    with (
        pytest.raises(CommandError, match="BulkDataURI cannot be read"),
        part10_file(missing, store),
    ):
        pass
    # A deflated data set of odd length (PS3.5 A.5 pads it) is sent padded, from a copy.
    deflated = _testfile("image_dfl.dcm").read_bytes()
    offset = part10.read_meta(deflated).dataset_offset
    assert (len(deflated) - offset) % 2
    for odd in (_part10_command(uri=store.put(deflated)), _part10_command(deflated)):
        with part10_file(odd, store) as stored:
            assert stored is not None
            assert stored.path.read_bytes() == deflated + b"\0"
            assert stored.meta.transfer_syntax == DeflatedExplicitVRLittleEndian
        assert not stored.path.exists()
    assert not _temporary_files()


@pytest.mark.parametrize(
    ("name", "contexts"),
    [
        ("CT_small.dcm", [[ExplicitVRLittleEndian], [ImplicitVRLittleEndian]]),
        ("MR_small_implicit.dcm", [[ImplicitVRLittleEndian], [ExplicitVRLittleEndian]]),
        (
            "image_dfl.dcm",
            [[DeflatedExplicitVRLittleEndian], [ExplicitVRLittleEndian, ImplicitVRLittleEndian]],
        ),
        ("MR_small_bigendian.dcm", [[ExplicitVRBigEndian]]),
        ("JPEG2000.dcm", [[JPEG2000]]),
    ],
)
def test_part10_proposes_its_transfer_syntax_on_its_own(
    name: str, contexts: list[list[str]]
) -> None:
    data = _testfile(name).read_bytes()
    command = _part10_command(data)
    with part10_file(command, None) as stored:
        (need,) = needs_for(command, {}, stored)
    assert stored is not None
    assert need.abstract_syntax == stored.meta.sop_class_uid
    assert need.exact == stored.meta.transfer_syntax
    proposed = need.contexts()
    assert {cx.abstract_syntax for cx in proposed} == {need.abstract_syntax}
    assert [cx.transfer_syntax for cx in proposed] == contexts


def _assoc(accepted: list[str], requested: list[list[str]]) -> Any:
    """What Need.met_by reads of an association: contexts of CT Image Storage."""
    ct = CT_META.sop_class_uid
    return SimpleNamespace(
        accepted_contexts=[
            SimpleNamespace(abstract_syntax=ct, transfer_syntax=[s], as_scu=True, as_scp=False)
            for s in accepted
        ],
        requestor=SimpleNamespace(
            requested_contexts=[
                SimpleNamespace(abstract_syntax=ct, transfer_syntax=s) for s in requested
            ]
        ),
    )


def test_an_association_fits_a_part10_file_when_its_syntax_was_offered_on_its_own() -> None:
    exp, imp = ExplicitVRLittleEndian, ImplicitVRLittleEndian
    need = scu.Need(CT_META.sop_class_uid, (exp, imp), exact=exp)
    assert need.met_by(_assoc([exp], [[exp], [imp]]))
    # Refused on its own: the fallback is what the peer takes.
    assert need.met_by(_assoc([imp], [[exp], [imp]]))
    # Proposed together with another syntax (a dataset's context): the peer may have
    # picked the other; a new association that offers it on its own may do better.
    assert not need.met_by(_assoc([imp], [[exp, imp]]))
    assert not need.met_by(_assoc([], [[exp], [imp]]))
    assert scu.Need(CT_META.sop_class_uid, (exp, imp)).met_by(_assoc([imp], [[exp, imp]]))


def test_make_the_pool_switches_file_sending_on() -> None:
    pool = scu.AssociationPool("ME")
    try:
        assert _config.STORE_SEND_CHUNKED_DATASET
    finally:
        pool.close()
