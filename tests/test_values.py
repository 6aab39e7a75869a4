"""The checks of UIDs, tags and AE titles (bridge/protocol/values.py), each against an
independent statement of the set it accepts, and against the JSON Schemas."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol import values
from tests.schemas import SCHEMAS

DIGITS = frozenset(string.digits)
HEX = frozenset(string.hexdigits)

# Text close to the forms checked, and any text at all.
near_uids = st.text(alphabet="0123456789.\n a", max_size=70)
near_tags = st.text(alphabet="0123456789abcdefABCDEFgG\n ", max_size=10)
near_titles = st.text(alphabet="AB -\\\t\n\x00\x7f\x1f\u00e9", max_size=20)
anything = st.text(max_size=80)


def _components(text: str) -> list[str] | None:
    parts = text.split(".")
    return parts if all(part and set(part) <= DIGITS for part in parts) else None


@given(st.one_of(near_uids, anything))
def test_is_uid(text: str) -> None:
    # PS3.5 9.1, with the final line feed a schema's "$" lets through (Python's re).
    parts = _components(text.removesuffix("\n"))
    expected = (
        len(text) <= 64
        and parts is not None
        and all(part == "0" or not part.startswith("0") for part in parts)
    )
    assert values.is_uid(text) == expected


@given(st.one_of(near_uids, anything))
def test_is_loose_uid(text: str) -> None:
    assert values.is_loose_uid(text) == (len(text) <= 64 and _components(text) is not None)


@given(st.one_of(near_tags, anything))
def test_is_tag_text(text: str) -> None:
    bare = text.removesuffix("\n")
    assert values.is_tag_text(text) == (len(bare) == 8 and set(bare) <= HEX)


@given(st.one_of(near_tags, anything))
def test_tag_key(text: str) -> None:
    expected = len(text) == 8 and set(text) <= HEX
    assert (values.TAG_KEY.match(text) is not None) == expected


@given(st.integers(0, 0xFFFFFFFF))
def test_tag_text_round_trips(tag: int) -> None:
    text = values.tag_text(tag)
    assert text == text.upper()
    assert values.is_tag_text(text)
    assert values.TAG_KEY.match(text)
    assert int(text, 16) == tag


@given(st.one_of(near_titles, anything))
def test_ae_titles(text: str) -> None:
    fits = 0 < len(text) <= 16
    assert values.fits_ae_title(text) == fits
    clean = "\\" not in text and all(ord(c) >= 32 and ord(c) != 127 for c in text)
    assert values.is_ae_title(text) == (fits and clean)


@pytest.mark.parametrize(
    ("text", "uid", "loose"),
    [
        ("1.2.840.10008.1.1", True, True),
        ("0", True, True),
        ("1.0.2", True, True),
        ("1.02", False, True),  # a leading zero: only stored data sets have those
        ("1.2\n", True, False),  # the schemas' "$", as Python applies it
        ("1.2\n\n", False, False),
        ("1..2", False, False),
        ("1.2.", False, False),
        ("", False, False),
        ("1." + "2" * 62, True, True),
        ("1." + "2" * 63, False, False),
        ("1." + "2" * 61 + "\n", True, False),
        ("1.2\u0663", False, False),  # a digit, but not an ASCII one
    ],
)
def test_uid_examples(text: str, uid: bool, loose: bool) -> None:
    assert values.is_uid(text) == uid
    assert values.is_loose_uid(text) == loose


def _schema_defs(name: str) -> dict[str, dict[str, object]]:
    defs: dict[str, dict[str, object]] = json.loads((SCHEMAS / name).read_text())["$defs"]
    return defs


@pytest.mark.parametrize(
    "name",
    [
        "envelope.schema.json",
        "reply.schema.json",
        "command.schema.json",
        "command-reply.schema.json",
    ],
)
def test_uid_pattern_is_the_schemas(name: str) -> None:
    uid = _schema_defs(name)["uid"]
    assert uid["pattern"] == values.UID_PATTERN
    assert uid["maxLength"] == values.UID_MAX_LENGTH


@pytest.mark.parametrize("name", ["reply.schema.json", "command.schema.json"])
def test_tag_pattern_is_the_input_schemas(name: str) -> None:
    assert _schema_defs(name)["tag"]["pattern"] == values.TAG_PATTERN
