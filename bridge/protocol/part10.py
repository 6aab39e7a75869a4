"""DICOM Part 10 files as the bridge moves them: the received bytes, never re-encoded.

Pure: bytes in, bytes out. A Part 10 file is a 128-byte preamble, ``DICM``, the File
Meta Information (group 0002, always Explicit VR Little Endian, PS3.10 7.1) and then the
data set exactly as a peer sent it in the transfer syntax the meta names.

On the broker a Part 10 file is a JSON object (``schemas/envelope.schema.json``
``#/$defs/part10``): ``InlineBinary`` (base64 of the whole file) or ``BulkDataURI`` (a
``file://`` URI in the claim-check directory), with ``length`` (bytes of the file) and
``dataset_offset`` (where the data set starts). A value of the envelope's JSON
``dataset`` that is also in the Part 10 file may be a *reference* instead of a copy: a
``BulkDataURI`` of the form ``?offset=O&length=L`` (a same-document reference, RFC 3986
4.4, with dcm4che's offset/length query) names ``L`` bytes at ``O`` of the Part 10 file.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.errors import CodecError

PREAMBLE: Final = bytes(128) + b"DICM"
"""The 132 bytes every Part 10 file starts with (a zero preamble, as DCMTK writes it)."""

_EXPLICIT_LONG: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC",
                                   b"UN", b"UR", b"UT", b"SV", b"UV"})  # fmt: skip
_REFERENCE: Final = re.compile(r"\?offset=([0-9]{1,15})&length=([0-9]{1,15})\Z")


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _EXPLICIT_LONG:
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _uid(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def _text(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b" " if len(data) % 2 else data


def header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version: str | None = None,
    source_ae: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a data set: what goes in front of
    the received data set bytes to make them a Part 10 file. The same bytes pydicom's
    ``write_file_meta_info`` writes for these elements. Raises CodecError for a value
    that is not ASCII."""
    try:
        body = b"".join(
            (
                _element(0x0001, b"OB", b"\x00\x01"),
                _element(0x0002, b"UI", _uid(sop_class_uid)),
                _element(0x0003, b"UI", _uid(sop_instance_uid)),
                _element(0x0010, b"UI", _uid(transfer_syntax)),
                _element(0x0012, b"UI", _uid(implementation_class_uid)),
                _element(0x0013, b"SH", _text(implementation_version))
                if implementation_version
                else b"",
                _element(0x0016, b"AE", _text(source_ae.strip())) if source_ae else b"",
            )
        )
    except UnicodeError:
        raise CodecError("File Meta Information value is not ASCII") from None
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What a Part 10 file's File Meta Information says about its data set."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset_offset: int
    """Where the data set starts: bytes of preamble, ``DICM`` and group 0002."""
    source_ae: str | None = None


def read_meta(data: bytes | bytearray | memoryview) -> FileMeta:
    """The File Meta Information at the start of ``data`` (a Part 10 file, or at least
    its first bytes up to the data set). Elements are read up to the first tag past
    group 0002, whether or not the group length is right, as DCMTK and pydicom do.
    Raises CodecError when there is no preamble and ``DICM`` or a required element
    (Transfer Syntax, Media Storage SOP Class and Instance UIDs) is missing."""
    view = memoryview(data)
    if len(view) < len(PREAMBLE) or bytes(view[128:132]) != b"DICM":
        raise CodecError("not a DICOM Part 10 file: no preamble and DICM prefix")
    values: dict[int, bytes] = {}
    position = len(PREAMBLE)
    while position + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, position)
        if group != 2:
            break
        vr = bytes(view[position + 4 : position + 6])
        if vr in _EXPLICIT_LONG:
            if position + 12 > len(view):
                break
            (length,) = struct.unpack_from("<I", view, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", view, position + 6)
            start = position + 8
        end = start + length
        if length == 0xFFFFFFFF or end > len(view):
            raise CodecError("File Meta Information element is cut off")
        values[element] = bytes(view[start:end])
        position = end

    def text(element: int, name: str, required: bool = True) -> str:
        raw = values.get(element)
        if raw is None or not raw.strip(b"\0 "):
            if required:
                raise CodecError(f"File Meta Information has no {name}")
            return ""
        return raw.decode("ascii", "replace").strip("\0 ")

    return FileMeta(
        transfer_syntax=text(0x0010, "Transfer Syntax UID"),
        sop_class_uid=text(0x0002, "Media Storage SOP Class UID"),
        sop_instance_uid=text(0x0003, "Media Storage SOP Instance UID"),
        dataset_offset=position,
        source_ae=text(0x0016, "Source AE Title", required=False) or None,
    )


META_READ_LIMIT: Final = 1 << 20
"""Bytes :func:`read_meta_prefix` reads at most to find the end of the File Meta
Information (which takes a few hundred in practice)."""


def read_meta_prefix(read: Callable[[int], bytes], *, first: int = 4096) -> FileMeta:
    """:func:`read_meta` of a Part 10 file read through ``read(n)``, which returns its
    first ``n`` bytes (fewer only at its end): reads ``first`` bytes, and more only while
    the File Meta Information goes on past them, so never the whole of a large file. The
    I/O is the caller's. Raises CodecError as :func:`read_meta` does, also when the File Meta
    Information is longer than :data:`META_READ_LIMIT`."""
    size = first
    while True:
        head = read(size)
        whole = len(head) < size
        try:
            meta = read_meta(head)
        except CodecError:
            # More bytes can help only a file that has the prefix (or may have it).
            if whole or (len(head) >= len(PREAMBLE) and bytes(head[128:132]) != b"DICM"):
                raise
        else:
            # An element header (12 bytes at most) past the meta is in view, or the file
            # ends: the meta cannot go on beyond what was read.
            if whole or meta.dataset_offset + 12 <= len(head):
                return meta
        if size >= META_READ_LIMIT:
            raise CodecError("File Meta Information is too long")
        size = min(size * 4, META_READ_LIMIT)


# -- the JSON form ------------------------------------------------------------------------


def inline_json(data: bytes | bytearray | memoryview, dataset_offset: int) -> dict[str, Any]:
    """A Part 10 file carried in the message."""
    return {
        "length": len(data),
        "dataset_offset": dataset_offset,
        "InlineBinary": base64.b64encode(data).decode("ascii"),
    }


def uri_json(uri: str, length: int, dataset_offset: int) -> dict[str, Any]:
    """A Part 10 file in the claim-check store."""
    return {"length": length, "dataset_offset": dataset_offset, "BulkDataURI": uri}


@dataclass(frozen=True, slots=True)
class Part10Ref:
    """A Part 10 file as a message names it: its bytes (inline) or its URI."""

    data: bytes | None
    uri: str | None
    length: int
    dataset_offset: int


_JSON_KEYS: Final = frozenset({"length", "dataset_offset", "InlineBinary", "BulkDataURI"})


def from_json(document: Any) -> Part10Ref:
    """The ``part10`` object of a message (``schemas/envelope.schema.json#/$defs/part10``;
    commands and replies use the same): ``length`` and ``dataset_offset``, integers of at
    least 132, and exactly one of ``InlineBinary`` (base64 of ``length`` bytes) and
    ``BulkDataURI`` (a ``file://`` URI), nothing else. Raises CodecError naming the first
    problem; the bytes themselves are not checked to be a Part 10 file (see
    :func:`read_meta`)."""
    if not isinstance(document, Mapping):
        raise CodecError("part10 is not an object")
    if document.keys() - _JSON_KEYS:
        raise CodecError(
            "part10 has an unknown field: it takes length, dataset_offset and "
            "InlineBinary or BulkDataURI only"
        )
    inline, uri = document.get("InlineBinary"), document.get("BulkDataURI")
    if (inline is None) == (uri is None):
        raise CodecError("part10 needs exactly one of InlineBinary and BulkDataURI")
    length, offset = document.get("length"), document.get("dataset_offset")
    for name, value in (("length", length), ("dataset_offset", offset)):
        if type(value) is not int or value < len(PREAMBLE):
            raise CodecError(f"part10 {name} must be an integer of at least {len(PREAMBLE)}")
    assert isinstance(length, int)
    assert isinstance(offset, int)
    if uri is not None:
        if not isinstance(uri, str) or not uri.startswith("file://"):
            raise CodecError("part10 BulkDataURI must be a file:// URI")
        return Part10Ref(None, uri, length, offset)
    if not isinstance(inline, str):
        raise CodecError("part10 InlineBinary is not a string")
    try:
        data = base64.b64decode(inline, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("part10 InlineBinary is not valid base64") from None
    if length != len(data):
        raise CodecError("part10 length does not match its InlineBinary")
    return Part10Ref(data, None, length, offset)


def reference(offset: int, length: int) -> str:
    """The BulkDataURI of ``length`` bytes at ``offset`` of the message's Part 10 file."""
    return f"?offset={offset}&length={length}"


def parse_reference(uri: str) -> tuple[int, int] | None:
    """``(offset, length)`` of a reference made by :func:`reference`; None for any other
    URI."""
    match = _REFERENCE.match(uri)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def slice_reference(part10: bytes | memoryview, uri: str) -> bytes:
    """The bytes a reference names in ``part10``. Raises CodecError when ``uri`` is no
    reference or reaches past the end of the file."""
    where = parse_reference(uri)
    if where is None:
        raise CodecError("BulkDataURI is not a reference into the Part 10 file")
    offset, length = where
    if offset + length > len(part10):
        raise CodecError("BulkDataURI reaches past the end of the Part 10 file")
    return bytes(part10[offset : offset + length])
