"""C-STORE data sets received into files (bridge/received.py): the envelope is the one of
the in-memory path, large values never pass through memory, and no file is left behind.

Unit tests feed pynetdicom's own DIMSE decoder (the code that writes the file in the SCP)
and build envelopes with the bridge's Conversation; the tests at the end send through a
bridge on the real broker.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from pydicom import dcmread, examples
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from bridge._pynetdicom import receive
from bridge.errors import BridgeError
from bridge.protocol import dicomjson, part10
from bridge.protocol.envelope import AssociationInfo
from bridge.protocol.model import Service
from bridge.scp import received
from bridge.scp.conversation import Conversation, Limits
from bridge.sdk.consumer import Request
from bridge.transport import bulkstore
from bridge.transport.bulkstore import DirectoryStore, path_of
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import RawResponder, association, part10_of
from tests.waiting import eventually

MULTIFRAME = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage
INSTANCE = "1.2.826.0.1.3680043.8.498.4242"
INFO = AssociationInfo("assoc", "TEST-SCU", "DICOM-BRIDGE", "127.0.0.1", 1234)
TIMESTAMP = datetime(2026, 1, 2, 3, 4, 5, 600000)
URI = re.compile(rb'"BulkDataURI":"([^"]+)"')
DEADLINE = re.compile(rb'"deadline":"[^"]+"')
META = receive.DataSetMeta(CTImageStorage, INSTANCE, ExplicitVRLittleEndian)

Outcome = tuple[str, bytes]
"""("ok", normalized body) or ("error", "<class>: <message>")."""


# -- pynetdicom's receiving end, without a network ------------------------------------------


# A bridge's AE per spool limit, receiving into one directory (see _primitive).
_SPOOLING: dict[int, AE] = {}
_RECEIVING = Path(tempfile.gettempdir()) / f"bridge-test-receiving-{os.getpid()}"


@pytest.fixture(autouse=True, scope="module")
def _receiving() -> Iterator[None]:
    yield
    _SPOOLING.clear()
    shutil.rmtree(_RECEIVING, ignore_errors=True)


def _spooling(limit: int) -> AE:
    ae = _SPOOLING.get(limit)
    if ae is None:
        ae = _SPOOLING[limit] = AE()
        received.enable(ae, _RECEIVING, limit)
    return ae


def _primitive(
    data: bytes,
    syntax: UID,
    *,
    to_file: bool,
    sop_class: str = CTImageStorage,
    spool: int | None = None,
) -> C_STORE:
    """The C-STORE request primitive pynetdicom's SCP hands its handler for a data set
    ``data`` encoded in ``syntax``: in memory, or received into a file
    (``STORE_RECV_CHUNKED_DATASET``): pynetdicom's own file, or with ``spool`` a
    :class:`received.Spool` of that limit, as on an association of a bridge's AE. Made by
    pynetdicom's own encoder and decoder."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = INSTANCE
    request.Priority = 2
    request.DataSet = BytesIO(data)
    outgoing = C_STORE_RQ()
    outgoing.primitive_to_message(request)
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = sop_class
    context.transfer_syntax = [syntax]
    incoming = DIMSEMessage()
    saved = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = to_file
    # pynetdicom makes the file in the DUL thread of the association: this one, here.
    thread: Any = threading.current_thread()
    if spool is not None:
        thread.assoc = SimpleNamespace(
            ae=_spooling(spool), requestor=SimpleNamespace(ae_title=INFO.calling_ae)
        )
    try:
        for p_data in outgoing.encode_msg(1, 16384):
            if incoming.decode_msg(p_data, SimpleNamespace(_accepted_cx={1: context})):  # type: ignore[arg-type]
                break
    finally:
        _config.STORE_RECV_CHUNKED_DATASET = saved
        if spool is not None:
            del thread.assoc
    primitive = incoming.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    if to_file:
        assert primitive._dataset_file is not None
        assert isinstance(primitive._dataset_file, received.Spool) == (spool is not None)
        if spool is None:
            primitive._dataset_file.close()  # as pynetdicom's SCP does after the handler
    return primitive


def _event(primitive: C_STORE, syntax: UID, sop_class: str = CTImageStorage) -> Event:
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = sop_class
    context.transfer_syntax = [syntax]
    event = Event(None, evt.EVT_C_STORE, {"request": primitive, "context": context.as_tuple})  # type: ignore[arg-type]
    event.timestamp = TIMESTAMP
    return event


def _normalized(body: bytes) -> bytes:
    """The body with every BulkDataURI replaced by the SHA-256 of the bytes it names (a
    claim-check file, or a range of the envelope's Part 10 file), the Part 10 file by the
    SHA-256 of its data set (its File Meta differs with the receiving path), and the
    deadline (the clock) taken out."""
    envelope = orjson.loads(body)
    whole = part10_of(envelope)

    def digest(match: re.Match[bytes]) -> bytes:
        uri = match.group(1).decode()
        if uri.startswith("?"):
            assert whole is not None, "a reference without a Part 10 file"
            data = part10.slice_reference(whole, uri)
        else:
            data = path_of(uri).read_bytes()
        return b'"BulkDataURI":"sha256:' + hashlib.sha256(data).hexdigest().encode() + b'"'

    if envelope.get("file_meta") is not None:
        # pynetdicom's own file has pynetdicom's File Meta (no Source AE Title): compare
        # what the request says.
        facts = ("00020001", "00020002", "00020003", "00020010")
        envelope["file_meta"] = {k: v for k, v in envelope["file_meta"].items() if k in facts}
        body = orjson.dumps(envelope)
    if whole is not None:
        start = envelope["part10"]["dataset_offset"]
        assert part10.read_meta(whole).dataset_offset == start
        dataset = hashlib.sha256(whole[start:]).hexdigest()
        envelope["part10"] = {"dataset sha256": dataset}
        body = orjson.dumps(envelope)
    return DEADLINE.sub(b'"deadline":null', URI.sub(digest, body))


def _conversation(event: Event, store: DirectoryStore, limits: Limits) -> Conversation:
    """A C-STORE conversation whose ``_message()`` builds the body (it publishes nothing,
    so it needs no transport)."""
    nothing: Any = None
    return Conversation(
        event, Service.C_STORE, INFO, transport=nothing, seam=nothing, store=store, limits=limits
    )


def _envelope(event: Event, store: DirectoryStore, threshold: int) -> Outcome:
    """What the bridge publishes for ``event``: the body its Conversation builds."""
    limits = Limits(reply_timeout=10, publish_timeout=5, bulk_threshold=threshold,
                    max_message_size=1 << 30)  # fmt: skip
    conversation = _conversation(event, store, limits)
    conversation.id = "request-id"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings on odd test files
            body = conversation._message().body
        return "ok", _normalized(body)
    except BridgeError as exc:
        return "error", f"{type(exc).__name__}: {exc.message}".encode()
    finally:
        conversation.close()  # deletes the claim-check files it wrote


def _both(
    data: bytes, syntax: UID, store: DirectoryStore, threshold: int, spool: int | None = None
) -> tuple[Outcome, Outcome, Path]:
    """The envelope of the in-memory path, the one received into a file (pynetdicom's, or a
    spool of limit ``spool``) and the path of that file."""
    _spooling(0)  # the bridge's hooks in place, as in a bridge: pynetdicom's file too
    memory = _envelope(_event(_primitive(data, syntax, to_file=False), syntax), store, threshold)
    primitive = _primitive(data, syntax, to_file=True, spool=spool)
    assert primitive._dataset_path is not None
    path = Path(str(primitive._dataset_path))
    handle: Any = primitive._dataset_file
    if isinstance(handle, received.Spool):  # went to the file exactly when over the limit
        assert handle.spilled == (len(data) > cast(int, spool)) == path.exists()
    from_file = _envelope(_event(primitive, syntax), store, threshold)
    return memory, from_file, path


class CountingStore(DirectoryStore):
    """Counts values stored from memory and copied from a received file."""

    puts = ranges = 0

    def put(self, data: bytes) -> str:
        self.puts += 1
        return super().put(data)

    def put_range(self, source: int, offset: int, length: int) -> str:
        self.ranges += 1
        return super().put_range(source, offset, length)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    bulk = CountingStore(tmp_path / "bulk")
    bulk.ensure()
    return bulk


def _stored_data_set(path: str) -> tuple[bytes, UID]:
    """A test file's data set bytes as they would travel in a C-STORE, and their transfer
    syntax (implicit VR little endian for files without File Meta Information)."""
    with open(path, "rb") as handle:
        read_preamble(handle, force=True)
        meta = _read_file_meta_info(handle)
        data = handle.read()
    syntax = meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian
    return data, UID(str(syntax))


def _dicom_files() -> list[str]:
    return sorted(p for p in {*get_testdata_files(), *get_charset_files()} if os.path.isfile(p))


# -- the envelope is the in-memory path's -------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("threshold", [16, 1 << 20], ids=["16 B", "1 MiB"])
@pytest.mark.parametrize(
    "spool", [None, 0, 1 << 30, 2000], ids=["file", "spilled", "in memory", "2 kB spool"]
)
def test_envelope_from_file_is_the_in_memory_envelope(
    store: CountingStore, threshold: int, spool: int | None
) -> None:
    """Every pydicom test file as a C-STORE data set (all transfer syntaxes pydicom ships:
    implicit, explicit, big endian, deflated, encapsulated), with a threshold that defers
    almost every value and with the default, received into pynetdicom's file or a spool
    (always spilled to its file, never, or past 2 kB): the same body byte for byte (bulk
    files compared by content), or the same error; no received file left."""
    checked = errors = claimed = spilled = 0
    for name in _dicom_files():
        data, syntax = _stored_data_set(name)
        spilled += spool is not None and len(data) > spool
        memory, from_file, path = _both(data, syntax, store, threshold, spool)
        assert from_file == memory, os.path.basename(name)
        assert not path.exists(), "received file not deleted"
        checked += 1
        errors += memory[0] == "error"
        claimed += memory[1].count(b"sha256:")
    assert checked >= 150, checked  # pydicom 3.0.2 ships ~190 .dcm files
    assert errors < checked // 4
    if spool == 2000:  # both kinds
        assert 20 < spilled < checked - 20, spilled
    if threshold == 16:  # no test file has a value over 1 MiB
        assert claimed > 100
        # A value in the received Part 10 file is referenced there, never copied.
        assert store.ranges == 0
    assert not list(store.root.iterdir()), "claim-check files left behind"


def _element(tag: int, vr: str, value: bytes, *, undefined: bool = False) -> bytes:
    """One explicit VR little endian element."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UC", "UR", "UT"):
        return head + b"\0\0" + struct.pack("<L", length) + value
    return head + struct.pack("<H", length) + value


def _item(value: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", len(value)) + value


DELIMITER = b"\xfe\xff\xdd\xe0\0\0\0\0"
HEADER = _element(0x00080016, "UI", CTImageStorage.encode() + b"\0")


@pytest.mark.parametrize(
    ("data", "syntax"),
    [
        # Encapsulated Pixel Data: undefined length, deferred and claimed by its items.
        (HEADER + _element(0x7FE00010, "OB", _item(b"") + _item(os.urandom(3000))
                           + _item(os.urandom(1001) + b"\0") + DELIMITER, undefined=True),
         JPEGBaseline8Bit),
        # Undefined length but no items: pydicom's byte scan finds the delimiter.
        (HEADER + _element(0x00091010, "UN", os.urandom(500) + DELIMITER, undefined=True),
         ExplicitVRLittleEndian),
        # Items running past the end: neither path finds a delimiter.
        (HEADER + _element(0x7FE00010, "OB", _item(os.urandom(100))[:50], undefined=True),
         JPEGBaseline8Bit),
        # A value declared longer than the data set.
        (HEADER + _element(0x7FE00010, "OW", os.urandom(200))[:-50], ExplicitVRLittleEndian),
        # An OW of odd length (refused), an OB of odd length (fine).
        (HEADER + _element(0x00660023, "OW", os.urandom(301)), ExplicitVRLittleEndian),
        (HEADER + _element(0x7FE00010, "OB", os.urandom(301)), ExplicitVRLittleEndian),
        # A long text and a long sequence: deferred, read, converted as in memory.
        (HEADER + _element(0x00204000, "LT", b"x" * 400)
         + _element(0x00081140, "SQ", _item(_element(0x00081150, "UI", b"1.2.3\0") * 60)),
         ExplicitVRLittleEndian),
        # Implicit VR: OB or OW Pixel Data resolved as OW.
        (struct.pack("<HHL", 0x7FE0, 0x0010, 400) + os.urandom(400), ImplicitVRLittleEndian),
        # Empty data set: "dataset": null either way.
        (b"", ExplicitVRLittleEndian),
        (b"not a data set at all", ExplicitVRLittleEndian),
    ],
    ids=["encapsulated", "byte-scan", "runaway-items", "truncated", "odd-ow", "odd-ob",
         "text-and-sequence", "implicit", "empty", "garbage"],
)  # fmt: skip
def test_edge_cases_give_the_in_memory_envelope(
    store: DirectoryStore, data: bytes, syntax: UID
) -> None:
    for threshold in (16, 1 << 20):
        for spool in (None, 0, 1 << 30):
            memory, from_file, path = _both(data, syntax, store, threshold, spool)
            assert from_file == memory
            assert not path.exists()
    assert not list(store.root.iterdir())


def test_big_endian_and_deflated_are_read_whole(store: DirectoryStore) -> None:
    """Both are read into memory as before (nothing left in the file), same envelope."""
    ds = examples.mr
    for syntax, spool in itertools.product(
        (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian), (None, 0, 1 << 30)
    ):
        data = encode(ds, False, syntax.is_little_endian, syntax.is_deflated)
        assert data is not None
        memory, from_file, _ = _both(data, syntax, store, 64, spool)
        assert from_file == memory
        assert memory[0] == "ok"
        assert b"sha256:" in memory[1]
        primitive = _primitive(data, syntax, to_file=True, spool=spool)
        handle: Any = primitive._dataset_file
        source = handle if isinstance(handle, received.Spool) else Path(str(handle.name))
        dataset_file = received.ReceivedDataSet(source, syntax, defer_size=64)
        try:
            loaded = dataset_file.load()
            assert loaded is not None
            deferred = [e for e in loaded.elements() if getattr(e, "length", 0) and e.value is None]
            assert not deferred
        finally:
            dataset_file.discard()


def _large_data_set(megabytes: int) -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**12}"
    ds.PatientName = "Large^Received"
    ds.NumberOfFrames = megabytes * 2
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pixels = os.urandom(512 * 512 * 2 * ds.NumberOfFrames)
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds, pixels


def test_large_value_stays_in_the_received_file(store: DirectoryStore) -> None:
    """A 32 MB Pixel Data stays in the received Part 10 file, which goes to the
    claim-check store as a link (no byte copied); the envelope refers into it and its
    build allocates a small fraction of it (the in-memory path holds it twice)."""
    ds_again, pixels = _large_data_set(32)
    data = encode(ds_again, False, True)
    assert data is not None
    primitive = _primitive(
        data, ExplicitVRLittleEndian, to_file=True, sop_class=MULTIFRAME, spool=1 << 20
    )
    del data
    event = _event(primitive, ExplicitVRLittleEndian, MULTIFRAME)
    limits = Limits(reply_timeout=10, publish_timeout=5, bulk_threshold=1 << 20,
                    max_message_size=1 << 24)  # fmt: skip
    conversation = _conversation(event, store, limits)
    tracemalloc.start()
    try:
        body = conversation._message().body
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"{peak / 1e6:.1f} MB allocated for a 32 MB value"
    envelope = orjson.loads(body)
    reference = envelope["dataset"]["7FE00010"]["BulkDataURI"]
    uri = envelope["part10"]["BulkDataURI"]
    whole = path_of(uri).read_bytes()
    assert part10.slice_reference(whole, reference) == pixels
    assert whole[envelope["part10"]["dataset_offset"] :] == encode(ds_again, False, True)
    assert len(whole) == envelope["part10"]["length"]
    meta = part10.read_meta(whole)
    assert (meta.sop_class_uid, meta.sop_instance_uid) == (MULTIFRAME, INSTANCE)
    assert meta.transfer_syntax == ExplicitVRLittleEndian
    assert not Path(str(primitive._dataset_path)).exists()
    assert [p.name for p in store.root.iterdir()] == [path_of(uri).name]  # nothing copied
    conversation.close()
    assert not path_of(uri).exists()


# -- the pieces ------------------------------------------------------------------------------


def test_copy_range_through_user_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where copy_file_range cannot copy (another filesystem on old kernels), the copy goes
    through a bounded buffer; a source that ends early is an error, not a short value."""
    source = tmp_path / "source"
    data = os.urandom(3 * bulkstore.COPY_CHUNK + 12345)
    source.write_bytes(data)

    def refuse(*args: Any) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    with open(source, "rb") as handle:
        uri = store.put_range(handle.fileno(), 100, len(data) - 200)
        assert path_of(uri).read_bytes() == data[100:-100]
        with pytest.raises(OSError, match="ends before"):
            store.put_range(handle.fileno(), 100, len(data))
    assert [p.name for p in store.root.iterdir()] == [path_of(uri).name]  # no partial file


def test_copy_range_in_the_kernel(tmp_path: Path) -> None:
    source = tmp_path / "source"
    data = os.urandom(5 << 20)
    source.write_bytes(data)
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    with open(source, "rb") as handle:
        assert path_of(store.put_range(handle.fileno(), 7, len(data) - 7)).read_bytes() == data[7:]
        with pytest.raises(OSError, match="ends before"):
            store.put_range(handle.fileno(), 7, len(data))


def test_discard_deletes_partial_and_queued_files(tmp_path: Path) -> None:
    """What pynetdicom never deletes: the file of a data set cut off mid-transfer, and the
    files of requests still queued when the association ends."""
    partial = open(tmp_path / "partial.dcm", "wb")  # noqa: SIM115
    queued: list[Any] = [open(tmp_path / f"queued-{i}.dcm", "wb") for i in range(2)]  # noqa: SIM115
    queued += [_written_spool(tmp_path, 100, 10), _written_spool(tmp_path, 100, 1000)]
    msg_queue: Any = __import__("queue").Queue()
    for handle in queued:
        msg_queue.put((1, SimpleNamespace(_dataset_file=handle)))
    msg_queue.put((1, SimpleNamespace()))  # a C-ECHO, say
    assoc: Any = SimpleNamespace(
        dimse=SimpleNamespace(message=SimpleNamespace(_data_set_file=partial), msg_queue=msg_queue)
    )
    assert len(list(tmp_path.iterdir())) == 4  # the spool of 10 bytes made no file
    received.discard_partial(assoc)
    received.discard_queued(assoc)
    assert partial.closed
    assert not list(tmp_path.iterdir())
    assert queued[2].memory() is None  # its memory released
    spilling = _written_spool(tmp_path, 100, 60)  # cut off mid-transfer, past the limit
    spilling.write(b"x" * 60)
    assoc.dimse.message._data_set_file = spilling
    received.discard_partial(assoc)
    assert not list(tmp_path.iterdir())
    received.discard_partial(SimpleNamespace(dimse=SimpleNamespace(message=None)))  # type: ignore[arg-type]


def _written_spool(directory: Path, limit: int, size: int) -> received.Spool:
    """A spool as pynetdicom leaves it after receiving ``size`` bytes of data set."""
    spool = received.Spool(directory, limit)
    spool.write(b"\0" * 128)  # the preamble, dropped
    spool.begin(META)
    spool.write(os.urandom(size))
    spool.file.flush()
    return spool


def test_spool_keeps_small_data_sets_in_memory_and_spills_large_ones(tmp_path: Path) -> None:
    """Up to its limit a spool makes no file; the first write past it creates its file
    (new, 0600, at the name chosen at once) with the bytes so far, and the rest follows
    there. pynetdicom's cleanup after the handler (close, unlink ignoring OSError) and
    discard() work either way."""
    data = os.urandom(10_000)
    small = _written_spool(tmp_path, len(data), 0)
    small.write(data)
    assert small
    assert not small.spilled
    assert not list(tmp_path.iterdir())
    memory = small.memory()
    assert memory is not None
    head = memory.getvalue()[: small.header_length]
    assert part10.read_meta(head).sop_instance_uid == INSTANCE
    assert memory.getvalue() == head + data
    name = Path(small.name)
    assert name.parent == tmp_path
    assert name.name.startswith(received.PREFIX)
    large = _written_spool(tmp_path, len(data), 0)
    for offset in range(0, len(data), 3000):  # up to the limit exactly: in memory
        large.write(data[offset : offset + 3000])
        large.file.flush()
        assert not large.spilled
    large.write(b"tail")
    large.file.flush()
    assert large.spilled
    assert large.memory() is None
    assert Path(large.name).read_bytes() == head + data + b"tail"
    assert Path(large.name).stat().st_mode & 0o777 == 0o600
    assert Path(small.name) != Path(large.name)
    for spool in (small, large):  # as pynetdicom's C-STORE service class, after the handler
        spool.close()
        with contextlib.suppress(OSError):
            os.unlink(spool.name)
        spool.discard()
    assert not list(tmp_path.iterdir())
    taken = received.Spool(tmp_path, 0)
    Path(taken.name).write_bytes(b"someone else's")
    taken.begin(META)
    with pytest.raises(FileExistsError):  # never writes into a file it did not create
        taken.write(b"x")
    taken.discard()
    assert Path(taken.name).read_bytes() == b"someone else's"


def test_receiving_a_large_data_set_holds_at_most_the_spool_limit(tmp_path: Path) -> None:
    """pynetdicom's decoder receiving 32 MB into a spool of 1 MiB: the data set goes to the
    file, memory allocated while receiving stays near the limit."""
    ds, pixels = _large_data_set(32)
    data = encode(ds, False, True)
    assert data is not None
    del ds, pixels
    tracemalloc.start()
    try:
        primitive = _primitive(
            data, ExplicitVRLittleEndian, to_file=True, sop_class=MULTIFRAME, spool=1 << 20
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20, f"{peak / 1e6:.1f} MB allocated receiving 32 MB"
    handle: Any = primitive._dataset_file
    assert isinstance(handle, received.Spool)
    assert handle.spilled
    assert os.path.getsize(handle.name) == handle.header_length + len(data)
    handle.discard()
    assert not os.path.exists(handle.name)


def _pynetdicom_file() -> Path:
    """A file made as pynetdicom makes one for a data set it receives (looked up at call
    time: bridge.scp.received replaces the factory)."""
    factory: Any = vars(dimse_messages)["NamedTemporaryFile"]
    handle = factory(delete=False, mode="wb", suffix=".dcm")
    handle.close()
    return Path(handle.name)


def test_files_go_to_the_receive_directory_of_their_ae(tmp_path: Path) -> None:
    """pynetdicom creates the file in the DUL thread of the association: an association of
    a bridge's AE gets the bridge's directory, any other pynetdicom's default."""
    mine, other = AE(), AE()
    received.enable(mine, tmp_path / "receiving")
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    made: dict[str, Path] = {}

    class Dul(threading.Thread):  # what pynetdicom's DULServiceProvider offers
        def __init__(self, ae: AE, key: str) -> None:
            super().__init__()
            self.assoc = SimpleNamespace(ae=ae)
            self.key = key

        def run(self) -> None:
            made[self.key] = _pynetdicom_file()

    for thread in (Dul(mine, "mine"), Dul(other, "other")):
        thread.start()
        thread.join()
    made["no association"] = _pynetdicom_file()
    try:
        assert made["mine"].parent == tmp_path / "receiving"
        assert made["mine"].name.startswith(received.PREFIX)
        assert not made["mine"].exists()  # a spool: a file only once past its limit
        assert made["other"].parent == Path(tempfile.gettempdir())
        assert made["no association"].parent == Path(tempfile.gettempdir())
    finally:
        for path in made.values():
            path.unlink(missing_ok=True)


def test_sweep_deletes_only_old_received_files(tmp_path: Path) -> None:
    old = tmp_path / f"{received.PREFIX}old.dcm"
    fresh = tmp_path / f"{received.PREFIX}new.dcm"
    other = tmp_path / "other"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    past = time.time() - received.SWEEP_AGE - 10
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert received.sweep(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
    assert received.sweep(tmp_path / "missing") == 0


# -- through the bridge ----------------------------------------------------------------------


def _receive_dir(harness: Any) -> Path:
    return Path(harness.settings.receive_directory)


def _received_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(received.PREFIX)]


def _wait_empty(directory: Path) -> None:
    """Wait until no received file is left in ``directory``; fail naming those left."""
    eventually(
        lambda: not _received_files(directory),
        lambda: f"received files deleted; left in {directory}: {_received_files(directory)}",
    )


@pytest.fixture
def bulk_bridge(make_bridge: BridgeFactory, tmp_path: Path) -> Any:
    harness = make_bridge(bulk_dir=tmp_path / "bulk", reply_timeout=3.0)
    harness.wait_ready()
    return harness


def _digested(document: Any, read: Callable[[str], bytes]) -> Any:
    """A dataset's JSON with each BulkDataURI replaced by the SHA-256 of the bytes
    ``read(uri)`` gives."""
    if isinstance(document, dict):
        if "BulkDataURI" in document:
            data = read(document["BulkDataURI"])
            return {**document, "BulkDataURI": "sha256:" + hashlib.sha256(data).hexdigest()}
        return {key: _digested(value, read) for key, value in document.items()}
    if isinstance(document, list):
        return [_digested(value, read) for value in document]
    return document


def _received_part10(request: Request) -> bytes:
    """The Part 10 file of a request, read whole."""
    found = request.part10
    assert found is not None
    return found if isinstance(found, bytes) else found.read()


@pytest.mark.timeout(60)
def test_large_store_through_the_bridge(bulk_bridge: Any, make_consumer: ConsumerFactory) -> None:
    """A 32 MB instance: received into a file, which goes to the claim-check store as the
    request's Part 10 file; the consumer gets the exact bytes sent, and the dataset JSON of
    the in-memory path with its large values referring into the Part 10 file; the received
    file is gone before the consumer sees the request, the claim-check file after."""
    ds, pixels = _large_data_set(32)

    def digest(tag: int, vr: str, value: bytes) -> str | None:
        if len(value) <= received.REFERENCE_MIN:
            return None
        return "sha256:" + hashlib.sha256(value).hexdigest()

    seen: dict[str, Any] = {}
    directory = _receive_dir(bulk_bridge)

    def handler(request: Request) -> int:
        seen["json"] = orjson.dumps(_digested(request.envelope["dataset"], request._bulk_value))
        seen["pixels"] = request.dataset.PixelData == pixels if request.dataset else False
        seen["uri"] = request.envelope["part10"]["BulkDataURI"]
        seen["part10"] = _received_part10(request)
        seen["received files"] = _received_files(directory)
        return 0

    make_consumer(handler, (Service.C_STORE,))
    with association(bulk_bridge.port, [MULTIFRAME]) as assoc:
        syntax = assoc.accepted_contexts[0].transfer_syntax[0]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        assert assoc.send_c_store(ds).Status == 0
    # What the in-memory path gives for the bytes pynetdicom sent.
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    assert encoded is not None
    in_memory = decode(BytesIO(encoded), syntax.is_implicit_VR, syntax.is_little_endian)
    expected = orjson.dumps(dicomjson.dataset_to_json(in_memory, bulk_data=digest))
    assert seen["pixels"] is True
    assert seen["json"] == expected
    whole = seen["part10"]
    assert whole[part10.read_meta(whole).dataset_offset :] == encoded
    assert seen["received files"] == []
    assert not path_of(seen["uri"]).exists(), "claim-check file not deleted after the reply"
    _wait_empty(directory)


def _with_meta(ds: Dataset, assoc: Any) -> Dataset:
    """``ds`` ready to send on ``assoc``: File Meta naming the accepted transfer syntax."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = assoc.accepted_contexts[0].transfer_syntax[0]
    return ds


def _store_status(harness: Any, megabytes: int = 4) -> int:
    ds, _ = _large_data_set(megabytes)
    with association(harness.port, [MULTIFRAME]) as assoc:
        return int(assoc.send_c_store(_with_meta(ds, assoc)).Status)


def test_received_file_deleted_when_the_consumer_fails(
    bulk_bridge: Any, make_consumer: ConsumerFactory
) -> None:
    def fail(request: Request) -> int:
        raise RuntimeError("consumer bug")

    make_consumer(fail, (Service.C_STORE,))
    assert _store_status(bulk_bridge) == 0xC211
    _wait_empty(_receive_dir(bulk_bridge))
    assert not [p for p in Path(bulk_bridge.settings.bulk_dir).iterdir() if p.is_file()]


@pytest.mark.slow
def test_received_file_deleted_when_no_reply_comes(
    bulk_bridge: Any, raw: Callable[..., RawResponder]
) -> None:
    raw(lambda message: None)  # bound, never answers
    assert _store_status(bulk_bridge) == 0xC001
    _wait_empty(_receive_dir(bulk_bridge))
    assert not [p for p in Path(bulk_bridge.settings.bulk_dir).iterdir() if p.is_file()]


def test_received_file_deleted_when_unroutable(bulk_bridge: Any) -> None:
    assert _store_status(bulk_bridge) == 0xA700  # nobody bound
    _wait_empty(_receive_dir(bulk_bridge))


@pytest.mark.timeout(60)
def test_oversize_data_set_refused_and_its_file_deleted(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    """The size guard still aborts a data set over --max-dataset-size while it arrives
    (into the file now); the part received is deleted, and the bridge serves on."""
    harness = make_bridge(bulk_dir=tmp_path / "bulk", max_dataset_size=3_000_000)
    harness.wait_ready()
    make_consumer(lambda request: 0, (Service.C_STORE,))
    directory = _receive_dir(harness)
    done = threading.Event()
    seen: list[str] = []

    def watch() -> None:  # proof that the data set went to a file before the abort
        while not done.is_set() and not seen:
            seen.extend(_received_files(directory))
            time.sleep(0.0005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ds, _ = _large_data_set(8)
    try:
        with association(harness.port, [MULTIFRAME]) as assoc:
            status = assoc.send_c_store(_with_meta(ds, assoc))
            assert not status  # no response: aborted
    finally:
        done.set()
        thread.join(10)
    assert seen, "the data set was not received into a file"
    _wait_empty(directory)
    assert _store_status(harness, megabytes=1) == 0  # 1 MB: under the limit


def test_small_store_and_data_set_file_of_a_test_file(
    bulk_bridge: Any, make_consumer: ConsumerFactory
) -> None:
    """CT_small through the bridge: the Part 10 file travels inline and holds the bytes
    sent; the dataset JSON is the in-memory one, values over 1 KiB (Pixel Data) referring
    into the file."""
    path = get_testdata_file("CT_small.dcm", download=False)
    assert isinstance(path, str)
    data, syntax = _stored_data_set(path)
    in_memory = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)

    def digest(tag: int, vr: str, value: bytes) -> str | None:
        if len(value) <= received.REFERENCE_MIN:
            return None
        return "sha256:" + hashlib.sha256(value).hexdigest()

    expected = orjson.dumps(dicomjson.dataset_to_json(in_memory, bulk_data=digest))
    seen: list[tuple[bytes, Any, str]] = []

    def handler(request: Request) -> int:
        document = request.envelope["dataset"]
        json = orjson.dumps(_digested(document, request._bulk_value))
        seen.append((json, request.part10, document["7FE00010"]["BulkDataURI"]))
        return 0

    make_consumer(handler, (Service.C_STORE,))
    with association(bulk_bridge.port, [CTImageStorage]) as assoc:
        # A Dataset: a bridge in the process makes pynetdicom send a path's bytes as they
        # are, in exactly the file's transfer syntax.
        assert assoc.send_c_store(dcmread(path)).Status == 0
        accepted = assoc.accepted_contexts[0].transfer_syntax[0]
    [(json, whole, reference)] = seen
    assert json == expected
    assert part10.parse_reference(reference) is not None
    assert isinstance(whole, bytes)
    meta = part10.read_meta(whole)
    assert meta.transfer_syntax == accepted
    assert meta.sop_class_uid == CTImageStorage
    assert meta.sop_instance_uid == in_memory.SOPInstanceUID
    assert meta.source_ae == "TEST-SCU"
    # pynetdicom sent the file's data set re-encoded in the accepted transfer syntax.
    sent = encode(in_memory, accepted.is_implicit_VR, accepted.is_little_endian)
    assert whole[meta.dataset_offset :] == sent
    _wait_empty(_receive_dir(bulk_bridge))


def test_put_file_links_and_keeps_others_modes(tmp_path: Path) -> None:
    """A received file (owned) is linked and gets the store's mode; someone else's file
    is linked when its mode already lets the store's readers read it, else copied, and
    its own mode never changes."""
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    wanted = stat_mode(path_of(store.put(b"x")))  # the mode of the store's own files
    for owned, mode, linked in ((True, 0o600, True), (False, 0o600, False), (False, 0o644, True)):
        source = tmp_path / f"source-{owned}-{mode:o}"
        source.write_bytes(b"DICM" * 1000)
        source.chmod(mode)
        stored = path_of(store.put_file(source, owned=owned))
        assert stored.read_bytes() == source.read_bytes()
        assert (stored.stat().st_ino == source.stat().st_ino) == linked
        assert stat_mode(source) == (wanted if owned else mode)
        assert stat_mode(stored) == (mode if linked and not owned else wanted)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_delete_that_fails_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Callers delete claim-check files while they clean up: a file that cannot be
    deleted is a warning, never an exception in their way."""
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    uri = store.put(b"value")

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    store.delete(uri)
    assert "claim-check file not deleted: Permission denied" in caplog.text
    monkeypatch.undo()
    store.delete(uri)
    assert not path_of(uri).exists()
