"""C-GET and C-MOVE send the stored files as they are: DCMTK's getscu, a storescp behind
movescu and a pynetdicom C-GET SCU receive, bit for bit, the data set bytes the bridge
received by C-STORE, in each file's own transfer syntax. A peer that accepts only another
uncompressed syntax gets the instance converted; a large file travels through the
claim-check directory; every file the bridge was handed or made for a sub-operation is
gone afterwards, also when the peer aborts."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from bridge.config import ConsumerSettings
from bridge.example.consumer import build
from bridge.protocol import part10
from bridge.protocol.model import Service
from bridge.transport.bulkstore import DirectoryStore, path_of
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import AMQP_URL, BridgeHarness, LoopThread, free_port
from tests.waiting import eventually

pytestmark = pytest.mark.process  # DCMTK peers

GET = StudyRootQueryRetrieveInformationModelGet


@dataclass(frozen=True)
class Case:
    """A test file, and the DCMTK options that make a peer accept its transfer syntax."""

    name: str
    getscu: str | None
    """getscu's preferred transfer syntax for what it retrieves; None: getscu 3.6.7 has
    none that makes it propose Implicit VR Little Endian first (its ``+xi`` proposes
    Explicit VR Little Endian only)."""
    storescp: tuple[str, ...]
    """storescp's; empty: its default (uncompressed, explicit VR first)."""


CASES = [
    Case("CT_small.dcm", "+xe", ()),  # Explicit VR Little Endian
    Case("MR_small_implicit.dcm", None, ("+xi",)),  # Implicit VR Little Endian
    Case("image_dfl.dcm", "+xd", ("+xd",)),  # Deflated Explicit VR Little Endian, odd length
    Case("SC_rgb_jpeg_dcmtk.dcm", "+xy", ("+xy",)),  # JPEG Baseline: encapsulated pixel data
]
GETSCU_CASES = [case for case in CASES if case.getscu is not None]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} missing: install dcmtk"
    return path


def _run(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None
    return Path(path)


def _meta(path: Path) -> part10.FileMeta:
    return part10.read_meta(path.read_bytes())


def _data_set(path: Path) -> bytes:
    """The bytes after a Part 10 file's File Meta Information."""
    data = path.read_bytes()
    return data[part10.read_meta(data).dataset_offset :]


def _as_sent(path: Path) -> bytes:
    """The data set of the file at ``path`` as the bridge sends it: unchanged, but for
    one trailing zero byte when its length is odd (image_dfl.dcm's deflated data set)."""
    data = _data_set(path)
    return data + b"\0" * (len(data) % 2)


class RecordingStore(DirectoryStore):
    """The consumer's claim-check store, noting the files it takes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.files: list[str] = []

    def put_file(self, path: Path, *, owned: bool = False) -> str:
        uri = super().put_file(path, owned=owned)
        self.files.append(uri)
        return uri


def _c_store(port: int, path: Path) -> None:
    """Store the file through the bridge as it is: its data set bytes on a context with
    exactly its transfer syntax (pynetdicom sends a path's bytes unchanged once a bridge
    has started in the process)."""
    meta = _meta(path)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(meta.sop_class_uid, [meta.transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM-BRIDGE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()


@dataclass
class Pacs:
    """The bridge, the example consumer and where things are."""

    bridge: BridgeHarness
    store: RecordingStore
    data_dir: Path
    bulk_dir: Path
    destination_port: int

    def stored_as_sent(self, source: Path) -> tuple[Path, str]:
        """Store ``source``; its path in the consumer's store and its Study Instance UID.
        The stored data set is the file's, byte for byte."""
        ds = dcmread(source, stop_before_pixels=True)
        _c_store(self.bridge.port, source)
        stored = self.data_dir / f"{ds.SOPInstanceUID}.dcm"
        assert _data_set(stored) == _data_set(source)
        return stored, str(ds.StudyInstanceUID)

    def claim_check_files(self) -> list[Path]:
        # (the bridge's .receiving directory is in there too)
        return [p for p in self.bulk_dir.iterdir() if p.is_file()]


@pytest.fixture
def make_pacs(
    make_bridge: BridgeFactory, exchange: str, tmp_path: Path
) -> Iterator[Callable[..., Pacs]]:
    """Bridge + example consumer sharing a claim-check directory; the bridge's AE table
    names STORESCP at a free port for C-MOVE."""
    started: list[tuple[Any, LoopThread]] = []

    def make(**bridge_settings: Any) -> Pacs:
        destination_port = free_port()
        table = tmp_path / "ae-table.json"
        table.write_text(f'{{"STORESCP": {{"host": "127.0.0.1", "port": {destination_port}}}}}')
        bulk = tmp_path / "bulk"
        bridge = make_bridge(ae_table=str(table), bulk_dir=str(bulk), **bridge_settings)
        bridge.wait_ready()
        settings = ConsumerSettings(
            amqp_url=AMQP_URL,
            exchange=exchange,
            queue=f"test-raw-{uuid.uuid4().hex[:8]}",
            data_dir=tmp_path / "store",
            bulk_dir=bulk,
        )  # type: ignore[call-arg]
        consumer = build(settings, exclusive=True)
        store = RecordingStore(bulk)
        consumer.store = store
        loop = LoopThread("example-consumer")
        loop.run(consumer.start())
        started.append((consumer, loop))
        return Pacs(bridge, store, settings.data_dir, bulk, destination_port)

    yield make
    for consumer, loop in started:
        loop.run(consumer.close())
        loop.stop()


def _getscu(port: int, study: str, out: Path, *options: str) -> str:
    out.mkdir()
    return _run(
        "getscu", "-v", "-S", "-aec", "DICOM-BRIDGE", "+B", "-od", str(out), *options,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(port),
    )  # fmt: skip


def _assert_get_success(output: str, completed: int) -> None:
    assert "Received C-GET Response (Success)" in output, output
    assert re.search(rf"Number of Completed Suboperations\s*: {completed}\n", output), output
    assert re.search(r"Number of Failed Suboperations\s*: 0\n", output), output


@pytest.fixture
def decoded(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The bridge's log lines about instances it sent decoded rather than as stored."""
    caplog.set_level(logging.DEBUG, logger="bridge.scp.sending")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "sent decoded" in r.getMessage()]

    return lines


def _only_file(directory: Path, output: str) -> Path:
    files = list(directory.iterdir())
    assert len(files) == 1, output
    return files[0]


# -- C-GET ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", GETSCU_CASES, ids=[c.name for c in GETSCU_CASES])
def test_getscu_receives_the_stored_bytes(
    case: Case,
    make_pacs: Callable[..., Pacs],
    decoded: Callable[[], list[str]],
    tmp_path: Path,
) -> None:
    assert case.getscu is not None
    pacs = make_pacs()
    stored, study = pacs.stored_as_sent(_testdata(case.name))
    output = _getscu(pacs.bridge.port, study, tmp_path / "got", case.getscu)
    _assert_get_success(output, completed=1)
    got = _only_file(tmp_path / "got", output)
    assert _meta(got).transfer_syntax == _meta(stored).transfer_syntax, output
    assert _data_set(got) == _as_sent(stored)
    assert not decoded()
    assert not pacs.store.files, "a small file travels inline"
    assert not pacs.claim_check_files()


@dataclass
class GetPeer:
    """A pynetdicom C-GET SCU that keeps the data set bytes of what it retrieves, and
    proposes the storage classes it receives with the transfer syntaxes given."""

    contexts: dict[str, list[str]]
    abort: bool = False
    """Abort the association on the first C-STORE request instead of answering it."""
    received: list[tuple[str, bytes]] = field(default_factory=list)
    """(transfer syntax, data set bytes) of each instance."""

    def _on_store(self, event: evt.Event) -> int:
        if self.abort:
            event.assoc.abort()
            return 0xA700
        try:  # received into a file (the bridge in this process switched that on)
            data = _data_set(Path(event.dataset_path))
        except AttributeError:
            data = event.encoded_dataset(include_meta=False)
        self.received.append((str(event.context.transfer_syntax), data))
        return 0x0000

    def get(self, port: int, study: str) -> list[Dataset]:
        ae = AE(ae_title="GET-SCU")
        ae.add_requested_context(GET)
        for sop_class, syntaxes in self.contexts.items():
            ae.add_requested_context(sop_class, syntaxes)
        roles: list[Any] = [build_role(sop_class, scp_role=True) for sop_class in self.contexts]
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        assoc = ae.associate(
            "127.0.0.1", port, ae_title="DICOM-BRIDGE", ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )  # fmt: skip
        assert assoc.is_established
        try:
            return [status for status, _ in assoc.send_c_get(query, GET)]
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()


def test_c_get_peer_accepting_only_implicit_vr_receives_the_stored_bytes(
    make_pacs: Callable[..., Pacs], decoded: Callable[[], list[str]]
) -> None:
    pacs = make_pacs()
    stored, study = pacs.stored_as_sent(_testdata("MR_small_implicit.dcm"))
    peer = GetPeer({MRImageStorage: [ImplicitVRLittleEndian]})
    statuses = peer.get(pacs.bridge.port, study)
    assert [s.Status for s in statuses] == [0xFF00, 0x0000]
    assert peer.received == [(ImplicitVRLittleEndian, _data_set(stored))]
    assert not decoded()
    assert not pacs.claim_check_files()


def test_c_get_peer_accepting_only_another_uncompressed_syntax_gets_it_converted(
    make_pacs: Callable[..., Pacs], decoded: Callable[[], list[str]]
) -> None:
    pacs = make_pacs()
    stored, study = pacs.stored_as_sent(_testdata("CT_small.dcm"))
    assert _meta(stored).transfer_syntax == ExplicitVRLittleEndian
    peer = GetPeer({CTImageStorage: [ImplicitVRLittleEndian]})
    statuses = peer.get(pacs.bridge.port, study)
    assert [s.Status for s in statuses] == [0xFF00, 0x0000]
    ((syntax, data),) = peer.received
    assert syntax == ImplicitVRLittleEndian
    original = dcmread(stored)
    got = dcmread(_implicit_file(data))
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PixelData == original.PixelData
    assert got.PatientName == original.PatientName
    assert len(decoded()) == 1
    assert not pacs.claim_check_files()


def _implicit_file(data: bytes) -> BytesIO:
    """A Part 10 file around an Implicit VR Little Endian data set."""
    head = part10.header(
        sop_class_uid="1.2.3",
        sop_instance_uid="1.2.3",
        transfer_syntax=ImplicitVRLittleEndian,
        implementation_class_uid="1.2.3",
    )
    return BytesIO(head + data)


def test_large_instance_via_c_get_travels_through_the_claim_check_directory(
    make_pacs: Callable[..., Pacs], decoded: Callable[[], list[str]], tmp_path: Path
) -> None:
    pacs = make_pacs()  # bulk threshold 1 MiB
    source = tmp_path / "large.dcm"
    ds = dcmread(_testdata("CT_small.dcm"))
    ds.Rows = ds.Columns = 3200
    ds.PixelData = np.arange(3200 * 3200, dtype="<u2").tobytes()  # 20 MB
    ds.save_as(source, enforce_file_format=True)
    stored, study = pacs.stored_as_sent(source)
    output = _getscu(pacs.bridge.port, study, tmp_path / "got", "+xe")
    _assert_get_success(output, completed=1)
    got = _only_file(tmp_path / "got", output)
    assert _data_set(got) == _data_set(stored)
    assert not decoded()
    (uri,) = pacs.store.files  # the consumer's reply named the file in the store
    assert not path_of(uri).exists(), "the bridge did not delete the claim-check file"
    assert stored.exists(), "the consumer's own file went with the claim-check link"
    assert not pacs.claim_check_files()


def test_files_made_for_sub_operations_are_deleted_when_the_peer_aborts(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    bulk = tmp_path / "bulk"
    harness = make_bridge(bulk_dir=str(bulk))
    harness.wait_ready()
    files = [_testdata(name) for name in ("CT_small.dcm", "MR_small.dcm", "CT_small.dcm")]
    # Small files travel inline: the bridge writes each to the claim-check directory
    # to send it from there.
    make_consumer(lambda request: files, (Service.C_GET,))
    store = harness.running.scp._store
    written: list[str] = []

    def put(data: bytes) -> str:
        written.append(DirectoryStore.put(store, data))
        return written[-1]

    store.put = put  # type: ignore[method-assign]
    peer = GetPeer({CTImageStorage: [ExplicitVRLittleEndian]}, abort=True)
    peer.get(harness.port, "1.2.3")
    eventually(lambda: harness.running.scp.in_flight == 0, "the C-GET handler ended")
    assert written, "no file was made for a sub-operation"
    eventually(
        lambda: not [p for p in bulk.iterdir() if p.is_file()], "sub-operation files deleted"
    )


# -- C-MOVE -----------------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start DCMTK's storescp as STORESCP, writing what it receives bit for bit to a
    directory it returns."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(port: int, *options: str) -> Path:
        received = tmp_path / "received"
        received.mkdir()
        process = subprocess.Popen(
            [_tool("storescp"), "-aet", "STORESCP", "+B", *options, "-od", str(received),
             str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        return received

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_movescu_destination_receives_the_stored_bytes(
    case: Case,
    make_pacs: Callable[..., Pacs],
    storescp: Callable[..., Path],
    decoded: Callable[[], list[str]],
) -> None:
    pacs = make_pacs()
    received = storescp(pacs.destination_port, *case.storescp)
    stored, study = pacs.stored_as_sent(_testdata(case.name))
    output = _run(
        "movescu", "-v", "-S", "-aec", "DICOM-BRIDGE", "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(pacs.bridge.port),
    )  # fmt: skip
    assert "Received Final Move Response (Success)" in output, output
    got = eventually(lambda: list(received.iterdir()), "storescp wrote the instance")
    assert len(got) == 1, output
    assert _meta(got[0]).transfer_syntax == _meta(stored).transfer_syntax
    assert _data_set(got[0]) == _as_sent(stored)
    assert not decoded()
    assert not pacs.claim_check_files()
