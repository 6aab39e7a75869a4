"""Pieces shared by ``bench/run.py``, ``bench/ingest.py`` and ``bench/profile_bridge.py``.

Server roles (each runs in a child process of its own), the SCU drivers (they run in the
benchmarking process), the test data made at run time, and ``/proc`` readings of CPU time
and peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BRIDGE_EXE = str(Path(sys.executable).with_name("dicom-bridge"))
BRIDGE_AE = "DICOM-BRIDGE"
CALLING_AE = "BENCH"
SUCCESS = 0x0000
UID_ROOT = "1.2.826.0.1.3680043.8.498"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
LARGE_SOP_CLASS = str(MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
SCU_CONTEXTS = (
    Verification,
    StorageCommitmentPushModel,
    CTImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)


# -- ports and processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def stop_processes(children: Sequence[subprocess.Popen[Any]], timeout: float = 15.0) -> None:
    """SIGTERM each child (by its own pid), then wait; SIGKILL what is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kib(pid: int, key: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status in KiB (``VmHWM``: peak RSS, ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def find_broker_pid() -> int | None:
    """The RabbitMQ node's Erlang VM (beam.smp), to report the broker's CPU time."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip().startswith("beam"):
                cmdline = (entry / "cmdline").read_bytes()
                if b"rabbit" in cmdline:
                    return int(entry.name)
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (from the parent pids in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            tree.append(current)
            todo.extend(children.get(current, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants, with that of the children they
    reaped: each process's user, system, children's user and children's system time."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[n]) for n in (11, 12, 13, 14)) / _CLOCK_TICKS
    return total


def tree_memory_kib(pid: int, key: str) -> int:
    """The largest ``Vm*`` value (:func:`memory_kib`) over ``pid`` and its descendants."""
    values = [0]
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            values.append(memory_kib(member, key))
    return max(values)


@dataclass
class Watched:
    """CPU seconds and peak RSS of a set of processes over one case."""

    pids: dict[str, int]
    cpu_start: dict[str, float] = field(default_factory=dict)
    rss_start: dict[str, int] = field(default_factory=dict)
    peak_reset: bool = True

    def start(self) -> None:
        for name, pid in self.pids.items():
            self.peak_reset = reset_peak_rss(pid) and self.peak_reset
            self.cpu_start[name] = cpu_seconds(pid)
            self.rss_start[name] = memory_kib(pid, "VmRSS")

    def stop(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            out[name] = {
                "cpu_s": round(cpu_seconds(pid) - self.cpu_start[name], 3),
                "rss_before_mb": round(self.rss_start[name] / 1024, 1),
                "peak_rss_mb": round(memory_kib(pid, "VmHWM") / 1024, 1),
            }
        return out


# -- data made at run time ----------------------------------------------------------------


def ct_small_path() -> Path:
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise RuntimeError("pydicom's CT_small.dcm test file is missing")
    return Path(str(path))


def ct_small() -> Dataset:
    return pydicom.dcmread(ct_small_path())


def make_ct_copies(directory: Path, count: int) -> list[Path]:
    """``count`` copies of CT_small.dcm with distinct SOP Instance UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    template = ct_small()
    run = uuid.uuid4().int % 10**12
    paths = []
    for n in range(count):
        uid = UID(f"{UID_ROOT}.{run}.{n + 1}")
        template.SOPInstanceUID = uid
        template.file_meta.MediaStorageSOPInstanceUID = uid
        path = directory / f"ct{n:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_large_instance(path: Path, megabytes: float) -> int:
    """A Multi-frame Grayscale Word SC image of ``megabytes`` MB of random 16-bit pixels
    (512 x 512 frames); returns the file size in bytes."""
    rows = columns = 512
    frame = rows * columns * 2
    frames = max(1, round(megabytes * 1e6 / frame))
    study = f"{UID_ROOT}.{uuid.uuid4().int % 10**12}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(LARGE_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(f"{study}.1.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.1"
    ds.PatientName = "Bench^Large"
    ds.PatientID = "BENCH-LARGE"
    ds.StudyDate = "20260101"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    ds.PixelData = os.urandom(frames * frame)
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def commitment_info(n: int = 1) -> Dataset:
    """A small Storage Commitment Event Information (one referenced instance)."""
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = f"{UID_ROOT}.2.{n}"
    ds = Dataset()
    ds.TransactionUID = f"{UID_ROOT}.3.{n}"
    ds.ReferencedSOPSequence = [item]
    return ds


def sdk_envelope(index: int, deadline: datetime) -> tuple[str, bytes, dict[str, Any]]:
    """(id, body, AMQP headers) of an N-EVENT-REPORT envelope built by
    ``bridge.protocol.envelope`` exactly as the bridge builds it, from a synthetic pynetdicom
    event."""
    from pydicom.uid import UID as _UID
    from pynetdicom.dimse_primitives import N_EVENT_REPORT
    from pynetdicom.dsutils import encode
    from pynetdicom.events import Event
    from pynetdicom.presentation import PresentationContextTuple

    from bridge.protocol.envelope import AssociationInfo, build_envelope
    from bridge.protocol.model import Service

    request = N_EVENT_REPORT()
    request.MessageID = index % 65536
    request.AffectedSOPClassUID = StorageCommitmentPushModel
    request.AffectedSOPInstanceUID = COMMITMENT_INSTANCE
    request.EventTypeID = 1
    encoded = encode(commitment_info(index), True, True)
    assert encoded is not None
    request.EventInformation = BytesIO(encoded)
    context = PresentationContextTuple(
        1, _UID(StorageCommitmentPushModel), _UID(ImplicitVRLittleEndian)
    )
    event = Event(
        cast(Association, None), evt.EVT_N_EVENT_REPORT, {"request": request, "context": context}
    )
    info = AssociationInfo(
        id="bench-association",
        calling_ae=CALLING_AE,
        called_ae=BRIDGE_AE,
        peer_address="127.0.0.1",
        peer_port=40000,
    )
    request_id = str(uuid.uuid4())
    envelope = build_envelope(
        event,
        Service.N_EVENT_REPORT,
        request_id=request_id,
        association=info,
        deadline=deadline,
    )
    return request_id, envelope.to_json(), dict(envelope.headers())


class StoreEnvelope:
    """C-STORE envelopes of one Part 10 file, built by the bridge's own code as
    ``bridge.scp.conversation`` builds them for a data set received into memory: File
    Meta Information made by ``bridge.protocol.part10.header`` in front of the data set
    bytes, ``bridge.scp.received.ReceivedDataSet``, ``build_envelope`` and the Part 10
    file inline (``part10.inline_json``), then ``to_json``.

    ``build(references=True)`` is what the bridge sends: values over
    ``received.REFERENCE_MIN`` bytes are references into the Part 10 file.
    ``build(references=False)`` is the same envelope with every value a base64 copy in
    ``dataset`` (read whole, ``defer_size`` 1 MiB), next to the Part 10 file that holds
    it again."""

    def __init__(self, path: Path) -> None:
        from pydicom.uid import UID as _UID
        from pynetdicom.events import Event
        from pynetdicom.presentation import PresentationContextTuple

        from bridge.protocol import part10
        from bridge.protocol.envelope import AssociationInfo

        data = path.read_bytes()
        self.file_bytes = len(data)
        self.meta = meta = part10.read_meta(data)
        self.syntax = _UID(meta.transfer_syntax)
        self._dataset = data[meta.dataset_offset :]
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = meta.sop_class_uid
        request.AffectedSOPInstanceUID = meta.sop_instance_uid
        request.Priority = 2
        request.DataSet = BytesIO()  # received into the Part 10 file, as the bridge does
        context = PresentationContextTuple(1, _UID(meta.sop_class_uid), self.syntax)
        self._event = Event(
            cast(Association, None), evt.EVT_C_STORE, {"request": request, "context": context}
        )
        self._info = AssociationInfo(
            id="bench-association",
            calling_ae=CALLING_AE,
            called_ae=BRIDGE_AE,
            peer_address="127.0.0.1",
            peer_port=40000,
        )
        self._deadline = utc_deadline(600)

    def envelope(self, *, references: bool) -> Any:
        """The ``bridge.protocol.envelope.Envelope`` (see the class)."""
        import dataclasses

        from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

        from bridge.protocol import part10
        from bridge.protocol.envelope import build_envelope
        from bridge.protocol.model import Service
        from bridge.scp import received

        meta = self.meta
        whole = (
            part10.header(
                sop_class_uid=meta.sop_class_uid,
                sop_instance_uid=meta.sop_instance_uid,
                transfer_syntax=meta.transfer_syntax,
                implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
                source_ae=CALLING_AE,
            )
            + self._dataset
        )
        dataset_file = received.ReceivedDataSet(
            whole,
            self.syntax,
            defer_size=received.REFERENCE_MIN if references else 1 << 20,
            references=references,
        )
        try:
            envelope = build_envelope(
                self._event,
                Service.C_STORE,
                request_id="bench-request",
                association=self._info,
                deadline=self._deadline,
                dataset_file=dataset_file,
            )
            memory = dataset_file.part10_memory()
            assert memory is not None
            return dataclasses.replace(
                envelope, part10=part10.inline_json(memory, dataset_file.dataset_offset)
            )
        finally:
            dataset_file.discard()

    def build(self, *, references: bool) -> bytes:
        """The message body (see the class)."""
        body: bytes = self.envelope(references=references).to_json()
        return body


# -- server roles (child processes) -------------------------------------------------------


def run_stock_scp(
    port: int,
    *,
    tuned: bool,
    write_dir: Path | None,
    bridge_contexts: bool = False,
    storage_contexts: bool = False,
    keep_bytes: bool = False,
) -> None:
    """A pynetdicom SCP as its documentation shows it: handlers answer in-process.
    ``tuned`` adds the bridge's socket tuning; ``write_dir`` makes C-STORE save the
    instance there (the docs' ``ds.save_as``); ``bridge_contexts`` supports what the
    bridge supports (251 SOP classes, every transfer syntax for storage) instead of the
    four the SCU proposes (for ``profile_bridge.py --case association-setup``);
    ``storage_contexts`` supports pynetdicom's ``StoragePresentationContexts`` and
    Verification instead (for ``ingest.py``, whose peer is DCMTK's storescu).
    ``keep_bytes`` writes the bytes received instead of decoding and re-encoding them:
    pynetdicom receives each data set into a file (``STORE_RECV_CHUNKED_DATASET``, File
    Meta Information first) and the handler moves that file into ``write_dir``, named by
    the SOP Instance UID (the temporary directory should be on the same filesystem)."""
    from bridge.scp import netopt

    if keep_bytes:
        _config.STORE_RECV_CHUNKED_DATASET = True

    def on_echo(event: evt.Event) -> int:
        return SUCCESS

    def on_event_report(event: evt.Event) -> tuple[int, Dataset | None]:
        return SUCCESS, None

    def on_store(event: evt.Event) -> int:
        if write_dir is not None and keep_bytes:
            uid = cast(C_STORE, event.request).AffectedSOPInstanceUID
            # pynetdicom closes the file after the handler and ignores that it is gone.
            shutil.move(event.dataset_path, write_dir / f"{uid}.dcm")
        elif write_dir is not None:
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(write_dir / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return SUCCESS

    def on_open(event: evt.Event) -> None:
        netopt.tune_association(event.assoc)

    ae = AE("TUNED" if tuned else "STOCK")
    ae.maximum_associations = 64  # pynetdicom's default is 10; the bridge's is 64
    if storage_contexts:
        from pynetdicom import StoragePresentationContexts

        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
    elif bridge_contexts:
        from pydicom.uid import AllTransferSyntaxes

        from bridge.protocol import sopclasses
        from bridge.scp.server import UNCOMPRESSED

        for uid in sopclasses.resolve(sopclasses.DEFAULT_SELECTION):
            syntaxes = AllTransferSyntaxes if sopclasses.is_storage(uid) else UNCOMPRESSED
            ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
    else:
        for uid in SCU_CONTEXTS:
            ae.add_supported_context(uid)
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_N_EVENT_REPORT, on_event_report),
        (evt.EVT_C_STORE, on_store),
    ]
    if tuned:
        handlers.append((evt.EVT_CONN_OPEN, on_open))
    ae.start_server(("127.0.0.1", port), evt_handlers=handlers)


def run_thin_consumer(exchange: str, queue: str, queue_type: str) -> None:
    """An SDK consumer answering Success to C-ECHO, C-STORE (without writing anything)
    and N-EVENT-REPORT."""
    from bridge.protocol.model import Service
    from bridge.sdk.consumer import Consumer, Request

    app = Consumer(
        AMQP_URL,
        exchange,
        queue,
        queue_type="classic" if queue_type == "classic" else "quorum",
    )

    def answer(request: Request) -> int:
        return SUCCESS

    for service in (Service.C_ECHO, Service.C_STORE, Service.N_EVENT_REPORT):
        app.add(service, answer)
    print("consumer ready", flush=True)
    app.run_forever()


def bridge_command(port: int, exchange: str, bulk_dir: Path) -> list[str]:
    return [
        BRIDGE_EXE,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--exchange",
        exchange,
        "--bulk-dir",
        str(bulk_dir),
        "--drain-timeout",
        "2",
    ]


def quiet_env() -> dict[str, str]:
    return {**os.environ, "BRIDGE_LOG_LEVEL": "WARNING"}


def bridge_env(scratch: Path) -> dict[str, str]:
    """Environment of a bench bridge: warnings only; caches and the spool in ``scratch``;
    the commander off (idle here, and its default queue ``dicom-bridge.commands`` is
    shared by every bridge on the broker, so a bench bridge could take others' commands).
    Settings that a bridge version does not have are ignored."""
    return {
        **quiet_env(),
        "XDG_CACHE_HOME": str(scratch / "cache"),
        "BRIDGE_SPOOL_DIR": str(scratch / "spool"),
        "BRIDGE_COMMANDS": "false",
    }


async def _delete(exchanges: Sequence[str], queues: Sequence[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for name in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)


def delete_broker_objects(exchanges: Sequence[str], queues: Sequence[str]) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(_delete(exchanges, queues))


# -- SCU drivers (in the benchmarking process) --------------------------------------------


@dataclass
class Measurement:
    """One run against one server: per-request latencies (s) and the wall time."""

    latencies: list[float]
    elapsed: float
    requests: int
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


def scu_ae() -> AE:
    ae = AE(CALLING_AE)
    ae.maximum_associations = 64
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    for uid in SCU_CONTEXTS:
        if uid == LARGE_SOP_CLASS:
            # The large instance is sent from its file as it is: Explicit VR only.
            ae.add_requested_context(uid, ExplicitVRLittleEndian)
        else:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


class _Checkpoint(threading.Event):
    """pynetdicom's reactor checkpoint, made safe for an SCU under thread contention.

    ``send_*`` clears the checkpoint and waits for the reactor's ``_is_paused``; the
    reactor sets ``_is_paused = True``, passes ``wait()`` and only then sets it False. A
    sender that clears in between sees the stale True, sends, and the reactor takes the
    response off the queue ("Received unexpected N-EVENT-REPORT service message"); the
    request then hangs until the DIMSE timeout. With 16 associations in one process
    that happens within seconds. Here the reactor leaves ``wait()`` only under a lock
    that ``clear()`` also takes, and marks itself unpaused before releasing it.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc
        self._lock = threading.Lock()
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        while True:
            if not super().wait(timeout):
                return False
            with self._lock:
                if self.is_set():
                    self._assoc._is_paused = False
                    return True

    def clear(self) -> None:
        with self._lock:
            super().clear()


@contextlib.contextmanager
def associated(ae: AE, port: int, called: str) -> Iterator[Association]:
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"association to {called} on {port} not established")
    assoc._reactor_checkpoint = _Checkpoint(assoc)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_one(assoc: Association, kind: str, payload: Any, n: int) -> int:
    """Send one request of ``kind``; returns the response status (-1: none)."""
    if kind == "c-echo":
        status = assoc.send_c_echo()
    elif kind == "c-store":
        status = assoc.send_c_store(payload)
    elif kind == "n-event-report":
        status, _ = assoc.send_n_event_report(
            payload, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE
        )
    else:
        raise ValueError(kind)
    return int(status.Status) if "Status" in status else -1


def drive(
    port: int, called: str, kind: str, count: int, *, associations: int = 1, payload: Any = None
) -> Measurement:
    """``associations`` concurrent associations, each sending ``count`` requests of
    ``kind`` one after the other; latencies per request, rate in aggregate."""
    if payload is None and kind == "n-event-report":
        payload = commitment_info()
    if payload is None and kind == "c-store":
        payload = ct_small()
    ae = scu_ae()
    barrier = threading.Barrier(associations + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    finished: list[float] = []

    def worker() -> None:
        mine: list[float] = []
        try:
            with associated(ae, port, called) as assoc:
                barrier.wait(60)
                for n in range(count):
                    t0 = time.perf_counter()
                    status = send_one(assoc, kind, payload, n)
                    mine.append(time.perf_counter() - t0)
                    if status != SUCCESS:
                        with lock:
                            errors.append(f"status 0x{status & 0xFFFF:04X}")
                end = time.perf_counter()
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
            return
        with lock:
            latencies.extend(mine)
            finished.append(end)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(associations)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(60)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    ae.shutdown()
    elapsed = (max(finished) if finished else time.perf_counter()) - started
    return Measurement(latencies, elapsed, len(latencies), errors)


def drive_new_associations(port: int, called: str, count: int) -> Measurement:
    """``count`` times: associate, one C-ECHO, release (a modality that opens an
    association per request); latency = the whole exchange."""
    ae = scu_ae()
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            try:
                with associated(ae, port, called) as assoc:
                    status = send_one(assoc, "c-echo", None, 0)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
            if status != SUCCESS:
                errors.append(f"status 0x{status & 0xFFFF:04X}")
    finally:
        ae.shutdown()
    return Measurement(latencies, time.perf_counter() - started, len(latencies), errors)


def client_cpu_seconds() -> float:
    """CPU time of this process and its reaped children (storescu)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def drive_large(port: int, called: str, path: Path) -> Measurement:
    """One C-STORE of the large instance, streamed from its file by the SCU."""
    ae = scu_ae()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the SCU does not hold 100 MB twice
    errors: list[str] = []
    try:
        with associated(ae, port, called) as assoc:
            t0 = time.perf_counter()
            status = send_one(assoc, "c-store", path, 0)
            elapsed = time.perf_counter() - t0
            if status != SUCCESS:
                errors.append(f"status 0x{status & 0xFFFF:04X}")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        ae.shutdown()
    return Measurement([elapsed], elapsed, 1, errors)


def dcmtk_storescu() -> str:
    """DCMTK's storescu (not pynetdicom's app of the same name in the virtualenv)."""
    explicit = os.environ.get("BENCH_STORESCU")
    if explicit:
        return explicit
    venv_bin = Path(sys.executable).parent.resolve()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory and Path(directory).resolve() != venv_bin:
            found = shutil.which("storescu", path=directory)
            if found:
                return found
    raise RuntimeError("DCMTK's storescu is not installed (apt-get install dcmtk)")


def drive_storescu(port: int, called: str, files: Sequence[Path]) -> Measurement:
    """DCMTK storescu sending ``files`` on one association; latency = total / count."""
    command = [dcmtk_storescu(), "-aet", CALLING_AE, "-aec", called, "127.0.0.1", str(port)]
    t0 = time.perf_counter()
    done = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    errors = []
    output = done.stdout + done.stderr
    if done.returncode != 0 or "E: " in output or "Failed" in output:
        errors.append(f"storescu exit {done.returncode}: {output.strip()[:300]}")
    per = elapsed / len(files)
    return Measurement([per] * len(files), elapsed, len(files), errors)


def wait_success(port: int, called: str, timeout: float = 60.0) -> None:
    """Until a C-ECHO and an N-EVENT-REPORT succeed (the server listens, the consumer's
    queue is bound). Not a bare TCP connect: pynetdicom counts a connection that never
    sends A-ASSOCIATE-RQ as an open association until the ACSE timeout, and the bridge's
    drain on SIGTERM waits for it."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            probe = drive(port, called, "n-event-report", 1)
            echo = drive(port, called, "c-echo", 1)
        except Exception as exc:
            last = str(exc)
        else:
            if not probe.errors and not echo.errors:
                return
            last = "; ".join(probe.errors + echo.errors)
        time.sleep(0.3)
    raise RuntimeError(f"{called} on {port} does not answer Success: {last}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank on sorted values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def utc_deadline(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def run_timing_consumer(exchange: str, queue: str, log_path: Path, queue_type: str) -> None:
    """A thin SDK consumer that also writes, per request, one JSON line of wall-clock
    times: the envelope's ``timestamp`` (pynetdicom's event in the bridge), arrival at
    the SDK's message callback, handler entry and handler exit."""
    import json

    from aio_pika.abc import AbstractIncomingMessage

    from bridge.protocol.model import Service
    from bridge.sdk.consumer import Consumer, Request

    arrivals: dict[str, float] = {}
    lock = threading.Lock()
    out = log_path.open("a", buffering=1)

    class TimedConsumer(Consumer):
        async def _on_message(self, message: AbstractIncomingMessage) -> None:
            arrivals[message.correlation_id or ""] = time.time()
            await super()._on_message(message)

    def answer(request: Request) -> int:
        entered = time.time()
        stamp = datetime.fromisoformat(request.envelope["timestamp"].replace("Z", "+00:00"))
        record = {
            "message_id": request.command.get("message_id"),
            "service": request.service.value,
            "event": stamp.timestamp(),
            "arrived": arrivals.pop(request.id, 0.0),
            "entered": entered,
            "left": time.time(),
        }
        with lock:
            out.write(json.dumps(record) + "\n")
        return SUCCESS

    app = TimedConsumer(
        AMQP_URL, exchange, queue, queue_type="classic" if queue_type == "classic" else "quorum"
    )
    for service in (Service.C_ECHO, Service.C_STORE, Service.N_EVENT_REPORT):
        app.add(service, answer)
    print("consumer ready", flush=True)
    app.run_forever()


def timed_requests(port: int, called: str, count: int) -> list[tuple[int, float, float]]:
    """(message ID, send time, response time) of ``count`` N-EVENT-REPORTs, wall clock."""
    ae = scu_ae()
    info = commitment_info()
    out: list[tuple[int, float, float]] = []
    try:
        with associated(ae, port, called) as assoc:
            for n in range(1, count + 1):
                sent = time.time()
                assoc.send_n_event_report(
                    info, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE, msg_id=n
                )
                out.append((n, sent, time.time()))
    finally:
        ae.shutdown()
    return out


# -- the machine --------------------------------------------------------------------------


def machine(broker_version: str | None) -> dict[str, Any]:
    """What the numbers were measured on: CPU, kernel, Python, RabbitMQ, the revision."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break

    def git(*command: str) -> str:
        done = subprocess.run(
            ["git", *command],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "bridge_revision": git("rev-parse", "--short", "HEAD"),
        "uncommitted_files": len(git("status", "--porcelain").splitlines()),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": broker_version,
        "storescu": dcmtk_storescu(),
    }


async def _broker_version() -> str | None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        transport = connection.transport
        server = transport.connection.server_properties if transport is not None else {}
        version = server.get("version") if isinstance(server, dict) else None
        return str(version) if version is not None else None


def broker_version() -> str | None:
    """RabbitMQ's version, as the broker announces it on connecting (None: unreachable)."""
    try:
        return asyncio.run(_broker_version())
    except Exception:
        return None


# -- the broker alone ---------------------------------------------------------------------


async def echo_server(queue: str, queue_type: str) -> None:
    """A bare aio-pika consumer that answers every message at once (no SDK): declares
    ``queue`` (durable, of ``queue_type``), says ``echo ready`` on stdout, and runs until
    it is stopped."""
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=32)
    replies = await connection.channel(publisher_confirms=True)
    arguments: dict[str, Any] = {"x-queue-type": queue_type}
    source = await channel.declare_queue(queue, durable=True, arguments=arguments)

    async def answer(message: AbstractIncomingMessage) -> None:
        reply = aio_pika.Message(b'{"status":0}', correlation_id=message.correlation_id)
        await replies.default_exchange.publish(reply, message.reply_to or "")
        await message.ack()

    await source.consume(answer)
    print("echo ready", flush=True)
    await asyncio.Event().wait()


def bridge_message(
    body: bytes,
    request_id: str,
    reply_to: str,
    kind: str,
    headers: dict[str, Any],
    *,
    expiration: float,
) -> Any:
    """An aio-pika message with the properties the bridge gives a request."""
    import aio_pika

    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        correlation_id=request_id,
        message_id=request_id,
        reply_to=reply_to,
        expiration=expiration,
        timestamp=datetime.now(UTC),
        type=kind,
        app_id="dicom-bridge",
        headers=headers,
    )


class RoundTrips:
    """Request/reply round trips as the bridge makes them (``bridge.transport.amqp``): a
    confirmed, mandatory publish with the bridge's message properties (not persistent,
    an expiration, the envelope's headers) on one connection, the reply read from an
    exclusive, server-named reply queue on another. Use ``async with``; one request at a
    time through :meth:`once`."""

    def __init__(self, exchange: str = "") -> None:
        self._exchange = exchange
        self._connections: list[Any] = []
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._target: Any = None
        self._reply_to = ""

    async def __aenter__(self) -> RoundTrips:
        import aio_pika
        from aio_pika.abc import AbstractIncomingMessage

        publishing = await aio_pika.connect(AMQP_URL)
        self._connections.append(publishing)
        consuming = await aio_pika.connect(AMQP_URL)
        self._connections.append(consuming)
        channel = await publishing.channel(publisher_confirms=True)
        exchange = self._exchange
        self._target = (
            await channel.get_exchange(exchange) if exchange else channel.default_exchange
        )
        reply_channel = await consuming.channel()
        replies = await reply_channel.declare_queue("", exclusive=True, auto_delete=True)
        self._reply_to = replies.name

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = self._waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(None)

        await replies.consume(on_reply, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connection in self._connections:
            with contextlib.suppress(Exception):
                await connection.close()
        self._connections.clear()

    async def once(
        self,
        route: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        kind: str,
        request_id: str | None = None,
        timeout: float = 10.0,
    ) -> float:
        """One round trip of ``body`` to ``route``: seconds from the publish to the reply."""

        request_id = request_id or str(uuid.uuid4())
        message = bridge_message(body, request_id, self._reply_to, kind, headers, expiration=60)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        started = time.perf_counter()
        try:
            await self._target.publish(message, route, mandatory=True, timeout=timeout)
            await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)
        return time.perf_counter() - started


# -- the consumer SDK alone ---------------------------------------------------------------


async def _sdk_throughput(
    *,
    count: int,
    queue_type: str,
    run_py: Path,
    exchange: str,
    queue: str,
    during: Callable[[int], None] | None,
) -> dict[str, Any]:
    import json

    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    deadline = utc_deadline(900)
    connection = await aio_pika.connect(AMQP_URL)
    transport = connection.transport
    server = transport.connection.server_properties if transport is not None else {}
    version = server.get("version") if isinstance(server, dict) else None
    async with connection:
        channel = await connection.channel()
        # Declared as the SDK declares it, so the consumer finds it full.
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": queue_type})
        replies = await channel.declare_queue("", exclusive=True, auto_delete=True)
        publisher = await connection.channel(publisher_confirms=True)
        pending: list[Any] = []
        for n in range(count):
            request_id, body, headers = sdk_envelope(n + 1, deadline)
            message = bridge_message(
                body, request_id, replies.name, "n-event-report", headers, expiration=900
            )
            pending.append(publisher.default_exchange.publish(message, queue))
            if len(pending) == 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

        arrivals: list[float] = []
        statuses: dict[int, int] = {}
        done = asyncio.Event()
        first_cpu: list[float] = []
        consumer: list[subprocess.Popen[bytes]] = []

        broker = find_broker_pid()
        broker_cpu: list[float] = []

        async def on_reply(message: AbstractIncomingMessage) -> None:
            if not arrivals and consumer:
                first_cpu.append(cpu_seconds(consumer[0].pid))
                if broker is not None:
                    broker_cpu.append(cpu_seconds(broker))
                reset_peak_rss(consumer[0].pid)
                if during is not None:
                    threading.Thread(target=during, args=(consumer[0].pid,), daemon=True).start()
            arrivals.append(time.perf_counter())
            status = int(json.loads(message.body).get("status", -1))
            statuses[status] = statuses.get(status, 0) + 1
            if len(arrivals) >= count:
                done.set()

        await replies.consume(on_reply, no_ack=True)
        command = [sys.executable, str(run_py), "--role", "consumer", "--exchange", exchange]
        command += ["--queue", queue, "--queue-type", queue_type]
        consumer.append(
            await asyncio.to_thread(
                subprocess.Popen, command, env=quiet_env(), stdout=subprocess.DEVNULL
            )
        )
        pid = consumer[0].pid
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=max(60.0, count / 50))
            last_cpu, peak = cpu_seconds(pid), memory_kib(pid, "VmHWM")
            if broker is not None and broker_cpu:
                broker_cpu.append(cpu_seconds(broker) - broker_cpu[0])
        finally:
            stop_processes(consumer)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    cpu = last_cpu - (first_cpu[0] if first_cpu else 0.0)
    return {
        "unit": "envelopes/s",
        "runs": 1,
        "envelopes": count,
        "queue_type": queue_type,
        "broker_version": version,
        "broker_cpu_s": round(broker_cpu[-1], 3) if len(broker_cpu) > 1 else None,
        "servers": {
            "sdk": {
                "rate": round(rate, 1),
                "requests": len(arrivals),
                "processes": {
                    "consumer": {"cpu_s": round(cpu, 3), "peak_rss_mb": round(peak / 1024, 1)}
                },
                "cpu_ms_per_request": round(cpu * 1000 / max(1, len(arrivals) - 1), 3),
                "errors": count - statuses.get(SUCCESS, 0),
            }
        },
    }


def sdk_throughput(
    count: int, queue_type: str, run_py: Path, during: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Queue ``count`` N-EVENT-REPORT envelopes built by ``bridge.protocol.envelope``, then start
    one SDK consumer process (``run.py --role consumer``) on that queue and count its replies
    per second, from the first reply to the last. ``during(pid)`` runs in a thread from
    the first reply on (a profiler)."""
    exchange = f"bench-sdk-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-q"
    try:
        return asyncio.run(
            _sdk_throughput(
                count=count,
                queue_type=queue_type,
                run_py=run_py,
                exchange=exchange,
                queue=queue,
                during=during,
            )
        )
    finally:
        delete_broker_objects([exchange], [queue])
