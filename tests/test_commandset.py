"""bridge._pynetdicom.commandset: command sets byte-identical to pydicom's, or a fallback."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import datadict
from pydicom.dataset import Dataset
from pynetdicom import dimse, dimse_messages, dimse_primitives
from pynetdicom.dsutils import encode as pydicom_encode

from bridge._pynetdicom import commandset

COMMAND_TAGS = sorted(tag for tag in datadict.DicomDictionary if tag >> 16 == 0)  # type: ignore[attr-defined]
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"))
UIDS = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,6}", fullmatch=True)


def _values(vr: str) -> st.SearchStrategy[Any]:
    if vr == "US":
        return st.integers(0, 0xFFFF) | st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=4)
    if vr == "UL":
        return st.integers(0, 0xFFFFFFFF)
    if vr == "AT":
        tags = st.integers(0, 0xFFFFFFFF)
        return tags | st.lists(tags, min_size=2, max_size=4)
    if vr == "UI":
        return UIDS
    if vr == "IS":
        return st.integers(-(2**31), 2**31 - 1).map(str)
    if vr == "CS":
        return st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)
    return ASCII.filter(lambda text: text == text.strip()).map(lambda text: text[:64])


@st.composite
def command_sets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    for tag in draw(st.lists(st.sampled_from(COMMAND_TAGS), max_size=12, unique=True)):
        vr = datadict.dictionary_VR(tag)
        value = draw(st.none() | _values(vr))
        ds.add_new(tag, vr, value)
    return ds


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(command_sets())
def test_bytes_are_pydicoms_or_none(ds: Dataset) -> None:
    fast = commandset.encode(ds)
    vrs = {elem.VR for elem in ds}
    if fast is None:
        assert "IS" in vrs, "fell back for a command set it should encode"
        return
    assert fast == pydicom_encode(ds, True, True)


def _messages() -> list[Any]:
    out = []
    for primitive_type, message_type in dimse._RQ_TO_MESSAGE.items():
        out.append(pytest.param(primitive_type, message_type, False, id=message_type.__name__))
    for response_type, response_message in dimse._RSP_TO_MESSAGE.items():
        out.append(
            pytest.param(response_type, response_message, True, id=response_message.__name__)
        )
    return out


@pytest.mark.parametrize(("primitive_type", "message_type", "response"), _messages())
def test_every_dimse_message_type(primitive_type: Any, message_type: Any, response: bool) -> None:
    primitive = primitive_type()
    fields = {
        "MessageID": 7,
        "MessageIDBeingRespondedTo": 7,
        "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "RequestedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "RequestedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "Priority": 2,
        "MoveDestination": "STORE-SCP",
        "MoveOriginatorApplicationEntityTitle": "ORIGIN",
        "MoveOriginatorMessageID": 3,
        "EventTypeID": 1,
        "ActionTypeID": 1,
        "NumberOfRemainingSuboperations": 4,
        "NumberOfCompletedSuboperations": 5,
        "NumberOfFailedSuboperations": 0,
        "NumberOfWarningSuboperations": 1,
        "AttributeIdentifierList": [0x00100010, 0x00100020],
    }
    for name, value in fields.items():
        if hasattr(primitive, name) and not (response and name == "MessageID"):
            setattr(primitive, name, value)
    if response:
        primitive.Status = 0xFF00 if hasattr(primitive, "NumberOfRemainingSuboperations") else 0
        primitive.MessageIDBeingRespondedTo = 7
    message = message_type()
    message.primitive_to_message(primitive)
    ds = message.command_set
    ds.ErrorComment = "Consumer said: disk full"
    ds.OffendingElement = [0x00100010]
    fast = commandset.encode(ds)
    assert fast is not None
    assert fast == pydicom_encode(ds, True, True)


@pytest.mark.parametrize(
    "value", ["Zürich", ["A", "B\\C"], "odd"], ids=["non-ascii", "backslash", "odd"]
)
def test_text_it_cannot_match_falls_back(value: Any) -> None:
    ds = Dataset()
    ds.ErrorComment = value
    fast = commandset.encode(ds)
    if fast is not None:
        assert fast == pydicom_encode(ds, True, True)
    else:
        assert value == "Zürich"


def test_install_routes_pynetdicom_through_it() -> None:
    commandset.install()
    commandset.install()  # idempotent: wraps once
    wrapped = dimse_messages.encode  # type: ignore[attr-defined]
    assert getattr(wrapped, "__wrapped_by_bridge__", False)
    rsp = dimse_primitives.C_ECHO()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0
    message = dimse_messages.C_ECHO_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    encoded = pdata.presentation_data_value_list[0][1][1:]
    assert encoded == pydicom_encode(message.command_set, True, True)
