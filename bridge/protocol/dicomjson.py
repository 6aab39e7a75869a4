"""DICOM JSON Model (PS3.18 Annex F) <-> pydicom :class:`~pydicom.dataset.Dataset`.

A pure module: no I/O, no logging, no state but a small cache of character set names;
safe to call from many threads at once. The caller serializes the result with
orjson (``orjson.dumps`` never fails on what :func:`dataset_to_json` returns) and parses JSON
before :func:`json_to_dataset`.

Encoding works on the raw elements that pydicom keeps undecoded for datasets read from bytes
(the C-STORE hot path): values are decoded here with :mod:`struct`, ``bytes.decode`` and
pydicom's character set tables, without making pydicom convert them. In-memory
:class:`~pydicom.dataelem.DataElement` values are supported too and give the same JSON.

The JSON is in one normal form, so that a dataset read from bytes, the same dataset built in
memory and the dataset decoded from its JSON all give identical JSON:

* keys are upper-case, ascending; group lengths (gggg,0000) are left out (PS3.18 F.2.2);
* padding that PS3.5 6.2 calls non-significant is removed (trailing spaces and NULs of every
  string, leading spaces of AE, CS, DS and IS);
* an empty value has no ``Value``; an empty component of a multi-valued element is ``null``
  (PS3.18 F.2.5); empty PN component groups are left out (F.2.2);
* IS and DS are JSON numbers (F.2.3): IS and DS without ``.``/``e``/``E`` are integers, other
  DS are floats. A DS or IS that no JSON number holds exactly (possible only for values
  longer than PS3.5 allows) is kept as a JSON string, as the F.2.3 note permits.
* ambiguous VRs (``US or SS``, ``OB or OW``, ``US or OW``, ...) are resolved with pydicom's
  rules (Pixel Representation, Bits Allocated, LUT Descriptor, implicit VR -> OW);
* OD/OF/OL/OV/OW values are base64 of the little endian bytes (PS3.18 8.7.3.3.2): values of
  a big endian dataset are byte-swapped.

Anything that cannot be represented exactly raises :class:`~bridge.errors.CodecError` whose
message names the element (tag and VR) and never a value.
"""

from __future__ import annotations

import binascii
import functools
import math
import re
import struct
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal, localcontext
from io import BufferedIOBase
from operator import itemgetter
from typing import Any, Final, Protocol, cast

from pydicom import config as pydicom_config
from pydicom._dicom_dict import DicomDictionary
from pydicom.charset import (
    CODES_TO_ENCODINGS,
    STAND_ALONE_ENCODINGS,
    default_encoding,
    handled_encodings,
    python_encoding,
)
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import ConstrainedList, MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import TEXT_VR_DELIMS, PersonName
from pydicom.values import convert_SQ

from bridge.errors import CodecError
from bridge.protocol.values import TAG_KEY

__all__ = [
    "BulkDataSink",
    "BulkDataSource",
    "DeferredValue",
    "DeferredValues",
    "dataset_to_json",
    "json_to_dataset",
]

BulkDataSink = Callable[[int, str, bytes], str | None]
"""``(tag, vr, value) -> BulkDataURI``, or ``None`` to inline the value as base64."""
BulkDataSource = Callable[[str], bytes]
"""``BulkDataURI -> value``."""


class DeferredValue(Protocol):
    """A value that a dataset read with ``defer_size`` left in its file, as stored there."""

    def __len__(self) -> int:
        """Its length in bytes (an undefined length resolved to the bytes before the
        Sequence Delimitation Item, which is what pydicom reads as the value)."""
        ...

    def read(self) -> bytes:
        """Its bytes, in memory."""
        ...


class DeferredValues(Protocol):
    """The values a dataset read with ``defer_size`` left in its file (a RawDataElement
    whose ``value`` is None), so that :func:`dataset_to_json` can claim-check large binary
    values without holding them."""

    def value(self, raw: RawDataElement) -> bytes | DeferredValue:
        """Where the value of ``raw`` is; its bytes when it cannot be located without
        reading it."""
        ...

    def claim(self, tag: int, vr: str, value: DeferredValue) -> str | None:
        """The BulkDataURI of a non-empty little endian binary value, or None to inline it.
        Must decide as the ``bulk_data`` sink would for the same bytes, so that the JSON
        does not depend on whether a value was deferred."""
        ...


_Json = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# VR tables
# ---------------------------------------------------------------------------------------------

_MULTI_TEXT: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
"""String VRs whose values are split on backslash."""
_SINGLE_TEXT: Final = frozenset({"LT", "ST", "UT", "UR"})
"""String VRs with one value that may contain a backslash (PS3.5 6.2)."""
_CHARSET_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""VRs whose bytes depend on Specific Character Set; the others are ASCII (decoded as
latin-1 like pydicom, so that no byte is lost)."""
_STRIP_BOTH: Final = frozenset({"AE", "CS", "DS", "IS"})
"""VRs whose leading spaces are not significant either (PS3.5 Table 6.2-1)."""
_BINARY: Final = {"OB": 1, "UN": 1, "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
"""Binary VRs and the size their value length must be a multiple of."""
_NUMBERS: Final = {
    # vr: (struct code, size, minimum, maximum); floats have no range here
    "US": ("H", 2, 0, 0xFFFF),
    "SS": ("h", 2, -0x8000, 0x7FFF),
    "UL": ("I", 4, 0, 0xFFFFFFFF),
    "SL": ("i", 4, -0x80000000, 0x7FFFFFFF),
    "UV": ("Q", 8, 0, 0xFFFFFFFFFFFFFFFF),
    "SV": ("q", 8, -0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
    "FL": ("f", 4, None, None),
    "FD": ("d", 8, None, None),
}
_OTHER_VRS: Final = frozenset({"PN", "DS", "IS", "AT", "SQ"})
_VRS: Final = _MULTI_TEXT | _SINGLE_TEXT | _OTHER_VRS | frozenset(_BINARY) | frozenset(_NUMBERS)
"""The 34 VRs of PS3.5 Table 6.2-1."""

_LUT_DESCRIPTORS: Final = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
"""'US or SS' LUT descriptors whose first value is always unsigned (PS3.3 C.11.1.1.1);
pydicom reads it as unsigned even when the VR is SS, and so do we."""
_WAVEFORM_OB_OW: Final = frozenset({0x54000110, 0x54000112, 0x5400100A, 0x54001010})
_FLT_MAX: Final = 3.4028234663852886e38
_INT64: Final = 1 << 63
_NATIVE_LITTLE: Final = sys.byteorder == "little"
_ESC: Final = 0x1B
_ESC_FRAGMENTS: Final = re.compile(b"(^[^\x1b]+|[\x1b][^\x1b]*)")
_DS_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_IS_RE: Final = re.compile(r"[+-]?[0-9]+\Z")
_ITEM_TAG_BYTES: Final = b"\xfe\xff\x00\xe0"
_UNDEFINED: Final = 0xFFFFFFFF
_first: Final = itemgetter(0)


class _Invalid(Exception):
    """A value cannot be converted; turned into a CodecError that names tag and VR."""


def _where(tag: int, vr: str) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' if vr else ''}{vr}"


def _error(tag: int, vr: str, reason: str) -> CodecError:
    return CodecError(f"{_where(tag, vr)}: {reason}")


def _in_item(exc: CodecError, tag: int, index: int) -> CodecError:
    """Append where a nested error happened; the innermost element stays first so that the
    64 characters of an Error Comment name it."""
    return CodecError(f"{exc.message} (in {_where(tag, 'SQ')} item {index})")


# ---------------------------------------------------------------------------------------------
# Character sets (PS3.5 6.1, PS3.3 C.12.1.1.2)
# ---------------------------------------------------------------------------------------------

_DEFAULT_ENCODINGS: Final = (default_encoding,)
_charset_cache: dict[tuple[str, ...], tuple[str, ...]] = {}


def _python_encodings(terms: list[str]) -> tuple[str, ...]:
    """Python codecs for the values of Specific Character Set, as pydicom's
    ``convert_encodings`` maps them (common misspellings fixed, stand-alone encodings not
    combined), except that an unknown term is an error instead of a silent fallback to
    latin-1, which would change every non-ASCII character."""
    key = tuple(terms)
    cached = _charset_cache.get(key)
    if cached is not None:
        return cached
    terms = terms or [""]
    if not terms[0]:
        terms = ["ISO_IR 6", *terms[1:]]
    codecs: list[str] = []
    for term in terms:
        codec = python_encoding.get(term)
        if codec is None:
            if re.match("^ISO[^_]IR", term):
                codec = python_encoding.get("ISO_IR" + term[6:])
            elif re.match("^(?=ISO.2022.IR.)(?!ISO 2022 IR )", term):
                codec = python_encoding.get("ISO 2022 IR " + term[12:])
        if codec is None:
            raise _error(0x00080005, "CS", "unknown character set")
        codecs.append(codec)
    if len(terms) > 1:
        if terms[0] in STAND_ALONE_ENCODINGS:
            codecs = codecs[:1]
        else:
            codecs = [codecs[0]] + [
                c
                for t, c in zip(terms[1:], codecs[1:], strict=True)
                if t not in STAND_ALONE_ENCODINGS
            ]
    result = tuple(codecs)
    if len(_charset_cache) < 256:  # bounded: the key comes from the peer
        _charset_cache[key] = result
    return result


def _decode_text(value: bytes, encodings: tuple[str, ...]) -> str:
    """Decode a charset-dependent value; a strict twin of ``pydicom.charset.decode_bytes``.

    pydicom replaces undecodable bytes with U+FFFD and warns unless a process-wide setting
    says otherwise; a converter shared by handler threads must not flip that setting, and
    must not change a value, so this raises ``UnicodeError``/``LookupError``/``_Invalid``.
    """
    if _ESC not in value:
        return value.decode(encodings[0])
    parts = []
    for fragment in _ESC_FRAGMENTS.findall(value):
        if fragment[0] != _ESC:
            parts.append(fragment.decode(encodings[0]))
            continue
        length = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
        codec = CODES_TO_ENCODINGS.get(fragment[:length])
        if codec is None or (codec not in encodings and codec != default_encoding):
            raise _Invalid("escape sequence of a character set not in (0008,0005)")
        if codec in handled_encodings:  # Python's ISO 2022 codecs read the escapes
            parts.append(fragment.decode(codec))
            continue
        body = fragment[length:]
        # A delimiter switches back to the first character set (PS3.5 6.1.2.5.3).
        cut = next((i for i, byte in enumerate(body) if byte in TEXT_VR_DELIMS), len(body))
        parts.append(body[:cut].decode(codec) + body[cut:].decode(encodings[0]))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Value conversions shared by raw and in-memory elements
# ---------------------------------------------------------------------------------------------


def _strip(vr: str, text: str) -> str:
    return text.strip(" \0") if vr in _STRIP_BOTH else text.rstrip(" \0")


def _ds_number(text: str) -> int | float | str:
    """The JSON number of one stripped, non-empty DS value (PS3.18 F.2.3).

    Without '.', 'e' or 'E' the value is an exact int (16-digit integers stay exact). A DS
    of at most 16 characters in fixed notation has at most 15 significant digits, which a
    double holds exactly; longer or exponent forms are checked, and kept as a string when
    a double would change them (an overlong or out-of-range value).
    """
    if _DS_RE.match(text) is None:
        raise _Invalid("not a decimal string")
    if "." not in text and "e" not in text and "E" not in text:
        number = int(text)
        return number if -_INT64 <= number < _INT64 else text
    real = float(text)
    if (len(text) > 16 or "e" in text or "E" in text) and (
        not math.isfinite(real) or Decimal(repr(real)) != Decimal(text)
    ):
        return text
    return real


def _is_number(text: str) -> int | str:
    """The JSON number of one stripped, non-empty IS value. A decimal form with an integral
    value ("2.0") is accepted; a fraction ("2.5", which pydicom truncates) is an error."""
    if _IS_RE.match(text) is None:
        if _DS_RE.match(text) is None:
            raise _Invalid("not an integer string")
        exact = Decimal(text)
        if exact != exact.to_integral_value():
            raise _Invalid("not an integer")
        number = int(exact)
    else:
        number = int(text)
    return number if -_INT64 <= number < _INT64 else text


def _pn_object(text: str) -> dict[str, str] | None:
    """One PN value as a JSON object of its non-empty component groups (PS3.18 F.2.2)."""
    groups = text.split("=")
    if len(groups) > 3:
        raise _Invalid("more than three component groups")
    obj = {}
    if groups[0]:
        obj["Alphabetic"] = groups[0]
    if len(groups) > 1 and groups[1]:
        obj["Ideographic"] = groups[1]
    if len(groups) > 2 and groups[2]:
        obj["Phonetic"] = groups[2]
    return obj or None


def _text_element(vr: str, text: str) -> _Json:
    """JSON of a decoded string value of any string VR, IS, DS or PN (padding included)."""
    if vr in _SINGLE_TEXT:
        text = text.rstrip(" \0")
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    values: list[Any] = [_strip(vr, v) for v in text.split("\\")]
    if len(values) == 1 and not values[0]:
        return {"vr": vr}
    if vr == "DS":
        values = [_ds_number(v) if v else None for v in values]
    elif vr == "IS":
        values = [_is_number(v) if v else None for v in values]
    elif vr == "PN":
        values = [_pn_object(v) if v else None for v in values]
        if len(values) == 1 and values[0] is None:  # "==" only: no name at all
            return {"vr": vr}
    else:
        values = [v or None for v in values]
    return {"vr": vr, "Value": values}


def _swap(data: bytes, size: int) -> bytes:
    """Big endian words -> little endian (PS3.18 F.2.7 and 8.7.3.3.2)."""
    if size == 1:
        return data
    view = memoryview(data).cast("B")
    out = bytearray(len(data))
    for i in range(size):
        out[i::size] = view[size - 1 - i :: size]
    return bytes(out)


def _binary_element(tag: int, vr: str, data: bytes, sink: BulkDataSink | None) -> _Json:
    if len(data) % _BINARY[vr]:
        raise _Invalid(f"length is not a multiple of {_BINARY[vr]}")
    if not data:
        return {"vr": vr}
    if sink is not None:
        uri = sink(int(tag), vr, data)
        if uri is not None:
            if not isinstance(uri, str):
                raise _Invalid("bulk data sink returned a non-string URI")
            return {"vr": vr, "BulkDataURI": uri}
    return {"vr": vr, "InlineBinary": binascii.b2a_base64(data, newline=False).decode("ascii")}


def _unpack(vr: str, tag: int, data: bytes, little: bool) -> list[Any]:
    """Numbers of a binary numeric value (US SS UL SL UV SV FL FD)."""
    code, size, _, _ = _NUMBERS[vr]
    if len(data) % size:
        raise _Invalid(f"length is not a multiple of {size}")
    if little and _NATIVE_LITTLE:
        view: Any = memoryview(data)  # native order is little endian: no copy, no struct
        numbers: list[Any] = view.cast(code).tolist()
    else:
        numbers = list(struct.unpack(f"{'<' if little else '>'}{len(data) // size}{code}", data))
    if vr in ("FL", "FD"):
        if not all(map(math.isfinite, numbers)):
            raise _Invalid("NaN or infinity has no JSON number")
    elif vr == "SS" and tag in _LUT_DESCRIPTORS and numbers:
        numbers[0] &= 0xFFFF
    return numbers


def _at_element(tag: int, data: bytes, little: bool) -> _Json:
    """AT values as "GGGGEEEE" (PS3.18 F.2.3): pairs of group and element numbers."""
    if not data:
        return {"vr": "AT"}
    if len(data) % 4:
        raise _Invalid("length is not a multiple of 4")
    words = _unpack("US", tag, data, little)
    pairs = zip(words[::2], words[1::2], strict=True)
    return {"vr": "AT", "Value": [f"{group:04X}{element:04X}" for group, element in pairs]}


# ---------------------------------------------------------------------------------------------
# Encoding: Dataset -> DICOM JSON
# ---------------------------------------------------------------------------------------------


class _Level:
    """What values of one dataset need from it and its ancestors."""

    __slots__ = ("deferred", "elements", "encodings", "little", "pixel_rep", "sink")

    def __init__(
        self,
        elements: Mapping[Any, Any],
        encodings: tuple[str, ...],
        pixel_rep: int | None,
        little: bool,
        sink: BulkDataSink | None,
        *,
        deferred: DeferredValues | None = None,
    ) -> None:
        self.elements = elements
        self.encodings = encodings
        self.pixel_rep = pixel_rep
        self.little = little
        self.sink = sink
        self.deferred = deferred


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_data: BulkDataSink | None = None,
    deferred: DeferredValues | None = None,
) -> dict[str, Any]:
    """Return the DICOM JSON Model object (PS3.18 F.2) of `ds`.

    `ds` may hold raw elements (read from bytes; they are decoded here and left raw in
    `ds`, which is not modified) and in-memory elements, at any depth of sequences. Works
    for any group, file meta (0002) included. `bulk_data` is called for each non-empty
    OB/OD/OF/OL/OV/OW/UN value with ``(tag, vr, little endian bytes)``; a returned string
    becomes ``"BulkDataURI"``, ``None`` inlines the value as ``"InlineBinary"``.

    `deferred` gives the values of a dataset read with ``defer_size`` (top-level raw
    elements whose value is None): a little endian binary value goes to
    ``deferred.claim`` without being read, every other one is read and converted as if
    it had been read with the dataset, so the JSON is the same either way.

    Raises CodecError if a value cannot be represented exactly: invalid IS/DS, NaN or
    infinite floats, a binary length that is not a multiple of the VR's size, bytes that
    the Specific Character Set cannot decode, a deferred value without `deferred`, ...
    """
    return _encode_dataset(ds, _DEFAULT_ENCODINGS, None, True, bulk_data, deferred=deferred)


def _encode_dataset(
    ds: Dataset,
    encodings: tuple[str, ...],
    pixel_rep: int | None,
    little: bool,
    sink: BulkDataSink | None,
    *,
    deferred: DeferredValues | None = None,
) -> _Json:
    elements: Mapping[Any, Any] = ds._dict
    if ds.original_encoding[1] is not None:
        little = ds.original_encoding[1]
    level = _Level(elements, encodings, pixel_rep, little, sink, deferred=deferred)
    charset = elements.get(0x00080005)
    if charset is not None:
        level.encodings = _charset_of(charset)
    representation = elements.get(0x00280103)
    if representation is not None:
        numbers = _first_numbers(representation)
        if numbers:
            level.pixel_rep = numbers[0]

    out: _Json = {}
    # plain ints sort in C; BaseTag compares in Python
    for tag, elem in sorted([(int(t), e) for t, e in elements.items()], key=_first):
        if not tag & 0xFFFF:
            continue  # group length: not in the JSON model (PS3.18 F.2.2)
        if type(elem) is RawDataElement:
            out[f"{tag:08X}"] = _encode_raw(elem, level)
        else:
            out[f"{tag:08X}"] = _encode_memory(cast(DataElement, elem), level)
    return out


def _charset_of(elem: Any) -> tuple[str, ...]:
    """Python codecs from a raw or in-memory (0008,0005) Specific Character Set."""
    if type(elem) is RawDataElement:
        value = elem.value or b""
        terms = [t.strip(" \0") for t in value.decode("latin-1").split("\\")]
    else:
        value = elem.value
        if not value:
            terms = []
        elif isinstance(value, str):
            terms = [value.strip()]
        else:
            terms = [(t or "").strip() for t in value]
    if len(terms) == 1 and not terms[0]:
        terms = []
    return _python_encodings(terms)


def _first_numbers(elem: Any) -> list[int]:
    """The unsigned values of a small US (or 'US or SS') element, raw or in memory, used
    only to resolve VRs; empty when absent or unreadable."""
    if type(elem) is RawDataElement:
        data = elem.value
        if not data or len(data) % 2:
            return []
        order = "<" if elem.is_little_endian else ">"
        return list(struct.unpack(f"{order}{len(data) // 2}H", data))
    value = elem.value
    if value is None or value == "":
        return []
    values = value if isinstance(value, list | tuple | MultiValue) else [value]
    return [v for v in values if isinstance(v, int)]


def _resolve_ambiguous(
    tag: int, vr: str, level: _Level, *, size: int, undefined: bool, implicit: bool
) -> str:
    """The VR of an element whose dictionary VR is ambiguous, with pydicom's rules
    (``pydicom.filewriter.correct_ambiguous_vr_element``) where it has one. `implicit`:
    the element was read from implicit VR bytes, where OB/OW values are OW (PS3.5 A.1)."""
    if vr == "US or SS":
        # Pixel Representation of the nearest dataset that has one; unsigned without.
        return "SS" if level.pixel_rep else "US"
    if vr == "US or OW":  # LUT Data: US when LUT Descriptor says one entry
        descriptor = level.elements.get(0x00283002)
        first = _first_numbers(descriptor) if descriptor is not None else []
        return "US" if first and first[0] == 1 else "OW"
    if vr == "OB or OW":
        if undefined:
            return "OB"  # encapsulated (PS3.5 A.4)
        if implicit:
            return "OW"
        if tag in _WAVEFORM_OB_OW or tag >> 24 == 0x7F:
            bits_tag = 0x54001004 if tag in _WAVEFORM_OB_OW else 0x00280100
            bits = level.elements.get(bits_tag)
            numbers = _first_numbers(bits) if bits is not None else []
            if numbers:
                return "OB" if numbers[0] <= 8 else "OW"
        return "OB" if size % 2 else "OW"
    return "OW"  # 'US or SS or OW' (retired Gray LUT Data): bytes keep everything


def _vr_of_raw(
    raw: RawDataElement, level: _Level, value: bytes | DeferredValue | None
) -> tuple[str, bool]:
    """The VR of a raw element with ``value`` (its value, or where a deferred one is) and
    whether it was guessed (private dictionary, or a known VR replacing an explicit UN): a
    guessed VR that does not fit the bytes falls back to UN, as the bytes are not wrong,
    the guess is."""
    vr = raw.VR
    tag = raw.tag
    if vr is not None and vr != "UN":
        return vr, False
    if vr == "UN" and not pydicom_config.replace_un_with_known_vr:
        return "UN", False
    if tag >> 16 & 1:  # private: PS3.5 7.8
        element = tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return "LO", vr == "UN"
        if element >= 0x1000:
            creator = level.elements.get(tag >> 16 << 16 | element >> 8)
            name = _creator_name(creator, level) if creator is not None else ""
            if name:
                private_vr = _private_vr(tag, name)
                if private_vr is not None:
                    return private_vr, True
        return "UN", False
    if vr == "UN" and value is not None and len(value) >= 0xFFFF:
        return "UN", False  # PS3.5 6.2.2: a too long value of a known VR is sent as UN
    entry = DicomDictionary.get(tag)
    if entry is not None:
        return entry[0], vr == "UN"
    try:
        return dictionary_VR(tag), vr == "UN"  # repeating groups (60xx, 50xx, 7Fxx)
    except KeyError:
        pass
    if vr is None and not tag & 0xFFFF:
        return "UL", False
    return "UN", False


@functools.lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str | None:
    """pydicom's private dictionary lookup, cached: it scans a list per call and was half
    the cost of encoding a data set with many private elements (CT_small: 1 of 2 ms)."""
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return None


def _creator_name(elem: Any, level: _Level) -> str:
    try:
        if type(elem) is RawDataElement:
            return _decode_text(elem.value or b"", level.encodings).strip(" \0")
        value = elem.value
        return value.strip() if isinstance(value, str) else ""
    except (UnicodeError, LookupError, _Invalid):
        return ""


def _encode_raw(raw: RawDataElement, level: _Level) -> _Json:
    tag = raw.tag
    value: bytes | DeferredValue | None = raw.value
    if value is None and raw.length and level.deferred is not None:
        value = level.deferred.value(raw)
    vr, guessed = _vr_of_raw(raw, level, value)
    if value is None:
        if raw.length and raw.length != _UNDEFINED:
            raise _error(tag, vr, "deferred value: read the dataset without defer_size")
        value = b""
    if raw.length != _UNDEFINED and len(value) != raw.length:
        # pydicom's reader keeps what is there when the stream ends early.
        raise _error(tag, vr, "value shorter than its declared length")
    if " " in vr:
        undefined = raw.length == _UNDEFINED
        vr = _resolve_ambiguous(
            tag, vr, level, size=len(value), undefined=undefined, implicit=raw.VR is None
        )
    if raw.value is not None or isinstance(value, bytes):
        data = cast(bytes, value)
    else:
        # Still in its file: a binary value the bytes path would hand to the sink as it is
        # (non-empty, little endian, a whole number of words) is claimed without reading
        # it; anything else is read and takes the bytes path, errors included.
        located = value  # not bytes: a DeferredValue
        size = len(located)
        if (
            vr in _BINARY
            and raw.is_little_endian
            and size > 0
            and not size % _BINARY[vr]
            and level.deferred is not None
        ):
            uri = level.deferred.claim(int(tag), vr, located)
            if uri is not None:
                if not isinstance(uri, str):
                    raise _error(tag, vr, "bulk data sink returned a non-string URI")
                return {"vr": vr, "BulkDataURI": uri}
        data = located.read()
    try:
        return _raw_value(tag, vr, data, raw, level)
    except (_Invalid, UnicodeError, LookupError, struct.error) as exc:
        if guessed:
            return _binary_value(tag, "UN", data, level)
        raise _error(tag, vr, str(exc) if isinstance(exc, _Invalid) else "undecodable") from None


def _binary_value(tag: int, vr: str, data: bytes, level: _Level) -> _Json:
    try:
        return _binary_element(tag, vr, data, level.sink)
    except _Invalid as exc:
        raise _error(tag, vr, str(exc)) from None


def _raw_value(tag: int, vr: str, data: bytes, raw: RawDataElement, level: _Level) -> _Json:
    if vr in _NUMBERS:
        if not data:
            return {"vr": vr}
        return {"vr": vr, "Value": _unpack(vr, tag, data, raw.is_little_endian)}
    if vr in _CHARSET_VRS:
        if not data:
            return {"vr": vr}
        return _text_element(vr, _decode_text(data, level.encodings))
    if vr in _MULTI_TEXT or vr in _SINGLE_TEXT or vr in ("DS", "IS"):
        if not data:
            return {"vr": vr}
        return _text_element(vr, data.decode("latin-1"))
    if vr in _BINARY:
        size = _BINARY[vr]
        if not raw.is_little_endian and size > 1 and len(data) % size == 0:
            data = _swap(data, size)
        return _binary_element(tag, vr, data, level.sink)
    if vr == "AT":
        return _at_element(tag, data, raw.is_little_endian)
    if vr == "SQ":
        if not data:
            return {"vr": vr}
        try:
            sequence = convert_SQ(
                data,
                raw.is_implicit_VR,
                raw.is_little_endian,
                list(level.encodings),
                raw.value_tell,
            )
        except Exception as exc:  # pydicom's parser raises many kinds on malformed bytes
            raise _Invalid("malformed sequence") from exc
        return _sequence_element(tag, list(sequence), level)
    raise _Invalid("unknown VR")


def _sequence_element(tag: int, items: list[Any], level: _Level) -> _Json:
    if not items:
        return {"vr": "SQ"}
    values = []
    for index, item in enumerate(items):
        if not isinstance(item, Dataset):
            raise _error(tag, "SQ", "item is not a dataset")
        try:
            values.append(
                _encode_dataset(item, level.encodings, level.pixel_rep, level.little, level.sink)
            )
        except CodecError as exc:
            raise _in_item(exc, tag, index) from None
    return {"vr": "SQ", "Value": values}


def _encode_memory(elem: DataElement, level: _Level) -> _Json:
    tag = elem.tag
    vr = elem.VR
    value = elem.value
    if isinstance(value, BufferedIOBase):
        raise _error(tag, vr, "buffered values are not supported")
    if " " in vr:
        size = len(value) if isinstance(value, bytes | bytearray | memoryview) else 0
        vr = _resolve_ambiguous(
            tag, vr, level, size=size, undefined=elem.is_undefined_length, implicit=False
        )
    try:
        return _memory_value(tag, vr, value, level)
    except (_Invalid, UnicodeError, LookupError, struct.error, TypeError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, _Invalid) else "invalid value"
        raise _error(tag, vr, reason) from None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple | ConstrainedList):
        return list(value)
    return [value]


def _checked_str(text: str) -> str:
    """Reject what no JSON encoder or DICOM character set can write (lone surrogates)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeError:
            raise _Invalid("string with a lone surrogate") from None
    return text


def _memory_value(tag: int, vr: str, value: Any, level: _Level) -> _Json:
    if vr == "SQ":
        return _sequence_element(tag, _as_list(value), level)
    if value is None or value in ("", b""):  # PersonName("") == "" too
        return {"vr": vr}
    if vr in _BINARY:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise _Invalid("binary value is not bytes")
        data = bytes(value)
        size = _BINARY[vr]
        if not level.little and size > 1 and len(data) % size == 0:
            data = _swap(data, size)
        return _binary_element(tag, vr, data, level.sink)
    if vr in _NUMBERS or vr == "AT":
        if isinstance(value, bytes):  # e.g. an unconverted 'US or SS' value
            if vr == "AT":
                return _at_element(tag, value, level.little)
            return {"vr": vr, "Value": _unpack(vr, tag, value, level.little)}
        numbers = _as_list(value)
        if vr == "AT":
            for number in numbers:
                _check_int(number, 0, 0xFFFFFFFF)
            return {"vr": vr, "Value": [f"{n:08X}" for n in numbers]}
        return {"vr": vr, "Value": _checked_numbers(tag, vr, numbers)}
    if vr not in _VRS:
        raise _Invalid("unknown VR")
    # strings, PN, DS, IS: turn every component into its DICOM string form, then share the
    # raw path's normalization so both give the same JSON
    components = _as_list(value)
    if not components:
        return {"vr": vr}
    texts = [_component_text(vr, c, level) for c in components]
    if vr in _SINGLE_TEXT:
        if len(texts) > 1:
            raise _Invalid("multiple values in a single-valued VR")
    elif any("\\" in t for t in texts):
        raise _Invalid("backslash inside a value")
    return _text_element(vr, "\\".join(texts))


def _component_text(vr: str, component: Any, level: _Level) -> str:
    if component is None:
        return ""
    if isinstance(component, bytes):
        if vr in _CHARSET_VRS:
            return _decode_text(component, level.encodings)
        return component.decode("latin-1")
    if vr in ("DS", "IS"):
        # pydicom's DSfloat/DSdecimal/IS keep the string they were read from
        original = getattr(component, "original_string", None)
        if isinstance(original, str):
            return _checked_str(original)
        if isinstance(component, bool):
            raise _Invalid("value is not a number")
        if isinstance(component, float):
            if not math.isfinite(component):
                raise _Invalid("NaN or infinity has no JSON number")
            if vr == "DS":
                return repr(float(component))  # shortest digits that give the same double
            if not component.is_integer():
                raise _Invalid("value is not an integer")
            return str(int(component))
        if isinstance(component, int | str | Decimal):
            return _checked_str(str(component))
        raise _Invalid("value is not a number")
    if vr in ("DA", "DT", "TM") and not isinstance(component, str):
        original = getattr(component, "original_string", None)
        if original is not None:
            return str(original)
        return _format_temporal(vr, component)
    if isinstance(component, str | PersonName):
        return _checked_str(str(component))
    raise _Invalid("value is not a string")


def _format_temporal(vr: str, value: Any) -> str:
    """DA/DT/TM objects without their original string, formatted as pydicom writes them."""
    if vr == "DA":
        return str(value.strftime("%Y%m%d"))
    fraction = ".%f" if value.microsecond > 0 else ""
    if vr == "TM":
        return str(value.strftime(f"%H%M%S{fraction}"))
    return str(value.strftime(f"%Y%m%d%H%M%S{fraction}%z"))


def _check_int(number: Any, low: int, high: int) -> int:
    if not isinstance(number, int) or isinstance(number, bool):
        raise _Invalid("value is not an integer")
    if not low <= number <= high:
        raise _Invalid("value out of range")
    return int(number)


def _checked_numbers(tag: int, vr: str, numbers: list[Any]) -> list[Any]:
    _, _, low, high = _NUMBERS[vr]
    if low is None or high is None:
        out: list[Any] = []
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise _Invalid("value is not a number")
            if not math.isfinite(number):
                raise _Invalid("NaN or infinity has no JSON number")
            if vr == "FL" and abs(number) > _FLT_MAX:
                raise _Invalid("value out of range")
            out.append(number if type(number) is int or type(number) is float else float(number))
        return out
    if vr == "SS" and tag in _LUT_DESCRIPTORS:
        first = _check_int(numbers[0], low, 0xFFFF) & 0xFFFF
        return [first, *(_check_int(n, low, high) for n in numbers[1:])]
    return [_check_int(n, low, high) for n in numbers]


# ---------------------------------------------------------------------------------------------
# Decoding: DICOM JSON -> Dataset
# ---------------------------------------------------------------------------------------------

_VALUE_KEYS: Final = ("Value", "InlineBinary", "BulkDataURI")
_ATTRIBUTE_KEYS: Final = frozenset({"vr", *_VALUE_KEYS})
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
_MAX_DEPTH: Final = 64
"""Sequence nesting accepted from JSON: far beyond real data, well within Python's stack."""


def json_to_dataset(obj: Mapping[str, Any], *, bulk_data: BulkDataSource | None = None) -> Dataset:
    """Return the dataset of a DICOM JSON Model object (PS3.18 F.2).

    Accepts keys in any order and case, IS/DS/SV/UV values as numbers or numeric strings
    (F.2.3), ``InlineBinary``/``BulkDataURI`` as a string or a one-string list (the
    standard's example uses a list), and ignores group lengths. Values become pydicom
    values of the element's VR: PN from its groups joined by '=', DS as the shortest string
    of at most 16 characters that keeps the number (rounded only when none does), ``null``
    as an empty component. `bulk_data` resolves ``BulkDataURI`` values.

    Raises CodecError for anything else: a bad key, an unknown VR, a value of the wrong
    type or out of range for its VR, several of Value/InlineBinary/BulkDataURI, non-finite
    numbers, malformed base64, an AT that is not 8 hex digits, a BulkDataURI without
    `bulk_data`, ...
    """
    return _decode_dataset(obj, bulk_data, 0)


def _decode_dataset(obj: Any, source: BulkDataSource | None, depth: int) -> Dataset:
    if not isinstance(obj, Mapping):
        raise CodecError("dataset: not a JSON object")
    if depth > _MAX_DEPTH:
        raise CodecError("dataset: sequences nested too deeply")
    elements: dict[BaseTag, DataElement] = {}
    seen: set[int] = set()
    for key, attribute in obj.items():
        if not isinstance(key, str) or TAG_KEY.match(key) is None:
            raise CodecError("dataset: key is not 8 hexadecimal digits")
        tag = int(key, 16)
        if tag in seen:
            raise _error(tag, "", "duplicate key")
        seen.add(tag)
        if tag >> 16 == 0xFFFE:
            raise _error(tag, "", "item and delimiter tags are not attributes")
        elem = _decode_attribute(BaseTag(tag), attribute, source, depth)
        if elem is not None:
            elements[elem.tag] = elem
    # What Dataset.__setitem__ would do, in one pass and whatever the order of the keys:
    # private elements learn their creator (PS3.5 7.8.1).
    for tag, decoded in elements.items():
        if tag >> 16 & 1:
            creator = elements.get(BaseTag(tag >> 16 << 16 | (tag & 0xFFFF) >> 8))
            if creator is not None and creator is not decoded:
                decoded.private_creator = creator.value
    return Dataset(cast(dict[BaseTag, DataElement | RawDataElement], elements))


def _decode_attribute(
    tag: BaseTag, attribute: Any, source: BulkDataSource | None, depth: int
) -> DataElement | None:
    if not isinstance(attribute, Mapping):
        raise _error(tag, "", "attribute is not a JSON object")
    vr = attribute.get("vr")
    if not isinstance(vr, str) or vr not in _VRS:
        raise _error(tag, "", "unknown vr")
    if not attribute.keys() <= _ATTRIBUTE_KEYS:
        raise _error(tag, vr, "unknown attribute member")
    present = [k for k in _VALUE_KEYS if k in attribute]
    if len(present) > 1:
        raise _error(tag, vr, "more than one of Value, InlineBinary, BulkDataURI")
    try:
        if not present:
            value: Any = empty_value_for_VR(vr)
        elif present[0] == "Value":
            value = _decode_values(tag, vr, attribute["Value"], source, depth)
        else:
            value = _decode_binary(vr, present[0], attribute[present[0]], source)
    except _Invalid as exc:
        raise _error(tag, vr, str(exc)) from None
    if not tag & 0xFFFF:
        return None  # group lengths are recomputed by writers (PS3.18 F.2.2)
    try:
        if vr == "UN":
            # DataElement would turn UN into the dictionary VR while keeping the bytes;
            # the JSON says UN, so keep UN (pydicom re-reads such bytes by its own rules).
            elem = DataElement(tag, "OB", value, validation_mode=pydicom_config.IGNORE)
            elem.VR = "UN"
        else:
            elem = DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)
    except (TypeError, ValueError, OverflowError):  # its messages carry the value
        raise _error(tag, vr, "value not accepted by pydicom") from None
    if tag == 0x7FE00010 and vr == "OB" and _is_encapsulated(value):
        elem.is_undefined_length = True  # so writers keep the fragments (PS3.5 A.4)
    return elem


def _is_encapsulated(value: Any) -> bool:
    """Whether OB Pixel Data holds encapsulated fragments: it starts with an Item whose
    length fits the value. Writers need that, and JSON does not carry the length form."""
    if not isinstance(value, bytes) or len(value) < 8 or not value.startswith(_ITEM_TAG_BYTES):
        return False
    return 8 + int.from_bytes(value[4:8], "little") <= len(value)


def _decode_binary(vr: str, key: str, data: Any, source: BulkDataSource | None) -> bytes:
    if vr not in _BINARY:
        raise _Invalid(f"{key} is only for binary VRs")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, str):
        raise _Invalid(f"{key} is not a string")
    if key == "InlineBinary":
        try:
            value = binascii.a2b_base64(data, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _Invalid("InlineBinary is not base64") from None
    else:
        if source is None:
            raise _Invalid("BulkDataURI without a bulk data source")
        try:
            value = source(data)
        except CodecError:
            raise
        except Exception as exc:  # the source is the caller's; name the element anyway
            raise _Invalid("BulkDataURI could not be resolved") from exc
        if not isinstance(value, bytes | bytearray | memoryview):
            raise _Invalid("bulk data source returned no bytes")
        value = bytes(value)
    if len(value) % _BINARY[vr]:
        raise _Invalid(f"length is not a multiple of {_BINARY[vr]}")
    return value


def _decode_values(
    tag: int, vr: str, values: Any, source: BulkDataSource | None, depth: int
) -> Any:
    if not isinstance(values, list):
        raise _Invalid("Value is not an array")
    if vr in _BINARY:
        raise _Invalid("Value is not allowed for binary VRs")
    if vr == "SQ":
        items = []
        for index, item in enumerate(values):
            if not isinstance(item, Mapping):
                raise _Invalid("sequence item is not a JSON object")
            try:
                items.append(_decode_dataset(item, source, depth + 1))
            except CodecError as exc:
                raise _in_item(exc, tag, index) from None
        return items
    if not values:
        return empty_value_for_VR(vr)
    if vr in _SINGLE_TEXT and len(values) > 1:
        raise _Invalid("multiple values in a single-valued VR")
    if vr in _NUMBERS:
        if vr == "SS" and tag in _LUT_DESCRIPTORS:
            # the first value is unsigned whatever the VR (PS3.3 C.11.1.1.1): accept both
            # spellings of its bits and keep the unsigned one, which pydicom writes as such
            first = _decode_number(vr, values[0], high=0xFFFF) & 0xFFFF
            converted: list[Any] = [first, *(_decode_number(vr, v) for v in values[1:])]
        else:
            converted = [_decode_number(vr, v) for v in values]
    else:
        converted = [_decode_component(vr, v) for v in values]
    if len(converted) == 1:
        return converted[0]
    return converted


def _decode_number(vr: str, value: Any, high: int | None = None) -> Any:
    _, _, low, vr_high = _NUMBERS[vr]
    high = vr_high if high is None else high
    if value is None:
        raise _Invalid("null in a binary number")
    if isinstance(value, str) and vr in ("SV", "UV"):
        if _IS_RE.match(value.strip()) is None:
            raise _Invalid("string is not an integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("value is not a number")
    if low is None or high is None:
        if not math.isfinite(value):
            raise _Invalid("non-finite number")
        if vr == "FL" and abs(value) > _FLT_MAX:
            raise _Invalid("value out of range")
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise _Invalid("value is not an integer")
        value = int(value)
    if not low <= value <= high:
        raise _Invalid("value out of range")
    return value


def _decode_component(vr: str, value: Any) -> Any:
    if value is None:
        if vr == "AT":
            raise _Invalid("null in an AT value")
        return ""
    if vr == "PN":
        return _decode_person_name(value)
    if vr == "DS":
        return _decode_ds(value)
    if vr == "IS":
        return _decode_is(value)
    if vr == "AT":
        if not isinstance(value, str) or TAG_KEY.match(value) is None:
            raise _Invalid("AT value is not 8 hexadecimal digits")
        return int(value, 16)
    if not isinstance(value, str):
        raise _Invalid("value is not a string")
    if vr not in _SINGLE_TEXT and "\\" in value:
        raise _Invalid("backslash inside a value")
    return _checked_str(value)


def _decode_person_name(value: Any) -> str:
    if not isinstance(value, Mapping):
        raise _Invalid("PN value is not an object")
    if not value.keys() <= set(_PN_GROUPS):
        raise _Invalid("unknown PN component group")
    groups = []
    for name in _PN_GROUPS:
        group = value.get(name, "")
        if group is None:
            group = ""
        if not isinstance(group, str):
            raise _Invalid("PN component group is not a string")
        if "=" in group or "\\" in group:
            raise _Invalid("delimiter inside a PN component group")
        groups.append(_checked_str(group))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _decode_ds(value: Any) -> str:
    """A DS string of at most 16 characters for a JSON number (PS3.5 Table 6.2-1)."""
    if isinstance(value, str):
        text = value.strip(" ")
        if text and _DS_RE.match(text) is None:
            raise _Invalid("string is not a decimal string")
        return text
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("value is not a number")
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 16 else _fit_ds(Decimal(value))
    if not math.isfinite(value):
        raise _Invalid("non-finite number")
    text = repr(value)  # the shortest digits that read back as the same double
    return text if len(text) <= 16 else _fit_ds(Decimal(text))


def _fit_ds(number: Decimal) -> str:
    """`number` in at most 16 characters with as many significant digits as fit: exact
    when its digits fit, rounded otherwise. Always with '.' or an exponent, so that it
    reads back as a float."""
    for precision in range(len(number.as_tuple().digits), 0, -1):
        with localcontext() as context:
            context.prec = precision
            sign, digits, exponent = (+number).normalize().as_tuple()
        assert isinstance(exponent, int)
        head = "-" if sign else ""
        mantissa = "".join(map(str, digits))
        rest = "." + mantissa[1:] if len(mantissa) > 1 else ""
        spellings = [f"{head}{mantissa[0]}{rest}e{exponent + len(mantissa) - 1}"]
        if exponent < 0:  # a fraction: fixed notation has its '.'
            whole = mantissa[:exponent] or "0"
            fraction = mantissa[exponent:].rjust(-exponent, "0")
            spellings.append(f"{head}{whole}.{fraction}")
        fitting = [s for s in spellings if len(s) <= 16]
        if fitting:
            return min(fitting, key=len)
    raise _Invalid("value out of range")  # not reached: one digit always fits


def _decode_is(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip(" ")
        if text and _IS_RE.match(text) is None:
            raise _Invalid("string is not an integer string")
        return text
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("value is not a number")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _Invalid("value is not an integer")
        value = int(value)
    if not -_INT64 <= value < _INT64:
        raise _Invalid("value out of range")
    return str(value)
