"""The short DICOM values the bridge checks everywhere: UIDs, tags written as hex text, AE
titles. Pure; every check of these forms is here.

Not every caller has accepted the same set, and none may start refusing what it accepted.
The differences are named checks, each saying who uses it and why:

- UIDs: :func:`is_uid` is the JSON Schemas' ``uid``, for what arrives as JSON (replies,
  commands) and for the SOP classes of the settings; :func:`is_loose_uid` also takes
  leading zeros, for the UIDs of stored data sets (the example Q/R index).
- Tags: :func:`is_tag_text` is the input schemas' ``tag`` (replies, commands);
  :data:`TAG_KEY` is a key or AT value of the DICOM JSON Model.
- AE titles: :func:`is_ae_title` is PS3.5's AE (the bridge's own title, commands);
  :func:`fits_ae_title` checks the length alone (the AE table, the calling-AE allow-list).

And the first check of every JSON document that crosses the broker (envelope, reply,
command): :func:`json_object`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import orjson

UID_MAX_LENGTH: Final = 64
AE_TITLE_MAX_LENGTH: Final = 16

UID_PATTERN: Final = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
"""The ``uid`` pattern of the JSON Schemas (``schemas/*.schema.json``), verbatim."""
TAG_PATTERN: Final = r"^[0-9A-Fa-f]{8}$"
"""The ``tag`` pattern of the input JSON Schemas (replies, commands), verbatim; the
documents the bridge writes use upper case only (:func:`tag_text`)."""

_UID: Final = re.compile(UID_PATTERN)
_TAG: Final = re.compile(TAG_PATTERN)
_LOOSE_UID: Final = re.compile(r"[0-9]+(\.[0-9]+)*")

TAG_KEY: Final = re.compile(r"[0-9A-Fa-f]{8}\Z")
"""A key or an AT value of the DICOM JSON Model (PS3.18 F.2): eight hex digits, nothing
after them (use with ``match``)."""

AE_FORBIDDEN: Final = frozenset("\\") | {chr(c) for c in range(32)} | {chr(127)}
"""Characters an AE title may not hold (PS3.5 Table 6.2-1): backslash and controls."""


def is_uid(text: str) -> bool:
    """Whether ``text`` is a UID as the JSON Schemas say: at most 64 characters, numeric
    components without leading zeros (PS3.5 9.1).

    Matched the way Python's jsonschema applies the schemas (``re.search``), so that the
    reply and command parsers accept what the schemas accept: like there, one final line
    feed passes (Python's ``$`` matches before it), counted in the 64 characters.
    """
    return len(text) <= UID_MAX_LENGTH and _UID.match(text) is not None


def is_loose_uid(text: str) -> bool:
    """Whether ``text`` is a UID of a stored data set: at most 64 characters, components
    of digits that may start with a zero (found in real data sets, so the example Q/R
    index stores and matches them); nothing else, not even a final line feed."""
    return len(text) <= UID_MAX_LENGTH and _LOOSE_UID.fullmatch(text) is not None


def is_tag_text(text: str) -> bool:
    """Whether ``text`` is a tag as the input schemas write one: eight hex digits of
    either case. Matched like :func:`is_uid`: one final line feed passes
    (``int(text, 16)`` reads it as the same tag)."""
    return _TAG.match(text) is not None


def tag_text(tag: int) -> str:
    """``tag`` as the documents the bridge writes spell it: eight upper-case hex digits."""
    return f"{tag:08X}"


def is_ae_title(text: str) -> bool:
    """Whether ``text``, its padding stripped by the caller, is an AE title (PS3.5 Table
    6.2-1): 1 to 16 characters, no backslash, no control character."""
    return 0 < len(text) <= AE_TITLE_MAX_LENGTH and not AE_FORBIDDEN.intersection(text)


def fits_ae_title(text: str) -> bool:
    """Whether ``text`` has the length of an AE title, 1 to 16 characters, whatever they
    are. The AE table and the calling-AE allow-list have only ever checked this (the
    allow-list also refuses a backslash); both only look up titles that peers sent."""
    return 0 < len(text) <= AE_TITLE_MAX_LENGTH


def json_object(body: bytes, what: str, error: Callable[[str], Exception]) -> dict[str, Any]:
    """``body`` decoded as a JSON object. Raises ``error("<what> is not JSON")`` or
    ``error("<what> is not a JSON object")``: messages without values, safe to log and to
    send."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise error(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise error(f"{what} is not a JSON object")
    return document
