"""The pure parts of commands: parsing agrees with the JSON Schema, replies match theirs,
datasets are checked before anything is sent, settings refuse contradictions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from bridge.config import BridgeSettings
from bridge.protocol import command as commands
from bridge.protocol.command import CommandError, Reason, parse_command
from bridge.protocol.model import Service
from bridge.scu import pool as scu
from bridge.scu.commander import CommanderSettings
from bridge.scu.perform import needs_for
from tests.schemas import validator

COMMAND = validator("command.schema.json")
REPLY = validator("command-reply.schema.json")
SC = "1.2.840.10008.1.20.1"
UID = "1.2.826.0.1.3680043.8.498.1"
DEST = {"ae_title": "ARCHIVE"}

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
