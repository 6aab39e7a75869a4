"""DIMSE command sets encoded without pydicom's general-purpose writer.

pynetdicom encodes every command set it sends twice with pydicom's ``write_dataset`` (once
to compute the Command Group Length, once for the message): about 0.2 ms of CPU per DIMSE
message, in every response the bridge sends and in every sub-operation and pending C-FIND
response. A command set is a handful of group 0000 elements, always Implicit VR Little
Endian (PS3.7 6.3.1), with ten value representations; :func:`encode` writes those bytes
directly. Anything else (another group, a raw element, a value it does not handle such as
non-ASCII text) returns None, and the caller falls back to pydicom. ``tests/
test_commandset.py`` checks the bytes against pydicom's over every DIMSE message type.

:func:`install` routes pynetdicom's command set encoding through :func:`encode` (one
module-level name in ``pynetdicom.dimse_messages``, used only for command sets).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import dimse_messages

_HEADER = struct.Struct("<HHI")
_SPACE_PADDED = frozenset({"AE", "CS", "LO", "LT", "SH"})
_installed = threading.Lock()


def encode(ds: Dataset) -> bytes | None:
    """``ds`` as Implicit VR Little Endian bytes, identical to pydicom's; None when ``ds``
    holds anything but plain group 0000 elements of a command set."""
    out = bytearray()
    for elem in ds.elements():
        if not isinstance(elem, DataElement):
            return None
        tag = int(elem.tag)
        if tag >> 16:
            return None
        data = _value(elem.VR, elem.value)
        if data is None:
            return None
        out += _HEADER.pack(0, tag & 0xFFFF, len(data))
        out += data
    return bytes(out)


def _value(vr: str, value: Any) -> bytes | None:
    if value is None or value == "":
        return b""
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    try:
        if vr == "US":
            return struct.pack(f"<{len(values)}H", *values)
        if vr == "UL":
            return struct.pack(f"<{len(values)}I", *values)
        if vr == "AT":
            return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)
    except (struct.error, TypeError, ValueError):
        return None
    if vr == "UI" or vr in _SPACE_PADDED:
        if not all(isinstance(v, str) for v in values):
            return None
        text = "\\".join(values)
        if not text.isascii():
            return None
        data = text.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return data
    return None


def install() -> None:
    """Make pynetdicom encode command sets with :func:`encode` (idempotent)."""
    with _installed:
        current: Callable[..., Any] = dimse_messages.encode  # type: ignore[attr-defined]
        if getattr(current, "__wrapped_by_bridge__", False):
            return
        original = current

        def encode_command_set(
            ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
        ) -> bytes | None:
            if is_implicit_vr and is_little_endian and not deflated:
                fast = encode(ds)
                if fast is not None:
                    return fast
            return original(ds, is_implicit_vr, is_little_endian, deflated)  # type: ignore[no-any-return]

        encode_command_set.__wrapped_by_bridge__ = True  # type: ignore[attr-defined]
        dimse_messages.encode = encode_command_set  # type: ignore[attr-defined]
