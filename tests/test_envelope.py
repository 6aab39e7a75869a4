"""The request envelope (bridge/protocol/envelope.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.errors import CodecError
from bridge.protocol.envelope import iso_time, parse_envelope


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
