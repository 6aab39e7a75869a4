"""The example consumer stores the bytes a peer sent: for every file a peer sends, its
stored file holds the same data set bytes as DCMTK ``storescp``'s file of the same C-STORE.

Two receivers on 127.0.0.1, each sent the same files by the same sender:

- a bridge and the example consumer (in-process), storing into one temporary directory;
- DCMTK ``storescp +B +xa -pm`` storing into another. ``+B`` (``--bit-preserving``,
  "write data exactly as read") makes it receive the data set straight into its file, as
  the bytes came off the wire: no decoding, no re-encoding (the ``+t``/``+e``/``+g``/``+p``
  output options, which would re-encode, are documented as "not with --bit-preserving").
  ``+xa`` accepts every transfer syntax DCMTK supports (uncompressed, big endian, deflated,
  JPEG, JPEG-LS, JPEG 2000, RLE, MPEG) and ``-pm`` any SOP class, so storescp refuses
  nothing the bridge takes. Its File Meta is its own; only the data sets are compared.

Two senders, each to both receivers:

- DCMTK ``storescu`` (a real peer), with an association profile (``-xf``) that proposes,
  for each file, exactly its SOP class with exactly its transfer syntax on a context of
  its own: no file is converted to another transfer syntax (checked: both stored files
  name the file's). storescu still decodes each file and encodes it again in that
  transfer syntax: it writes sequences and items with explicit lengths, drops Data Set
  Trailing Padding, pads odd-length values and deflates anew, so for about one file in
  five what the receivers get differs from the file. Here the two stored data sets must
  be equal.
- pynetdicom's SCU with ``_config.STORE_SEND_CHUNKED_DATASET``: ``send_c_store(path)``
  sends the file's data set bytes unchanged on a context of exactly the file's transfer
  syntax. Here both stored data sets must also equal the file's: this is what brings
  undefined lengths, odd lengths and trailing padding to the bridge as they are. A data
  set of odd length goes to the bridge alone (see :data:`ODD`).

Files: pydicom's test files (``get_testdata_files()`` and ``get_charset_files()``) that are
Part 10 files of an instance the example consumer files (SOP Class, SOP Instance, Study and
Series Instance UIDs), and files made here for what those may lack: private elements
(explicit and implicit VR), sequences and items of undefined length (explicit and
implicit VR), odd value lengths, Explicit VR Big Endian, Deflated Explicit VR Little
Endian, and JPEG Baseline pixel data in several fragments per frame with an empty Basic
Offset Table.

Both receivers store a file by SOP Instance UID, and several test files share one (the
MR_small family in every transfer syntax): files are sent in rounds in which no UID
repeats, and each round's stored files are read and removed before the next.

DCMTK waits for the delayed ACK of each small write unless Nagle is off (~90 ms per
C-STORE); its network layer turns it off when ``TCP_NODELAY=1`` is in its environment.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from bridge.config import ConsumerSettings
from bridge.errors import CodecError
from bridge.example.consumer import build
from bridge.protocol import part10
from tests.harness import (
    AMQP_URL,
    BridgeHarness,
    LoopThread,
    bridge_settings,
    delete_exchange,
    free_port,
)
from tests.waiting import eventually

pytestmark = [
    pytest.mark.needs_broker,
    pytest.mark.process,
    pytest.mark.slow,
    # pydicom and the bridge read a test file whose VR is implicit though its syntax says
    # explicit; they say so.
    pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR"),
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
BRIDGE_AE = "DICOM-BRIDGE"
STORESCP_AE = "STORESCP"
CALLING_AE = "BYTE-EQUALITY"
MIN_PYDICOM_FILES = 120  # of pydicom 3.0's ~160 Part 10 instances
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} not installed: DCMTK is required (apt install dcmtk)")
    return path


# -- the files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A file to send, and what the receivers name its stored file by."""

    name: str
    path: Path
    sop_class: str
    instance: str
    """The data set's SOP Instance UID (the example consumer's file name)."""
    meta_instance: str
    """The File Meta's (the Affected SOP Instance UID pynetdicom sends it with)."""
    syntax: str
    data: bytes
    """The data set bytes, after the File Meta."""
    constructed: bool = False

    @property
    def uids(self) -> set[str]:
        return {self.instance, self.meta_instance}


def _source(path: Path, *, constructed: bool = False) -> Source | str:
    """The Source of a file, or why it is not sent."""
    whole = path.read_bytes()
    try:
        meta = part10.read_meta(whole)
    except CodecError as exc:
        return f"not a Part 10 file ({exc})"
    try:
        dataset = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, ValueError, OSError, EOFError) as exc:
        return f"pydicom cannot read it ({type(exc).__name__})"
    # The example consumer files an instance under these; without one it refuses it.
    uids = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    missing = [keyword for keyword in uids if not str(dataset.get(keyword, "")).strip()]
    if missing:
        return f"no {', '.join(missing)}"
    return Source(
        name=f"{path.parent.name}/{path.name}",
        path=path,
        sop_class=str(dataset.SOPClassUID),
        instance=str(dataset.SOPInstanceUID),
        meta_instance=meta.sop_instance_uid,
        syntax=meta.transfer_syntax,
        data=whole[meta.dataset_offset :],
        constructed=constructed,
    )


def _pydicom_files() -> list[Path]:
    names = {*get_testdata_files(), *get_charset_files()}
    return sorted(Path(p) for p in names if os.path.isfile(p))


def _base(name: str, syntax: str, sop_class: str = SECONDARY_CAPTURE) -> Dataset:
    """A small instance of ``sop_class`` with File Meta for ``syntax``; UIDs made from
    ``name`` (the same on every run)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, "instance"])
    ds.Modality = "OT"
    ds.PatientName = "Bytes^Equal"
    ds.PatientID = "BYTES-1"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    return ds


def _written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# Raw encoding, for what pydicom would not write as it is (odd lengths, undefined lengths).
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
_UNDEFINED = 0xFFFFFFFF


def _element(tag: int, vr: str, value: bytes, *, explicit: bool, undefined: bool = False) -> bytes:
    """One little endian element; ``undefined``: of undefined length (``value`` then ends
    with its delimiter)."""
    group, element = tag >> 16, tag & 0xFFFF
    length = _UNDEFINED if undefined else len(value)
    if not explicit:
        return struct.pack("<HHL", group, element, length) + value
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", group, element, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), length) + value


def _item(content: bytes, *, undefined: bool) -> bytes:
    if undefined:
        return (
            struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)
            + content
            + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        )
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


def _sequence(tag: int, items: list[bytes], *, explicit: bool, undefined: bool) -> bytes:
    body = b"".join(items)
    if undefined:
        body += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return _element(tag, "SQ", body, explicit=explicit, undefined=undefined)


def _private(name: str, syntax: str) -> bytes:
    """A private block: creator, OB, UN, LO, a private sequence, written by pydicom."""
    ds = _base(name, syntax)
    block = ds.private_block(0x0029, "DICOM-BRIDGE BYTES", create=True)
    block.add_new(0x01, "OB", bytes(range(16)))
    block.add_new(0x02, "UN", b"\x01\x02\x03\x04")
    block.add_new(0x03, "LO", "private text")
    inner = Dataset()
    inner.add_new(0x00290010, "LO", "DICOM-BRIDGE BYTES")
    inner.add_new(0x00291001, "LO", "in an item")
    block.add_new(0x04, "SQ", [inner])
    ds.add_new(0x00991000, "UN", b"\xff\xfe\xfd\xfc")  # private, no creator
    return _written(ds)


def _undefined_lengths(name: str, syntax: str) -> bytes:
    """Sequences and items of undefined length, nested, empty, and mixed with defined
    ones, after elements pydicom wrote."""
    explicit = syntax != ImplicitVRLittleEndian

    def el(tag: int, vr: str, value: bytes) -> bytes:
        return _element(tag, vr, value, explicit=explicit)

    def seq(tag: int, items: list[bytes], undefined: bool = True) -> bytes:
        return _sequence(tag, items, explicit=explicit, undefined=undefined)

    code = el(0x00080100, "SH", b"CODE01") + el(0x00080102, "SH", b"99TEST")
    step_a = (
        el(0x00400007, "LO", b"STEP A")
        + seq(
            0x00400008,
            [
                _item(code + el(0x00080104, "LO", b"First code"), undefined=False),
                _item(code + el(0x00080104, "LO", b"Second one"), undefined=True),
            ],
        )
        + el(0x00400009, "SH", b"SPS1")
    )
    step_b = el(0x00400007, "LO", b"STEP B") + seq(0x00400008, [])
    tail = (
        seq(
            0x00400275,  # Request Attributes Sequence
            [
                _item(step_a, undefined=True),
                _item(step_b, undefined=False),
                _item(b"", undefined=True),
            ],
        )
        # A sequence of defined length holding an item of undefined length.
        + seq(0x0040A043, [_item(code, undefined=True)], undefined=False)
        + seq(0x0040A730, [])  # an empty Content Sequence of undefined length
    )
    return _written(_base(name, syntax)) + tail


def _odd_lengths(name: str, syntax: str) -> bytes:
    """Values of odd length, unpadded, after elements pydicom wrote (PS3.5 7.1.1 wants even
    lengths; peers send odd ones all the same)."""

    def el(tag: int, vr: str, value: bytes) -> bytes:
        return _element(tag, vr, value, explicit=True)

    tail = (
        el(0x00200052, "UI", b"1.2.3")  # Frame of Reference UID, no NUL pad
        + el(0x00290010, "LO", b"ODD LENGTHS")
        + el(0x00291001, "OB", bytes(range(7)))
        + el(0x00291002, "UN", b"\x01\x02\x03")
        + el(0x00291003, "LO", b"padded text ")
        + el(0x00291004, "LO", b"X")
        + el(0x00321060, "LO", b"ABC")  # Requested Procedure Description
        + _sequence(
            0x00400275,
            [_item(el(0x00400007, "LO", b"odd in item"), undefined=False)],
            explicit=True,
            undefined=False,
        )
        + el(0x0040A160, "UT", b"odd text!")  # Text Value
    )
    # An even number of odd lengths: DCMTK aborts on a data set of odd length.
    assert len(tail) % 2 == 0
    return _written(_base(name, syntax)) + tail


def _big_endian(name: str, syntax: str) -> bytes:
    """Values whose bytes depend on the byte order (US, SS, UL, FD, AT, a private FL, OW
    pixel data), sequences and a private block, written by pydicom in big endian."""
    assert syntax == ExplicitVRBigEndian
    ds = _base(name, syntax)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 2, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.AcquisitionMatrix = [0, 3, 2, 0]  # US, 4 values
    ds.TagAngleSecondAxis = -7  # SS
    ds.InStackPositionNumber = 70000  # UL
    ds.DiffusionGradientOrientation = [0.5, -1.25, 3.0]  # FD, 3 values
    ds.DiffusionBValue = 1000.0  # FD
    ds.DimensionIndexPointer = 0x00100010  # AT
    ds.ReferencedImageSequence = []  # an empty sequence
    item = Dataset()
    item.TagAngleSecondAxis = 300
    item.InStackPositionNumber = 2
    ds.DimensionIndexSequence = [item]
    ds.private_block(0x0029, "DICOM-BRIDGE BYTES", create=True).add_new(0x01, "FL", 2.5)
    ds.add_new(0x7FE00010, "OW", struct.pack(">6H", *range(6)))
    return _written(ds)


def _deflated(name: str, syntax: str) -> bytes:
    ds = _base(name, syntax)
    item = Dataset()
    item.ScheduledProcedureStepDescription = "deflated"
    ds.RequestAttributesSequence = [item]
    ds.private_block(0x0029, "DICOM-BRIDGE BYTES", create=True).add_new(0x01, "LO", "zlib")
    ds.ImageComments = "a deflated data set " * 20
    return _written(ds)


def _fragments(name: str, syntax: str) -> bytes:
    """JPEG Baseline: two frames of three fragments each, with an empty Basic Offset
    Table (the frame is the one of pydicom's SC_rgb_jpeg_dcmtk.dcm)."""
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
    assert path is not None
    jpeg = dcmread(path)
    frame = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    ds = _base(name, syntax, MULTIFRAME_TRUE_COLOR_SC)
    for keyword in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, keyword, jpeg[keyword].value)
    ds.NumberOfFrames = 2
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([frame, frame], fragments_per_frame=3, has_bot=False)
    ds["PixelData"].VR = "OB"
    return _written(ds)


CONSTRUCTED: dict[str, tuple[Callable[[str, str], bytes], str]] = {
    "private_explicit.dcm": (_private, ExplicitVRLittleEndian),
    "private_implicit.dcm": (_private, ImplicitVRLittleEndian),
    "undefined_lengths_explicit.dcm": (_undefined_lengths, ExplicitVRLittleEndian),
    "undefined_lengths_implicit.dcm": (_undefined_lengths, ImplicitVRLittleEndian),
    "odd_lengths.dcm": (_odd_lengths, ExplicitVRLittleEndian),
    "big_endian.dcm": (_big_endian, ExplicitVRBigEndian),
    "deflated.dcm": (_deflated, DeflatedExplicitVRLittleEndian),
    "jpeg_fragments.dcm": (_fragments, JPEGBaseline8Bit),
}


@dataclass
class FileSet:
    sources: list[Source]
    skipped: dict[str, str]
    """File name -> why it is not sent."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> FileSet:
    made = tmp_path_factory.mktemp("constructed")
    sources: list[Source] = []
    skipped: dict[str, str] = {}
    for path in _pydicom_files():
        source = _source(path)
        if isinstance(source, str):
            skipped[f"{path.parent.name}/{path.name}"] = source
        else:
            sources.append(source)
    for name, (make, syntax) in CONSTRUCTED.items():
        path = made / name
        path.write_bytes(make(name, syntax))
        source = _source(path, constructed=True)
        assert isinstance(source, Source), f"{name}: {source}"
        assert source.syntax == syntax, name
        sources.append(source)
    return FileSet(sources, skipped)


def _rounds(sources: list[Source]) -> list[list[Source]]:
    """The sources in rounds in which no SOP Instance UID (data set's or meta's) repeats."""
    rounds: list[tuple[set[str], list[Source]]] = []
    for source in sources:
        for uids, members in rounds:
            if not uids & source.uids:
                uids.update(source.uids)
                members.append(source)
                break
        else:
            rounds.append((set(source.uids), [source]))
    return [members for _, members in rounds]


# -- the receivers ---------------------------------------------------------------------------


@dataclass
class Receivers:
    bridge_port: int
    storescp_port: int
    consumer_dir: Path
    storescp_dir: Path

    def take(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The files stored since the last call, removed: the example consumer's by its
        file name (the data set's SOP Instance UID), storescp's by its File Meta's SOP
        Instance UID (the C-STORE's Affected SOP Instance UID)."""
        consumer: dict[str, bytes] = {}
        for path in self.consumer_dir.glob("*.dcm"):
            consumer[path.stem] = path.read_bytes()
            path.unlink()
        storescp: dict[str, bytes] = {}
        for path in self.storescp_dir.iterdir():
            data = path.read_bytes()
            storescp[part10.read_meta(data).sop_instance_uid] = data
            path.unlink()
        return consumer, storescp


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def receivers(broker: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receivers]:
    root = tmp_path_factory.mktemp("stored-bytes")
    exchange = f"test-{uuid.uuid4().hex[:12]}"
    consumer_dir, storescp_dir, bulk = root / "consumer", root / "storescp", root / "bulk"
    storescp_dir.mkdir()
    bridge = BridgeHarness(
        bridge_settings(exchange, spool_dir=root / "spool", bulk_dir=bulk, ae_title=BRIDGE_AE)
    )
    settings = ConsumerSettings(
        amqp_url=AMQP_URL,
        exchange=exchange,
        queue=f"test-bytes-{uuid.uuid4().hex[:8]}",
        data_dir=consumer_dir,
        bulk_dir=bulk,
    )  # type: ignore[call-arg]
    consumer = build(settings, exclusive=True)
    loop = LoopThread("example-consumer")
    storescp: subprocess.Popen[bytes] | None = None
    try:
        bridge.wait_ready()
        loop.run(consumer.start())
        port = free_port()
        storescp = subprocess.Popen(
            [_dcmtk("storescp"), "+B", "+xa", "-pm", "-dhl", "-aet", STORESCP_AE,
             "-od", str(storescp_dir), str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV,
        )  # fmt: skip
        eventually(lambda: _listening(port), "storescp listening", timeout=10)
        yield Receivers(bridge.port, port, consumer_dir, storescp_dir)
    finally:
        if storescp is not None:
            storescp.terminate()
            storescp.wait(10)
        with contextlib.suppress(Exception):
            loop.run(consumer.close(), timeout=10)
        loop.stop()
        bridge.stop()
        delete_exchange(exchange)


# -- sending and comparing -----------------------------------------------------------------


Sent = dict[str, str]
"""Source name -> the sender's outcome ("Success", or what went wrong)."""
NO_RESPONSE = "no response"
ODD = "not sent: DCMTK aborts the association on a data set of odd length"
"""storescp aborts on a data set fragment of odd length ("DIMSE: Odd Fragment Length"),
and a data set of odd length, sent as it is, ends with one."""


def _profile(members: list[Source], path: Path) -> None:
    """A storescu association profile ``Exact``: one presentation context per SOP class
    and transfer syntax of ``members``, proposing that transfer syntax alone."""
    syntaxes = sorted({s.syntax for s in members})
    pairs = sorted({(s.sop_class, s.syntax) for s in members})
    assert len(pairs) <= 128, "more presentation contexts than one association allows"
    lines = ["[[TransferSyntaxes]]"]
    for n, syntax in enumerate(syntaxes):
        lines += [f"[TS{n}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Exact]"]
    for n, (sop_class, syntax) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(syntax)}")
    lines += ["[[Profiles]]", "[Exact]", "PresentationContexts = Exact"]
    path.write_text("\n".join(lines) + "\n")


_RESPONSE = re.compile(r"I: Received Store Response \((.*)\)")


def _storescu(profile: Path, called: str, port: int, members: list[Source]) -> Sent:
    """Send ``members`` with storescu on one association; each file's outcome as storescu
    reports it."""
    result = subprocess.run(
        [_dcmtk("storescu"), "-v", "-nh", "-xf", str(profile), "Exact", "-aet", CALLING_AE,
         "-aec", called, "127.0.0.1", str(port), *(str(s.path) for s in members)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False,
        env=DCMTK_ENV,
    )  # fmt: skip
    by_path = {str(s.path): s.name for s in members}
    outcomes: Sent = {s.name: "not sent: " + result.stdout[-300:] for s in members}
    current: str | None = None
    for line in result.stdout.splitlines():
        if line.startswith("I: Sending file: "):
            current = by_path[line.removeprefix("I: Sending file: ")]
            outcomes[current] = NO_RESPONSE
        elif current is not None and (match := _RESPONSE.match(line)):
            outcomes[current] = match[1]
        elif current is not None and line.startswith("E: ") and outcomes[current] == NO_RESPONSE:
            outcomes[current] = line
    return outcomes


def _no_delay(event: Event) -> None:
    """Send each write at once: pynetdicom writes a C-STORE's command and data set apart,
    and with Nagle on the data set waits for storescp's delayed ACK (~40 ms)."""
    wrapper = event.assoc.dul.socket
    if wrapper is not None and isinstance(wrapper.socket, socket.socket):
        wrapper.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pynetdicom(called: str, port: int, members: list[Source]) -> Sent:
    """Send ``members`` with pynetdicom, each file's data set bytes as they are, on an
    association proposing each SOP class with exactly each file's transfer syntax.

    pynetdicom's association thread can take a C-STORE response off the DIMSE queue before
    ``send_c_store`` waits for it (its pause of that thread is racy; a fast peer with Nagle
    off makes it show about once in a thousand C-STOREs): ``send_c_store`` then waits for
    the DIMSE timeout and aborts. The receiver has stored the file by then, so what it
    stored is compared all the same; the next file goes on a new association."""
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = 5  # the bridge answers within its reply timeout (5 s) or fails
    for sop_class, syntax in sorted({(s.sop_class, s.syntax) for s in members}):
        ae.add_requested_context(sop_class, [syntax])
    outcomes: Sent = {}
    assoc: Association | None = None
    try:
        for n, source in enumerate(members, 1):
            if called == STORESCP_AE and len(source.data) % 2:
                outcomes[source.name] = ODD
                continue
            if assoc is None or not assoc.is_established:
                assoc = ae.associate(
                    "127.0.0.1",
                    port,
                    ae_title=called,
                    max_pdu=0,
                    evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
                )
                assert assoc.is_established, f"association with {called} not established"
            try:
                status = assoc.send_c_store(source.path, msg_id=n)
            except (ValueError, AttributeError) as exc:
                outcomes[source.name] = f"pynetdicom refused: {exc}"
                continue
            if "Status" in status:
                code = int(status.Status)
                outcomes[source.name] = "Success" if code == 0 else f"status 0x{code:04X}"
            else:
                outcomes[source.name] = NO_RESPONSE  # and send_c_store aborted
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        ae.shutdown()
    return outcomes


@dataclass(frozen=True)
class Delivery:
    """What became of one file sent to both receivers."""

    source: Source
    consumer: bytes | None
    """The example consumer's stored file (None: it stored nothing)."""
    storescp: bytes | None
    to_bridge: str
    """The sender's outcome with the bridge."""
    to_storescp: str

    @property
    def outcomes(self) -> str:
        return f"bridge: {self.to_bridge}; storescp: {self.to_storescp}"


@dataclass
class Outcome:
    compared: list[Source] = field(default_factory=list)
    """Stored by both receivers: the data sets compared."""
    same_as_file: int = 0
    file_only: list[str] = field(default_factory=list)
    """Sent to the bridge only (:data:`ODD`): the consumer's data set compared with the file."""
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, delivery: Delivery, *, verbatim: bool) -> None:
        """Compare what the receivers stored; ``verbatim``: the sender sent the file's data
        set as it is, so the stored data sets are the file's too."""
        source, consumer, storescp = delivery.source, delivery.consumer, delivery.storescp
        if consumer is None and delivery.to_bridge != "Success":
            # Not sent (storescu cannot read the file), or refused by the bridge with an
            # error status: nothing stored, nothing to compare. Every file made here is.
            if source.constructed:
                self.problems.append(f"{source.name}: not stored ({delivery.outcomes})")
            else:
                self.skipped[source.name] = delivery.outcomes
            return
        if consumer is not None and delivery.to_storescp == ODD:
            self._same_as_file(source, consumer)
            self.file_only.append(source.name)
            return
        if consumer is None or storescp is None:
            who = {
                (False, True): "the example consumer only",
                (True, False): "storescp only",
                (True, True): "neither",
            }[consumer is None, storescp is None]
            self.problems.append(f"{source.name}: stored by {who} ({delivery.outcomes})")
            return
        ours, theirs = part10.read_meta(consumer), part10.read_meta(storescp)
        if not ours.transfer_syntax == theirs.transfer_syntax == source.syntax:
            # Each file is offered on contexts of its own transfer syntax alone.
            self.problems.append(
                f"{source.name}: sent in {ours.transfer_syntax} to the bridge and in"
                f" {theirs.transfer_syntax} to storescp, not in its own {source.syntax}"
            )
            return
        self.compared.append(source)
        data = consumer[ours.dataset_offset :]
        self._differs(source, "consumer and storescp", data, storescp[theirs.dataset_offset :])
        self.same_as_file += data == source.data
        if verbatim:
            self._same_as_file(source, consumer)

    def _same_as_file(self, source: Source, stored: bytes) -> None:
        meta = part10.read_meta(stored)
        if meta.transfer_syntax != source.syntax:
            self.problems.append(f"{source.name}: stored in {meta.transfer_syntax}")
        else:
            self._differs(source, "stored and file", stored[meta.dataset_offset :], source.data)

    def _differs(self, source: Source, what: str, a: bytes, b: bytes) -> None:
        if a != b:
            pairs = enumerate(zip(a, b, strict=False))
            at = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
            self.problems.append(
                f"{source.name} ({source.syntax}): {what} data sets differ at data set byte"
                f" {at} (lengths {len(a)}, {len(b)})"
            )


def _exchange(
    files: FileSet,
    receivers: Receivers,
    send: Callable[[str, int, list[Source], int], Sent],
    *,
    verbatim: bool,
) -> Outcome:
    """Each round to both receivers at once, then compare what they stored."""
    outcome = Outcome()
    for n, members in enumerate(_rounds(files.sources)):
        with ThreadPoolExecutor(2) as pool:
            to_bridge = pool.submit(send, BRIDGE_AE, receivers.bridge_port, members, n)
            to_storescp = pool.submit(send, STORESCP_AE, receivers.storescp_port, members, n)
            bridge_sent, storescp_sent = to_bridge.result(), to_storescp.result()
        consumer, storescp = receivers.take()
        for source in members:
            delivery = Delivery(
                source,
                consumer.get(source.instance),
                # Named by the Affected SOP Instance UID: storescu takes the data set's,
                # pynetdicom the File Meta's (unique in a round either way).
                storescp.get(source.meta_instance) or storescp.get(source.instance),
                bridge_sent[source.name],
                storescp_sent[source.name],
            )
            outcome.check(delivery, verbatim=verbatim)
    return outcome


def _report(files: FileSet, outcome: Outcome, sender: str) -> None:
    pydicom = [s for s in outcome.compared if not s.constructed]
    print(
        f"\n{sender}: {len(outcome.compared)} files compared ({len(pydicom)} of pydicom's,"
        f" {len(outcome.compared) - len(pydicom)} made here), {outcome.same_as_file} equal to"
        f" the file's data set; sent to the bridge only and compared with the file:"
        f" {', '.join(outcome.file_only) or 'none'}; skipped"
        f" {len(files.skipped) + len(outcome.skipped)}:"
    )
    for name, why in sorted({**files.skipped, **outcome.skipped}.items()):
        print(f"  {name}: {why}")
    assert not outcome.problems, "\n".join(outcome.problems)
    constructed = {s.path.name for s in outcome.compared if s.constructed}
    assert constructed == set(CONSTRUCTED), set(CONSTRUCTED) - constructed
    assert len(pydicom) >= MIN_PYDICOM_FILES, (len(pydicom), outcome.skipped)


def test_storescu_stored_bytes_are_storescps(
    files: FileSet, receivers: Receivers, tmp_path: Path
) -> None:
    """storescu sends every file to the bridge and to storescp: the example consumer's
    stored data set is storescp's, byte for byte."""

    def send(called: str, port: int, members: list[Source], n: int) -> Sent:
        profile = tmp_path / f"{called}-{n}.cfg"
        _profile(members, profile)
        return _storescu(profile, called, port, members)

    _report(files, _exchange(files, receivers, send, verbatim=False), "storescu")


def test_unchanged_file_bytes_are_stored_unchanged(
    files: FileSet, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom sends every file's data set bytes as they are: the example consumer's
    stored data set is storescp's and the file's, byte for byte."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    def send(called: str, port: int, members: list[Source], n: int) -> Sent:
        return _pynetdicom(called, port, members)

    outcome = _exchange(files, receivers, send, verbatim=True)
    _report(files, outcome, "pynetdicom")
    assert outcome.same_as_file == len(outcome.compared)
