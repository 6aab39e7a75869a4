"""Commands end to end: CommandClient -> RabbitMQ -> Commander -> real peers (DCMTK
storescp, pynetdicom SCPs) -> replies. Statuses, status elements and response datasets
must arrive exactly; associations are pooled; every fault gets a clear error reply, is
bounded in time and attempts, and commands that can never succeed are dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicFilmSession,
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from bridge.config import AETable, Destination
from bridge.protocol import command, part10
from bridge.protocol.dicomjson import dataset_to_json
from bridge.protocol.model import Service
from bridge.scu.commander import Commander, CommanderSettings
from bridge.scu.perform import TEMPORARY_PREFIX
from bridge.sdk.client import CommandClient, CommandFailed, CommandResult
from bridge.sdk.consumer import Request, Response
from bridge.transport.bulkstore import DirectoryStore
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import (
    AMQP_URL,
    LoopThread,
    association,
    free_port,
    make_dataset,
    stopping,
)
from tests.schemas import validator
from tests.waiting import eventually

COMMAND_REPLY = validator("command-reply.schema.json")
COMMAND = validator("command.schema.json")
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
FIND = StudyRootQueryRetrieveInformationModelFind
N_CONTEXTS = [
    StorageCommitmentPushModel,
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepRetrieve,
    BasicFilmSession,
    FIND,
    Verification,
]


def _file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


# -- peers --------------------------------------------------------------------------------


@dataclass
class PeerSCP:
    """A pynetdicom SCP on a free port that records what it sees."""

    handlers: dict[evt.InterventionEvent, Callable[[Event], Any]]
    contexts: list[str] = field(default_factory=lambda: list(N_CONTEXTS))
    ae_title: str = "PEER"
    require_calling: list[str] | None = None
    established: int = 0
    released: int = 0
    aborted: int = 0
    active: int = 0
    max_active: int = 0
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ae = AE(ae_title=self.ae_title)
        self.ae.dimse_timeout = 30
        self.ae.network_timeout = 30
        for uid in self.contexts:
            self.ae.add_supported_context(uid, scu_role=True, scp_role=True)
        if self.require_calling:
            self.ae.require_calling_aet = self.require_calling
        handlers: list[Any] = [
            (event, self._wrap(handler)) for event, handler in self.handlers.items()
        ]
        handlers += [
            (evt.EVT_ESTABLISHED, self._count("established")),
            (evt.EVT_RELEASED, self._count("released")),
            (evt.EVT_ABORTED, self._count("aborted")),
        ]
        server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        assert server is not None
        self.port = int(server.server_address[1])

    def _count(self, name: str) -> Callable[[Event], None]:
        def count(event: Event) -> None:
            with self.lock:
                setattr(self, name, getattr(self, name) + 1)

        return count

    def _wrap(self, handler: Callable[[Event], Any]) -> Callable[[Event], Any]:
        def wrapped(event: Event) -> Any:
            with self.lock:
                self.events.append(event)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                return handler(event)
            finally:
                with self.lock:
                    self.active -= 1

        return wrapped

    def stop(self) -> None:
        self.ae.shutdown()


@contextlib.contextmanager
def storescp(out: Path, *extra: str) -> Iterator[int]:
    """DCMTK's storescp on a free port, writing what it receives to ``out``."""
    binary = shutil.which("storescp")
    if binary is None:
        raise AssertionError("storescp not installed: DCMTK is required (apt install dcmtk)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-aet", "STORESCP", "-od", str(out), *extra, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        assert process.poll() is None, "storescp exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    try:
        eventually(listening, "storescp listening", timeout=10, interval=0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


# -- commander and client -----------------------------------------------------------------


class CommanderHarness:
    """A Commander in a loop thread, on its own queues."""

    def __init__(
        self,
        exchange: str,
        ae_table: dict[str, int],
        store: DirectoryStore | None,
        **overrides: Any,
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            "amqp_url": AMQP_URL,
            "exchange": exchange,
            "commands_queue": f"test-commands-{suffix}",
            "command_dead_letter_exchange": f"test-dead-{suffix}",
            "command_dead_letter_queue": f"test-dead-{suffix}",
            "command_idle_timeout": 5.0,
            "command_retry_delay": 0.05,
            "command_retry_max_delay": 0.2,
            "command_dimse_timeout": 10.0,
            "command_acse_timeout": 5.0,
            "command_drain_timeout": 2.0,
        }
        values.update(overrides)
        self.settings = CommanderSettings(**values)
        table = AETable({t: Destination(host="127.0.0.1", port=p) for t, p in ae_table.items()})
        self.loop = LoopThread("commander-loop")
        self.commander = Commander(self.settings, ae_table=table, store=store)
        self.loop.run(self.commander.start())
        assert self.loop.run(self.commander.wait_ready(10)), "commander did not connect"

    @property
    def stats(self) -> Any:
        return self.commander.stats

    @property
    def pool(self) -> Any:
        return self.commander.pool

    def dead_letters(self, expected: int = 1, timeout: float = 5.0) -> list[Any]:
        """Messages in the dead-letter queue (waits until ``expected`` are there)."""

        async def fetch() -> list[Any]:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.get_queue(self.settings.command_dead_letter_queue)
                found: list[Any] = []
                deadline = time.monotonic() + timeout
                while len(found) < expected and time.monotonic() < deadline:
                    message = await queue.get(fail=False, no_ack=True)
                    if message is None:
                        await asyncio.sleep(0.05)
                        continue
                    found.append(message)
                return found

        return self.loop.run(fetch())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.commander.close(), timeout=30)

        async def delete() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                s = self.settings
                await channel.queue_delete(s.commands_queue)
                await channel.queue_delete(s.command_dead_letter_queue)
                await channel.exchange_delete(s.command_dead_letter_exchange)

        with contextlib.suppress(Exception):
            self.loop.run(delete())
        self.loop.stop()


CommanderFactory = Callable[..., CommanderHarness]


@pytest.fixture
def bulk(tmp_path: Path) -> DirectoryStore:
    store = DirectoryStore(tmp_path / "bulk")
    store.ensure()
    return store


@pytest.fixture
def make_commander(exchange: str, bulk: DirectoryStore) -> Iterator[CommanderFactory]:
    def make(ae_table: dict[str, int] | None = None, **overrides: Any) -> CommanderHarness:
        return CommanderHarness(exchange, ae_table or {}, bulk, **overrides)

    yield from stopping(make)


@pytest.fixture
def client(exchange: str) -> Iterator[CommandClient]:
    with CommandClient(AMQP_URL, exchange, timeout=15) as command_client:
        yield command_client


@pytest.fixture
def make_peer() -> Iterator[Callable[..., PeerSCP]]:
    peers: list[PeerSCP] = []

    def make(handlers: dict[evt.InterventionEvent, Callable[[Event], Any]], **kw: Any) -> PeerSCP:
        peer = PeerSCP(handlers, **kw)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


def _req(event: Event) -> Any:
    """The request primitive (pynetdicom types it as a union of all of them)."""
    return event.request


def _roles(event: Event) -> tuple[bool, bool]:
    """(as SCU, as SCP) of the SCP's own side of the context the request came on."""
    (context,) = [
        cx for cx in event.assoc.accepted_contexts if cx.context_id == event.context.context_id
    ]
    return bool(context.as_scu), bool(context.as_scp)


def _set_then(flag: threading.Event, answer: Any) -> Any:
    flag.set()
    return answer


def _check_reply(result: CommandResult) -> None:
    COMMAND_REPLY.validate(result.document)


# -- C-ECHO and C-STORE against DCMTK -------------------------------------------------------


@pytest.mark.process
def test_echo_and_store_to_dcmtk_storescp(
    make_commander: CommanderFactory, client: CommandClient, tmp_path: Path
) -> None:
    out = tmp_path / "received"
    out.mkdir()
    with storescp(out) as port:
        commander = make_commander({"STORESCP": port})
        echo = client.send_echo_sync("STORESCP")
        assert (echo.status, echo.category, echo.final) == (0, "success", True)
        _check_reply(echo)
        names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]
        for name in [*names, *names]:
            result = client.send_store_sync("STORESCP", dcmread(_file(name)))
            assert result.status == 0, result.document
            _check_reply(result)
    # A new SOP class opens a new association (storescp serves one at a time, so the idle
    # one is released first), proposing every class used so far: the second round reuses.
    assert (commander.pool.stats.opened, commander.pool.stats.reused) == (4, 3)
    received = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in out.iterdir())}
    assert len(received) == len(names)
    for name in names:
        original = dcmread(_file(name))
        original.pop(0xFFFCFFFC, None)
        assert dataset_to_json(received[original.SOPInstanceUID]) == dataset_to_json(original)


@pytest.mark.process
def test_store_by_claim_check_and_compressed(
    exchange: str, make_commander: CommanderFactory, bulk: DirectoryStore, tmp_path: Path
) -> None:
    """Pixel data above the threshold travels as a BulkDataURI; the bridge reads the file,
    sends the instance in its own (compressed) transfer syntax, then deletes the file."""
    out = tmp_path / "received"
    out.mkdir()
    with (
        CommandClient(
            AMQP_URL, exchange, timeout=15, bulk_dir=bulk.root, bulk_threshold=1024
        ) as client,
        storescp(out, "+xa") as port,
    ):
        make_commander({"STORESCP": port})
        originals = [dcmread(_file(name)) for name in ("CT_small.dcm", "JPEG2000.dcm")]
        document = client.prepare(command.store("STORESCP", originals[0]))
        assert "BulkDataURI" in document["dataset"]["7FE00010"]
        COMMAND.validate(document)
        assert client.send_sync(document).status == 0
        result = client.send_store_sync("STORESCP", originals[1])
        assert result.status == 0, result.document
    assert not list(bulk.root.iterdir()), "claim-check files left behind"
    received = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in out.iterdir())}
    for original in originals:
        copy = received[original.SOPInstanceUID]
        assert copy.PixelData == original.PixelData
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


# -- C-STORE of Part 10 files: the data set as it is ---------------------------------------

PART10_FILES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, encapsulated
    "JPEG2000.dcm",
]
RE_ENCODED = "the data set is decoded and re-encoded"


def _data_set(path: Path) -> tuple[str, bytes]:
    """A Part 10 file's transfer syntax and the bytes of its data set (after the File
    Meta Information)."""
    data = path.read_bytes()
    meta = part10.read_meta(data)
    return meta.transfer_syntax, data[meta.dataset_offset :]


def _as_sent(path: Path) -> tuple[str, bytes]:
    """:func:`_data_set` as the bridge sends it: a deflated data set of odd length (as
    image_dfl.dcm's) with the trailing NULL byte of PS3.5 A.5, which peers require."""
    syntax, data = _data_set(path)
    return syntax, data + b"\0" * (len(data) % 2)


def _received(out: Path) -> Path:
    """The one file storescp wrote, moved out of its directory (for the next one)."""
    (path,) = out.iterdir()
    return path.rename(out.parent / f"{path.name}.{uuid.uuid4().hex}")


def _temporary_files() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*"))


@pytest.mark.process
@pytest.mark.parametrize("name", PART10_FILES)
def test_store_part10_sends_the_data_set_bytes_as_they_are(
    make_commander: CommanderFactory,
    client: CommandClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A Part 10 file given by path or as bytes reaches DCMTK's storescp (bit-preserving:
    it writes what it received) with the very data set bytes of the source, in the
    source's transfer syntax, proposed in a context of its own."""
    out = tmp_path / "received"
    out.mkdir()
    source = _file(name)
    with (
        caplog.at_level(logging.DEBUG, logger="bridge.scu.perform"),
        storescp(out, "+xa", "+B") as port,
    ):
        make_commander({"STORESCP": port})
        by_path = client.send_store_sync("STORESCP", str(source))
        assert (by_path.status, by_path.category) == (0, "success"), by_path.document
        _check_reply(by_path)
        assert _data_set(_received(out)) == _as_sent(source)
        by_bytes = client.send_store_sync("STORESCP", source.read_bytes())
        assert by_bytes.status == 0, by_bytes.document
        assert _data_set(_received(out)) == _as_sent(source)
    assert RE_ENCODED not in caplog.text
    assert not _temporary_files()


@pytest.mark.process
@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm"])
def test_store_part10_is_re_encoded_when_the_peer_wants_another_syntax(
    make_commander: CommanderFactory,
    client: CommandClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A peer that accepts Implicit VR Little Endian only gets an Explicit VR (or
    deflated) file decoded and re-encoded: the same values. A big endian file cannot be
    converted: no context for it, refused."""
    out = tmp_path / "received"
    out.mkdir()
    source = _file(name)
    with caplog.at_level(logging.DEBUG, logger="bridge.scu.perform"), storescp(out, "+xi") as port:
        commander = make_commander({"STORESCP": port})
        result = client.send_store_sync("STORESCP", source)
        assert (result.status, result.category) == (0, "success"), result.document
        received = _received(out)
        # The association that was offered the file's syntax on its own and refused it
        # serves the next file of that syntax.
        assert client.send_store_sync("STORESCP", source.read_bytes()).status == 0
        assert (commander.pool.stats.opened, commander.pool.stats.reused) == (1, 1)
        big_endian = _failure(
            lambda: client.send_store_sync("STORESCP", _file("MR_small_bigendian.dcm"))
        )
    assert RE_ENCODED in caplog.text
    assert _data_set(received)[0] == "1.2.840.10008.1.2"
    original, copy = dcmread(source), dcmread(received)
    original.pop(0xFFFCFFFC, None)
    assert copy.PixelData == original.PixelData  # its VR is OW or OB, implicitly
    del copy.PixelData, original.PixelData
    assert dataset_to_json(copy) == dataset_to_json(original)
    assert big_endian.reason == "refused"
    assert "accepted no presentation context" in big_endian.message
    assert not _temporary_files()


def _large_file(path: Path, size: int) -> None:
    """An Explicit VR Little Endian CT of ``size`` bytes of pixel data or so."""
    ds = dcmread(_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 2048, size // 4096
    ds.PixelData = bytes(range(256)) * (ds.Rows * ds.Columns * 2 // 256)
    dcmwrite(path, ds, enforce_file_format=True)


@pytest.mark.process
def test_store_large_part10_goes_through_the_claim_check_directory(
    exchange: str, make_commander: CommanderFactory, bulk: DirectoryStore, tmp_path: Path
) -> None:
    """A 20 MB file is linked into the claim-check directory, never read whole by the
    client; the bridge sends it from there as it is and deletes it once answered."""
    source = tmp_path / "large.dcm"
    _large_file(source, 20 << 20)
    size = source.stat().st_size
    assert size > 20 << 20
    out = tmp_path / "received"
    out.mkdir()
    with (
        CommandClient(AMQP_URL, exchange, timeout=30, bulk_dir=bulk.root) as client,
        storescp(out, "+B") as port,
    ):
        make_commander({"STORESCP": port})
        # What the client does with the file; the send is the bridge's, in this process
        # too (pynetdicom queues the P-DATA it reads from the file for its DUL thread).
        tracemalloc.start()
        try:
            document = client.prepare(command.store("STORESCP", source))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"the client held {peak} bytes for a {size}-byte file"
        assert len(orjson.dumps(document)) < 1024
        assert document["part10"]["length"] == size
        claimed = bulk.local_path(document["part10"]["BulkDataURI"])
        assert claimed.stat().st_ino == source.stat().st_ino  # linked, not copied
        result = client.send_sync(document)
        assert result.status == 0, result.document
        eventually(lambda: not claimed.exists(), "the claim-check file deleted")
    assert source.exists()
    assert not list(bulk.root.iterdir())
    assert _data_set(_received(out)) == _data_set(source)


# -- DIMSE-N services and C-FIND against pynetdicom SCPs -----------------------------------

COMMITMENT = make_dataset(
    TransactionUID="1.2.826.0.1.3680043.8.498.3",
    ReferencedSOPSequence=[
        make_dataset(
            ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID=INSTANCE
        )
    ],
)
CREATED = "1.2.826.0.1.3680043.8.498.77"


def _n_handlers() -> dict[evt.InterventionEvent, Callable[[Event], Any]]:
    def event_report(event: Event) -> Any:
        return make_dataset(Status=0x0000), make_dataset(RetrieveAETitle="PEER")

    def action(event: Event) -> Any:
        return make_dataset(Status=0x0000), make_dataset(
            TransactionUID=event.action_information.TransactionUID
        )

    def create(event: Event) -> Any:
        attributes = event.attribute_list
        attributes.AffectedSOPInstanceUID = CREATED  # pynetdicom moves it to the response
        return make_dataset(Status=0x0000), attributes

    def set_(event: Event) -> Any:
        return make_dataset(Status=0x0000), event.modification_list

    def get(event: Event) -> Any:
        return (
            make_dataset(Status=0x0107, AttributeIdentifierList=[0x00400252]),
            make_dataset(Modality="CT"),
        )

    def delete(event: Event) -> Any:
        return make_dataset(Status=0x0112, ErrorComment="no such film session", ErrorID=42)

    return {
        evt.EVT_N_EVENT_REPORT: event_report,
        evt.EVT_N_ACTION: action,
        evt.EVT_N_CREATE: create,
        evt.EVT_N_SET: set_,
        evt.EVT_N_GET: get,
        evt.EVT_N_DELETE: delete,
    }


def _sender(client: CommandClient, via: str) -> Callable[..., CommandResult]:
    """``send(name, *args, **kwargs)``: the command ``command.<name>(*args, **kwargs)``
    sent ``via`` its sync shorthand, ``send_sync`` or (async) ``send``."""

    def send(service: str, *args: Any, **kwargs: Any) -> CommandResult:
        if via == "shorthand":
            result: CommandResult = getattr(client, f"send_{service}_sync")(*args, **kwargs)
            return result
        document = getattr(command, service)(*args, **kwargs)
        if via == "send_sync":
            return client.send_sync(document)
        return asyncio.run(client.send(document))

    return send


@pytest.mark.parametrize("via", ["shorthand", "send_sync", "send"])
def test_n_services_statuses_elements_and_datasets(
    make_commander: CommanderFactory,
    client: CommandClient,
    make_peer: Callable[..., PeerSCP],
    via: str,
) -> None:
    peer = make_peer(_n_handlers())
    make_commander({"PEER": peer.port})
    sc, mpps = str(StorageCommitmentPushModel), str(ModalityPerformedProcedureStep)
    send = _sender(client, via)

    report = send(
        "event_report", "PEER", 2, COMMITMENT, sop_class_uid=sc, sop_instance_uid=INSTANCE
    )
    assert report.document | {"id": "-"} == {
        "version": 1, "id": "-", "service": "n-event-report", "final": True, "status": 0,
        "category": "success", "affected_sop_class_uid": sc,
        "affected_sop_instance_uid": INSTANCE, "event_type_id": 2,
        "dataset": dataset_to_json(make_dataset(RetrieveAETitle="PEER")),
    }  # fmt: skip
    seen = peer.events[-1]
    assert _req(seen).EventTypeID == 2
    assert dataset_to_json(seen.event_information) == dataset_to_json(COMMITMENT)
    # role selection: the bridge proposed to be the SCP of the class, the peer is SCU
    assert _roles(seen) == (True, False)

    action = send("action", "PEER", 1, COMMITMENT, sop_class_uid=sc, sop_instance_uid=INSTANCE)
    assert (action.status, action.category, action.error_comment) == (0, "success", None)
    assert action.dataset is not None
    assert action.dataset.TransactionUID == COMMITMENT.TransactionUID
    assert _req(peer.events[-1]).ActionTypeID == 1

    created = send(
        "create",
        "PEER",
        make_dataset(PerformedProcedureStepStatus="IN PROGRESS"),
        sop_class_uid=mpps,
    )
    assert (created.status, created.affected_sop_instance_uid) == (0, CREATED)
    assert created.dataset is not None
    assert created.dataset.PerformedProcedureStepStatus == "IN PROGRESS"

    modified = send(
        "set", "PEER", make_dataset(PerformedProcedureStepStatus="COMPLETED"),
        sop_class_uid=mpps, sop_instance_uid=CREATED,
    )  # fmt: skip
    assert modified.status == 0
    assert modified.dataset is not None
    assert dataset_to_json(modified.dataset) == dataset_to_json(
        make_dataset(PerformedProcedureStepStatus="COMPLETED")
    )
    assert _req(peer.events[-1]).RequestedSOPInstanceUID == CREATED

    got = send(
        "get", "PEER", [0x00400252, 0x00080060],
        sop_class_uid=str(ModalityPerformedProcedureStepRetrieve), sop_instance_uid=CREATED,
    )  # fmt: skip
    assert (got.status, got.category, got.attribute_identifier_list) == (
        0x0107, "warning", [0x00400252],
    )  # fmt: skip
    assert got.dataset is not None
    assert dataset_to_json(got.dataset) == dataset_to_json(make_dataset(Modality="CT"))
    assert [int(t) for t in _req(peer.events[-1]).AttributeIdentifierList] == [
        0x00400252, 0x00080060,
    ]  # fmt: skip

    deleted = send("delete", "PEER", sop_class_uid=str(BasicFilmSession), sop_instance_uid=INSTANCE)
    assert (deleted.status, deleted.category) == (0x0112, "failure")
    assert (deleted.error_comment, deleted.error_id) == ("no such film session", 42)
    assert deleted.dataset is None
    for result in (report, action, created, modified, got, deleted):
        _check_reply(result)


def _study(n: int) -> Dataset:
    return make_dataset(
        QueryRetrieveLevel="STUDY", StudyInstanceUID=f"1.2.826.0.1.3680043.8.498.{n}"
    )


def test_c_find_streams_every_match_then_the_final_status(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    def find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        if event.identifier.PatientID == "NONE":
            yield 0xA700, None
            return
        for n in range(5):
            yield 0xFF00, _study(n)

    peer = make_peer({evt.EVT_C_FIND: find})
    make_commander({"PEER": peer.port})
    query = make_dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientID="X")
    stream = client.send_find_sync("PEER", query, query_model="study-root")
    matches = list(stream)
    assert [m.dataset.StudyInstanceUID for m in matches if m.dataset] == [
        _study(n).StudyInstanceUID for n in range(5)
    ]
    assert {(m.status, m.category, m.final) for m in matches} == {(0xFF00, "pending", False)}
    assert stream.final is not None
    assert (stream.final.status, stream.final.final) == (0, True)
    for result in (*matches, stream.final):
        _check_reply(result)
    assert peer.events[0].identifier.PatientID == "X"

    async def failing() -> list[CommandResult]:
        query.PatientID = "NONE"
        return [m async for m in client.send_find("PEER", query)]

    with pytest.raises(CommandFailed) as failed:
        asyncio.run(failing())
    assert failed.value.reason == "status"
    assert failed.value.result is not None
    assert failed.value.result.status == 0xA700

    # The same through stream (async) and stream_sync with the builder.
    query.PatientID = "X"
    again = client.stream_sync(command.find("PEER", query, query_model="study-root"))
    assert [m.dataset.StudyInstanceUID for m in again if m.dataset] == [
        _study(n).StudyInstanceUID for n in range(5)
    ]
    assert again.final is not None
    assert (again.final.status, again.matches) == (0, 5)

    async def failing_stream() -> list[CommandResult]:
        query.PatientID = "NONE"
        return [m async for m in client.stream(command.find("PEER", query))]

    with pytest.raises(CommandFailed) as failed:
        asyncio.run(failing_stream())
    assert failed.value.reason == "status"
    assert failed.value.result is not None
    assert failed.value.result.status == 0xA700


# -- pooling ------------------------------------------------------------------------------


def test_commands_to_one_destination_share_one_association(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    peer = make_peer({evt.EVT_C_ECHO: lambda event: 0x0000})
    commander = make_commander({"PEER": peer.port}, command_idle_timeout=0.5)
    for _ in range(5):
        assert client.send_echo_sync("PEER").status == 0
    assert peer.established == 1
    assert (commander.pool.stats.opened, commander.pool.stats.reused) == (1, 4)
    # idle past command_idle_timeout: released
    eventually(lambda: peer.released >= 1, "the idle association released")
    assert peer.released == 1
    assert commander.pool.open_associations() == 0


@pytest.mark.slow
def test_concurrency_per_destination_is_limited(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    def slow(event: Event) -> Any:
        time.sleep(0.3)
        return make_dataset(Status=0), None

    peer = make_peer({evt.EVT_N_ACTION: slow})
    commander = make_commander({"PEER": peer.port}, command_pool_size=2)

    async def burst() -> list[CommandResult]:
        sends = [
            client.send_action(
                "PEER",
                1,
                None,
                sop_class_uid=str(StorageCommitmentPushModel),
                sop_instance_uid=INSTANCE,
            )
            for _ in range(8)
        ]
        return await asyncio.gather(*sends)

    started = time.monotonic()
    results = asyncio.run(burst())
    assert [r.status for r in results] == [0] * 8
    assert peer.max_active == 2
    assert peer.established == commander.pool.stats.opened == 2
    assert time.monotonic() - started >= 4 * 0.3


# -- storage commitment end to end ---------------------------------------------------------


def test_storage_commitment_round_trip(
    make_bridge: BridgeFactory,
    make_consumer: ConsumerFactory,
    make_commander: CommanderFactory,
    client: CommandClient,
    make_peer: Callable[..., PeerSCP],
) -> None:
    """A modality asks the bridge to commit (N-ACTION); the consumer says Success, then
    commands the result (N-EVENT-REPORT) back to the modality's own SCP, which the bridge
    reaches on a new association proposing to be the Storage Commitment SCP."""
    reported = threading.Event()
    modality = make_peer(
        {evt.EVT_N_EVENT_REPORT: lambda event: _set_then(reported, (make_dataset(Status=0), None))},
        contexts=[StorageCommitmentPushModel],
        ae_title="MODALITY",
    )
    bridge = make_bridge()
    bridge.wait_ready()
    make_commander({"MODALITY": modality.port})
    reports: list[asyncio.Task[CommandResult]] = []

    async def commit(request: Request) -> Response:
        info = request.action_information
        assert info is not None
        result = make_dataset(
            TransactionUID=info.TransactionUID, ReferencedSOPSequence=info.ReferencedSOPSequence
        )
        reports.append(
            asyncio.create_task(
                client.send_event_report(
                    request.calling_ae, 1, result,
                    sop_class_uid=request.sop_class_uid,
                    sop_instance_uid="1.2.840.10008.1.20.1.1",
                )
            )
        )  # fmt: skip
        return Response(0x0000)

    consumer = make_consumer(commit, (Service.N_ACTION,))
    with association(bridge.port, [StorageCommitmentPushModel], ae_title="MODALITY") as assoc:
        status, _ = assoc.send_n_action(
            COMMITMENT, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
    assert status.Status == 0
    assert reported.wait(10), "no N-EVENT-REPORT reached the modality"
    event = modality.events[0]
    assert event.event_type == 1
    assert dataset_to_json(event.event_information) == dataset_to_json(COMMITMENT)
    assert str(event.assoc.requestor.ae_title).strip() == "DICOM-BRIDGE"
    assert _roles(event) == (True, False)
    result = consumer._loop.run(asyncio.wait_for(reports[0], 10))
    assert (result.status, result.final) == (0, True)


# -- faults -------------------------------------------------------------------------------


def _dead_letter_of(commander: CommanderHarness, command_id: str) -> Any:
    (message,) = commander.dead_letters()
    assert orjson.loads(message.body)["id"] == command_id
    headers = message.headers or {}
    assert headers.get("x-first-death-reason") == "rejected"
    assert headers.get("x-first-death-queue") == commander.settings.commands_queue
    return message


def _failure(send: Callable[[], Any]) -> CommandFailed:
    with pytest.raises(CommandFailed) as failed:
        send()
    if failed.value.result is not None:
        _check_reply(failed.value.result)
    return failed.value


def test_unknown_destination_is_answered_and_dead_lettered(
    make_commander: CommanderFactory, client: CommandClient
) -> None:
    commander = make_commander()
    document = client.prepare(command.echo("NOWHERE"))
    error = _failure(lambda: client.send_sync(document))
    assert error.reason == "unknown-destination"
    assert "NOWHERE is not in the AE table" in error.message
    _dead_letter_of(commander, document["id"])
    assert commander.stats.dead_lettered == 1
    assert commander.pool.stats.connect_attempts == 0


def test_rejected_association_is_refused_without_retry(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    peer = make_peer({evt.EVT_C_ECHO: lambda event: 0}, require_calling=["SOMEONE-ELSE"])
    commander = make_commander({"PEER": peer.port})
    document = client.prepare(command.echo("PEER"))
    error = _failure(lambda: client.send_sync(document))
    assert error.reason == "refused"
    assert "rejected the association (permanent)" in error.message
    assert "Calling AE title not recognised" in error.message
    assert commander.pool.stats.connect_attempts == 1
    _dead_letter_of(commander, document["id"])


def test_unreachable_peer_is_retried_a_bounded_number_of_times(
    make_commander: CommanderFactory, client: CommandClient
) -> None:
    commander = make_commander(command_retries=2, command_pool_size=3)
    port = free_port()  # nothing listens there

    async def burst() -> list[CommandResult | BaseException]:
        sends = [client.send_echo("DEAD", host="127.0.0.1", port=port) for _ in range(6)]
        return await asyncio.gather(*sends, return_exceptions=True)

    started = time.monotonic()
    errors = asyncio.run(burst())
    assert all(isinstance(e, CommandFailed) and e.reason == "unavailable" for e in errors)
    # Every waiting command counts the shared probe's failures: no storm.
    attempts = commander.pool.stats.connect_attempts
    assert 3 <= attempts <= 3 + 2, attempts
    assert time.monotonic() - started < 5
    # Transient: acked, not dead-lettered (the publisher decides whether to try again).
    assert commander.dead_letters(expected=1, timeout=0.5) == []
    assert commander.stats.acked == 6


def test_peer_that_does_not_answer_times_out(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    def slow(event: Event) -> Any:
        if event.action_type == 9:
            time.sleep(2.0)
        return make_dataset(Status=0), None

    peer = make_peer({evt.EVT_N_ACTION: slow})
    commander = make_commander({"PEER": peer.port}, command_dimse_timeout=1.0)
    action: dict[str, Any] = {
        "sop_class_uid": str(StorageCommitmentPushModel),
        "sop_instance_uid": INSTANCE,
    }
    started = time.monotonic()
    error = _failure(lambda: client.send_action_sync("PEER", 9, None, **action))
    assert error.reason == "timeout"
    assert "DIMSE timeout (1 s)" in error.message
    assert time.monotonic() - started < 3
    # The association was aborted; the next command gets a new one.
    assert client.send_action_sync("PEER", 1, None, **action).status == 0
    assert commander.pool.stats.opened == 2
    assert commander.dead_letters(expected=1, timeout=0.3) == []


def test_peer_abort_mid_operation(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    def find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, _study(0)
        event.assoc.abort()
        yield 0xFF00, _study(1)

    peer = make_peer({evt.EVT_C_FIND: find, evt.EVT_C_ECHO: lambda event: 0})
    make_commander({"PEER": peer.port})
    query = make_dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    stream = client.send_find_sync("PEER", query)
    first = next(stream)
    assert first.status == 0xFF00
    error = _failure(lambda: list(stream))
    assert error.reason == "aborted"
    assert stream.final is not None
    assert stream.final.error is not None
    assert client.send_echo_sync("PEER").status == 0


def test_command_that_fails_the_schema(
    make_commander: CommanderFactory, client: CommandClient
) -> None:
    commander = make_commander()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"service": "c-echo", "destination": {"ae_title": "X"}}, "version"),
        ({"version": 1, "service": "c-move", "destination": {"ae_title": "X"}}, "service"),
        (
            {"version": 1, "service": "n-action", "destination": {"ae_title": "X"},
             "request": {"requested_sop_class_uid": "1.2.3", "requested_sop_instance_uid": "1.2"}},
            "needs request.action_type_id",
        ),
        (
            {"version": 1, "service": "c-echo", "destination": {"ae_title": "X"}, "dataset": {}},
            "dataset not allowed",
        ),
        ({"version": 1, "service": "c-echo", "destination": {"ae_title": "X", "port": 0}}, "host"),
    ]  # fmt: skip
    for document, message in cases:
        document["id"] = str(uuid.uuid4())
        assert not COMMAND.is_valid(document), document
        error = _failure(functools.partial(client.send_sync, document))
        assert error.reason == "bad-command"
        assert message in error.message, error.message
    assert len(commander.dead_letters(expected=len(cases))) == len(cases)


def test_body_that_is_not_json(exchange: str, make_commander: CommanderFactory) -> None:
    commander = make_commander()

    async def send() -> dict[str, Any]:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            replies = await channel.declare_queue("", exclusive=True)
            ex = await channel.get_exchange(exchange)
            await ex.publish(
                aio_pika.Message(b"not json", correlation_id="raw-1", reply_to=replies.name),
                "command.c-echo.X",
            )
            async with replies.iterator(timeout=5) as messages:
                async for message in messages:
                    document: dict[str, Any] = orjson.loads(message.body)
                    assert message.correlation_id == "raw-1"
                    return document
        raise AssertionError("no reply")

    reply = asyncio.run(send())
    COMMAND_REPLY.validate(reply)
    assert reply["error"] == {"reason": "bad-command", "message": "command is not JSON"}
    assert reply["id"] == "raw-1"
    (dead,) = commander.dead_letters()
    assert dead.body == b"not json"


def test_datasets_that_do_not_decode_or_encode(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    peer = make_peer({evt.EVT_N_ACTION: lambda event: (make_dataset(Status=0), None)})
    commander = make_commander({"PEER": peer.port})
    action: dict[str, Any] = {
        "sop_class_uid": str(StorageCommitmentPushModel),
        "sop_instance_uid": INSTANCE,
    }
    bad_vr = command.action("PEER", 1, None, **action)
    bad_vr["action_information"] = {"00081195": {"vr": "XX", "Value": ["1.2"]}}
    error = _failure(lambda: client.send_sync(bad_vr))
    assert (error.reason, error.message) == (
        "bad-dataset", "action_information: (0008,1195): unknown vr",
    )  # fmt: skip
    # Text outside the Specific Character Set (none: ASCII) would be sent as '?'.
    latin = command.action("PEER", 1, make_dataset(PatientName="Zoë^Müller"), **action)
    error = _failure(lambda: client.send_sync(latin))
    assert error.reason == "bad-dataset"
    assert "(0010,0010) PN: text not representable" in error.message
    assert "Zo" not in error.message  # no values in errors
    # With the character set declared, the same name is fine.
    ok = client.send_action_sync(
        "PEER",
        1,
        make_dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Zoë^Müller"),
        **action,
    )
    assert ok.status == 0
    store = command.store("PEER", make_dataset(PatientID="X"))  # no SOP Class/Instance UID
    error = _failure(lambda: client.send_sync(store))
    assert (error.reason, error.message) == ("bad-dataset", "dataset has no SOPClassUID")
    assert len(peer.events) == 1
    assert len(commander.dead_letters(expected=3)) == 3


def test_part10_that_does_not_fit_is_refused_before_sending(
    make_commander: CommanderFactory,
    client: CommandClient,
    make_peer: Callable[..., PeerSCP],
    bulk: DirectoryStore,
) -> None:
    peer = make_peer({evt.EVT_C_ECHO: lambda event: 0})
    commander = make_commander({"PEER": peer.port})
    data = _file("CT_small.dcm").read_bytes()
    # Written by hand: the builder and the client refuse such bytes (ValueError).
    not_part10 = command.build("c-store", "PEER", part10=part10.inline_json(data[132:], 132))
    other = command.store("PEER", data, request={"affected_sop_instance_uid": INSTANCE})
    outside = command.build(
        "c-store", "PEER", part10=part10.uri_json(_file("CT_small.dcm").as_uri(), len(data), 336)
    )
    cases = [
        (not_part10, "part10: not a DICOM Part 10 file: no preamble and DICM prefix"),
        (other, "part10: Media Storage SOP Instance UID differs from the request's"),
        (outside, "part10: BulkDataURI is outside the bulk data directory"),
    ]
    for document, message in cases:
        prepared = client.prepare(document)
        COMMAND.validate(prepared)
        error = _failure(functools.partial(client.send_sync, prepared))
        assert (error.reason, error.message) == ("bad-dataset", message)
    assert peer.established == 0
    assert len(commander.dead_letters(expected=len(cases))) == len(cases)
    assert _file("CT_small.dcm").exists()
    with pytest.raises(ValueError, match="no preamble and DICM prefix"):
        client.send_store_sync("PEER", data[132:])


def test_expired_command_is_not_sent(
    make_commander: CommanderFactory, client: CommandClient, make_peer: Callable[..., PeerSCP]
) -> None:
    peer = make_peer({evt.EVT_C_ECHO: lambda event: 0})
    commander = make_commander({"PEER": peer.port})
    document = client.prepare(command.echo("PEER"))
    document["deadline"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    error = _failure(lambda: client.send_sync(document))
    assert error.reason == "expired"
    assert peer.established == 0
    _dead_letter_of(commander, document["id"])


def test_no_commander_listening_is_unroutable(client: CommandClient) -> None:
    error = _failure(lambda: client.send_echo_sync("PEER"))
    assert error.reason == "unroutable"


def test_commands_can_go_straight_to_the_queue(
    make_commander: CommanderFactory, make_peer: Callable[..., PeerSCP]
) -> None:
    peer = make_peer({evt.EVT_C_ECHO: lambda event: 0})
    commander = make_commander({"PEER": peer.port})
    queue = commander.settings.commands_queue
    with CommandClient(AMQP_URL, "unused", queue=queue, timeout=10) as direct:
        assert direct.send_echo_sync("PEER").status == 0


def test_unreachable_broker_does_not_fail_start() -> None:
    values: dict[str, Any] = {"amqp_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    settings = CommanderSettings(**values)
    commander = Commander(settings)
    loop = LoopThread("commander-loop")
    try:
        loop.run(commander.start())
        assert not loop.run(commander.wait_ready(0.5))
        assert not commander.ready
    finally:
        loop.run(commander.close())
        loop.stop()
