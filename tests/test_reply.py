"""Reply parsing agrees with the reply JSON Schema, and turns into what pynetdicom expects
(bridge/protocol/reply.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from bridge.errors import ReplyError
from bridge.protocol import part10
from bridge.protocol.model import SPECS, Category, Service
from bridge.protocol.reply import build_reply, parse_reply, reply_to_dimse
from tests.schemas import REPLY

# A service whose replies may carry every reply field but one: N-CREATE allows
# affected_sop_instance_uid, N-GET allows attribute_identifier_list; error_id both.
tags = st.lists(st.from_regex(r"\A[0-9A-Fa-f]{8}\Z"), max_size=3)
uids = st.from_regex(r"\A(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){1,5}\Z")
destinations = st.fixed_dictionaries(
    {"host": st.sampled_from(["", "h"]), "port": st.integers(-1, 70000)}
)
contexts = st.lists(
    st.fixed_dictionaries(
        {"abstract_syntax": uids, "transfer_syntaxes": st.lists(uids, max_size=2)}
    ),
    max_size=2,
)
_FILE = (
    part10.header(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid="1.2.3.4",
        transfer_syntax="1.2.840.10008.1.2.1",
        implementation_class_uid="1.2.3",
    )
    + bytes.fromhex("08001600" + "5549" + "0200")
    + b"1\0"
)
_OFFSET = part10.read_meta(_FILE).dataset_offset
part10_documents = st.one_of(
    st.just(part10.inline_json(_FILE, _OFFSET)),
    st.just(part10.uri_json("file:///bulk/x", 200, 150)),
    st.fixed_dictionaries(
        {"length": st.integers(0, 300), "dataset_offset": st.integers(0, 300)},
        optional={
            "InlineBinary": st.sampled_from(
                ["", "AAAA", "!", part10.inline_json(_FILE, 0)["InlineBinary"]]
            ),
            "BulkDataURI": st.sampled_from(["", "file:///x", "http://x/y"]),
            "other": st.just(1),
        },
    ),
)
values: Any = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70000),
    st.text(max_size=70),
    tags,
    uids,
    destinations,
    contexts,
    part10_documents,
)
replies = st.dictionaries(
    st.sampled_from(
        [
            "status",
            "version",
            "dataset",
            "error_comment",
            "error_id",
            "offending_element",
            "attribute_identifier_list",
            "affected_sop_instance_uid",
            "sub_operations",
            "transfer_syntax_uid",
            "destination",
            "presentation_contexts",
            "part10",
            "x-trace",
            "unknown",
        ]
    ),
    values,
    max_size=6,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    document=replies,
    service=st.sampled_from(
        [Service.N_GET, Service.N_CREATE, Service.C_MOVE, Service.C_GET, Service.C_FIND]
    ),
)
def test_parser_never_accepts_what_the_schema_refuses(
    document: dict[str, Any], service: Service
) -> None:
    body = orjson.dumps(document)
    schema_ok = REPLY.is_valid(document)
    try:
        reply = parse_reply(body, SPECS[service])
    except ReplyError:
        return
    assert schema_ok, document
    assert reply.status == document["status"]


@pytest.mark.parametrize(
    "document",
    [
        {"status": 0},
        {"version": 1, "status": 0, "dataset": None},
        {"status": 0x0110, "error_comment": "x" * 64, "error_id": 65535},
        {"status": 0, "attribute_identifier_list": ["00100010", "0008ffff"]},
        {"status": 0, "x-anything": {"nested": [1, 2]}},
        {"status": 0, "dataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}}},
    ],
)
def test_valid_replies_pass_both_schema_and_parser(document: dict[str, Any]) -> None:
    REPLY.validate(document)
    reply = parse_reply(orjson.dumps(document), SPECS[Service.N_GET])
    assert reply.status == document["status"]


def test_reply_elements_become_dimse_keywords() -> None:
    body = orjson.dumps(
        {
            "status": 0x0107,
            "error_comment": "partial",
            "error_id": 5,
            "attribute_identifier_list": ["00100010"],
        }
    )
    reply = parse_reply(body, SPECS[Service.N_GET])
    assert reply.category is Category.WARNING
    assert reply.elements == {
        "ErrorComment": "partial",
        "ErrorID": 5,
        "AttributeIdentifierList": [0x00100010],
    }
    status, dataset = reply_to_dimse(reply, SPECS[Service.N_GET])
    assert status.Status == 0x0107
    assert status.AttributeIdentifierList == 0x00100010
    assert dataset is None


def test_failure_reply_drops_dataset() -> None:
    body = orjson.dumps(
        {"status": 0x0110, "dataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "X"}]}}}
    )
    reply = parse_reply(body, SPECS[Service.N_ACTION])
    _, dataset = reply_to_dimse(reply, SPECS[Service.N_ACTION])
    assert dataset is None


def test_n_create_instance_uid_rules() -> None:
    spec = SPECS[Service.N_CREATE]
    with_uid = parse_reply(b'{"status": 0, "affected_sop_instance_uid": "1.2.3"}', spec)
    status, dataset = reply_to_dimse(with_uid, spec, request_instance_uid=None)
    assert status.AffectedSOPInstanceUID == "1.2.3"
    assert dataset is not None
    assert dataset.AffectedSOPInstanceUID == "1.2.3"
    # The request named the instance: the reply may repeat it, not change it.
    status, dataset = reply_to_dimse(with_uid, spec, request_instance_uid="1.2.3")
    assert dataset is None or "AffectedSOPInstanceUID" not in dataset
    with pytest.raises(ReplyError, match="differs"):
        reply_to_dimse(with_uid, spec, request_instance_uid="1.2.4")
    bare = parse_reply(b'{"status": 0}', spec)
    with pytest.raises(ReplyError, match="needs affected_sop_instance_uid"):
        reply_to_dimse(bare, spec, request_instance_uid=None)


def test_reply_dataset_that_does_not_decode_is_a_reply_error() -> None:
    reply = parse_reply(b'{"status": 0, "dataset": {"zz": {"vr": "PN"}}}', SPECS[Service.N_GET])
    with pytest.raises(ReplyError, match="reply dataset"):
        reply_to_dimse(reply, SPECS[Service.N_GET])


def test_build_reply_round_trips_through_parse() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    from bridge.protocol.dicomjson import dataset_to_json

    body = build_reply(
        0, dataset=dataset_to_json(ds), elements={"error_comment": "ok", "error_id": None}
    )
    REPLY.validate(orjson.loads(body))
    reply = parse_reply(body, SPECS[Service.N_SET])
    assert reply.elements == {"ErrorComment": "ok"}


# -- part10: a C-GET or C-MOVE instance as a Part 10 file ---------------------------------


def test_part10_instance_reply_is_parsed() -> None:
    documents: list[dict[str, Any]] = [
        part10.inline_json(_FILE, _OFFSET),
        part10.uri_json("file:///bulk/abc", 4096, 300),
    ]
    refs = []
    for service, document in zip((Service.C_GET, Service.C_MOVE), documents, strict=True):
        body = {"status": 0xFF00, "part10": document}
        REPLY.validate(body)
        reply = parse_reply(orjson.dumps(body), SPECS[service])
        assert reply.dataset is None
        assert reply.part10 is not None
        assert (reply.part10.length, reply.part10.dataset_offset) == (
            document["length"],
            document["dataset_offset"],
        )
        refs.append(reply.part10)
    assert (refs[0].data, refs[0].uri) == (_FILE, None)
    assert (refs[1].data, refs[1].uri) == (None, "file:///bulk/abc")
    first = parse_reply(b'{"status": 65280, "sub_operations": 1}', SPECS[Service.C_GET])
    assert first.part10 is None


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"dataset": {}}, 0xFF00, "both dataset and part10"),
        ({"transfer_syntax_uid": "1.2.840.10008.1.2"}, 0xFF00, "transfer_syntax_uid goes with"),
        ({}, 0x0000, "only in a Pending reply"),
    ],
    ids=["with-dataset", "with-transfer-syntax", "final"],
)
def test_part10_reply_combinations_refused(
    extra: dict[str, Any], status: int, message: str
) -> None:
    document = {"status": status, "part10": part10.inline_json(_FILE, _OFFSET), **extra}
    assert not REPLY.is_valid(document)
    with pytest.raises(ReplyError, match=message):
        parse_reply(orjson.dumps(document), SPECS[Service.C_GET])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("x", "part10 is not an object"),
        ({"length": 200, "dataset_offset": 150}, "exactly one of"),
        ({**part10.inline_json(_FILE, _OFFSET), "BulkDataURI": "file:///x"}, "exactly one of"),
        ({"length": 200, "dataset_offset": 150, "InlineBinary": "!!!!"}, "not valid base64"),
        ({**part10.inline_json(bytes(132), 132)}, "not a DICOM Part 10 file"),
        ({**part10.inline_json(_FILE, _OFFSET), "length": 1000}, "length does not match"),
        ({**part10.inline_json(_FILE, _OFFSET), "dataset_offset": 140}, "dataset_offset is not"),
        ({"dataset_offset": 150, "BulkDataURI": "file:///x"}, "length must be an integer"),
        ({"length": 100, "dataset_offset": 150, "BulkDataURI": "file:///x"}, "length must be"),
        ({"length": 200, "dataset_offset": 150, "BulkDataURI": "http://x/y"}, "must be a file://"),
        ({**part10.uri_json("file:///x", 200, 150), "sha256": "00"}, "unknown field"),
    ],
    ids=[
        "not-object", "neither", "both", "bad-base64", "not-part10", "length-mismatch",
        "offset-mismatch", "no-length", "short-length", "not-file-uri", "unknown-field",
    ],
)  # fmt: skip
def test_malformed_part10_is_refused(document: Any, message: str) -> None:
    body = orjson.dumps({"status": 0xFF00, "part10": document})
    with pytest.raises(ReplyError, match=message):
        parse_reply(body, SPECS[Service.C_GET])


def test_part10_only_for_c_get_and_c_move() -> None:
    body = orjson.dumps({"status": 0xFF00, "part10": part10.inline_json(_FILE, _OFFSET)})
    with pytest.raises(ReplyError, match="part10 not allowed for C-FIND"):
        parse_reply(body, SPECS[Service.C_FIND])
