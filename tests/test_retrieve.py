"""C-FIND, C-GET and C-MOVE through the bridge with streamed consumer replies, C-CANCEL,
claim-check bulk data, and the faults a peer must get a status for within a bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    RTPlanStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from bridge.protocol.dicomjson import dataset_to_json
from bridge.protocol.model import Service
from bridge.sdk.consumer import Request, Response, Retrieval
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import BridgeHarness, RawResponder, association, free_port, timed
from tests.schemas import validate_envelope
from tests.waiting import eventually

FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
STORAGE = [CTImageStorage, MRImageStorage, RTPlanStorage]
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]


def _file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None
    return Path(path)


def _study_query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _match(n: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{n + 1}"
    return ds


def _bridge_threads() -> int:
    """Threads other than the test consumer's worker pool, which grows on demand."""
    return sum(not t.name.startswith("consumer") for t in threading.enumerate())


# -- C-FIND -----------------------------------------------------------------------------


def test_c_find_streams_matches_and_envelope_carries_the_query(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    seen: list[Request] = []

    def find(request: Request) -> Iterator[Dataset]:
        seen.append(request)
        yield from (_match(n) for n in range(25))

    make_consumer(find, (Service.C_FIND,))
    with association(bridge.port, [FIND]) as assoc:
        results = list(assoc.send_c_find(_study_query(PatientID="X"), FIND))
    statuses = [status.Status for status, _ in results]
    assert statuses == [0xFF00] * 25 + [0x0000]
    uids = [ident.StudyInstanceUID for _, ident in results[:-1] if ident is not None]
    assert uids == [f"1.2.826.0.1.3680043.8.498.{n + 1}" for n in range(25)]
    envelope = seen[0].envelope
    validate_envelope(envelope)
    assert envelope["query_model"] == "study-root"
    assert envelope["query_level"] == "STUDY"
    assert seen[0].identifier is not None
    assert seen[0].identifier.PatientID == "X"
    assert bridge.running.transport.in_flight == 0


def test_first_match_reaches_peer_before_consumer_produces_the_last(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    peer_has_first = threading.Event()

    def find(request: Request) -> Iterator[Dataset]:
        yield _match(0)
        # The consumer cannot go on until the peer holds the first match: a bridge that
        # collected the result set would deadlock here and time out.
        assert peer_has_first.wait(10), "first match never reached the peer"
        yield _match(1)

    make_consumer(find, (Service.C_FIND,))
    with association(bridge.port, [FIND]) as assoc:
        responses = assoc.send_c_find(_study_query(), FIND)
        status, identifier = next(responses)
        assert status.Status == 0xFF00
        assert identifier is not None
        peer_has_first.set()
        rest = [s.Status for s, _ in responses]
    assert rest == [0xFF00, 0x0000]


def test_c_cancel_stops_the_stream_promptly_and_leaks_nothing(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    closed = threading.Event()
    produced: list[int] = []

    def endless(request: Request) -> Iterator[Dataset]:
        if produced:  # a second query on the same association gets one match
            yield _match(0)
            return
        try:
            n = 0
            while True:
                produced.append(n)
                yield _match(n)
                n += 1
                time.sleep(0.005)
        finally:
            closed.set()

    harness = make_consumer(endless, (Service.C_FIND,))
    threads_before = _bridge_threads()
    with association(bridge.port, [FIND]) as assoc:
        responses = assoc.send_c_find(_study_query(), FIND, msg_id=7)
        for _ in range(3):
            assert next(responses)[0].Status == 0xFF00
        context_id = assoc._get_valid_context(FIND, "", "scu").context_id
        assert context_id is not None
        assoc.send_c_cancel(7, context_id)
        started = time.perf_counter()
        tail = [status.Status for status, _ in responses]
        elapsed = time.perf_counter() - started
        assert tail[-1] == 0xFE00
        assert set(tail[:-1]) <= {0xFF00}
        assert elapsed < 1.0
        # The association is still usable after the cancel.
        again = [status.Status for status, _ in assoc.send_c_find(_study_query(), FIND)]
        assert again == [0xFF00, 0x0000]
    assert closed.wait(5), "consumer's generator was not stopped"
    assert harness.consumer.stats.cancelled == 1
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count, "consumer kept producing after the cancel"
    assert bridge.running.transport.in_flight == 0
    eventually(lambda: _bridge_threads() <= threads_before, "the stream's threads ended")
    assert _bridge_threads() <= threads_before, [t.name for t in threading.enumerate()]
    assert bridge.running.scp.active_associations == 0


@pytest.mark.parametrize(
    ("sop_class", "identifier", "comment"),
    [
        (FIND, {"QueryRetrieveLevel": "PATIENT"}, "Query/Retrieve Level not one of"),
        (FIND, {}, "Query/Retrieve Level missing"),
        (PatientRootQueryRetrieveInformationModelFind, {"QueryRetrieveLevel": "FRAME"}, "not"),
    ],
    ids=["study-root-patient", "missing", "patient-root-frame"],
)
def test_invalid_query_level_is_refused_without_asking_consumers(
    sop_class: str,
    identifier: dict[str, str],
    comment: str,
    bridge: BridgeHarness,
    make_consumer: ConsumerFactory,
) -> None:
    asked: list[Request] = []

    def find(request: Request) -> list[Dataset]:
        asked.append(request)
        return []

    make_consumer(find, (Service.C_FIND,))
    query = Dataset()
    for keyword, value in identifier.items():
        setattr(query, keyword, value)
    query.PatientID = ""
    with association(bridge.port, [sop_class]) as assoc:
        ((status, _),) = list(assoc.send_c_find(query, sop_class))
    assert status.Status == 0xA900
    assert comment in status.ErrorComment
    assert not asked


def test_consumer_that_stops_without_final_reply_times_out(
    make_bridge: BridgeFactory, exchange: str
) -> None:
    harness = make_bridge(reply_timeout=1.0)
    harness.wait_ready()
    match = {"status": 0xFF00, "dataset": {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}}
    responder = RawResponder(exchange, lambda message: orjson.dumps(match))
    try:
        with association(harness.port, [FIND]) as assoc:
            (results, elapsed) = timed(lambda: list(assoc.send_c_find(_study_query(), FIND)))
            assert [s.Status for s, _ in results] == [0xFF00, 0xC001]
            assert results[-1][0].ErrorComment == "no reply within 1 s"
            assert 0.9 < elapsed < 2.5
            assert assoc.is_established
    finally:
        responder.stop()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"status": 272}', 0xC002),  # 0x0110 is no C-FIND status
        (b'{"status": 65280}', 0xC002),  # Pending without an identifier
        (b'{"status": 65280, "dataset": {"00100010": {"vr": "QQ"}}}', 0xC002),
        (b'{"status": 0, "sub_operations": 3}', 0xC002),  # a C-GET field
        (b'{"status": 42752}', 0xA700),  # 0xA700 Out of resources: the consumer's own
    ],
    ids=["forbidden-status", "pending-without-dataset", "bad-dataset", "get-field", "a700"],
)
def test_bad_stream_replies(body: bytes, status: int, bridge: BridgeHarness, exchange: str) -> None:
    responder = RawResponder(exchange, lambda message: body)
    try:
        with association(bridge.port, [FIND]) as assoc:
            results = list(assoc.send_c_find(_study_query(), FIND))
    finally:
        responder.stop()
    assert results[-1][0].Status == status


def test_c_find_without_consumer_is_unroutable_at_once(bridge: BridgeHarness) -> None:
    with association(bridge.port, [FIND]) as assoc:
        (results, elapsed) = timed(lambda: list(assoc.send_c_find(_study_query(), FIND)))
    assert [s.Status for s, _ in results] == [0xA700]
    assert elapsed < 1.0


# -- C-GET ------------------------------------------------------------------------------


def _get_association(port: int, stored: list[Dataset], fail: frozenset[str] = frozenset()) -> Any:
    ae = AE(ae_title="GET-SCU")
    ae.add_requested_context(GET)
    roles: list[Any] = []
    for uid in STORAGE:
        ae.add_requested_context(uid)
        roles.append(build_role(uid, scp_role=True))

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        stored.append(ds)
        return 0xA700 if ds.SOPInstanceUID in fail else 0x0000

    assoc = ae.associate(
        "127.0.0.1", port, ae_title="DICOM-BRIDGE", ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    return ae, assoc


def _c_get(port: int, stored: list[Dataset], fail: frozenset[str] = frozenset()) -> list[Any]:
    """The statuses of one C-GET of a study, instances stored into ``stored``."""
    ae, assoc = _get_association(port, stored, fail)
    try:
        return [s for s, _ in assoc.send_c_get(_study_query(), GET)]
    finally:
        assoc.release()
        ae.shutdown()


def test_c_get_performs_sub_operations_on_the_same_association(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(lambda request: [_file(name) for name in FILES], (Service.C_GET,))
    stored: list[Dataset] = []
    results = _c_get(bridge.port, stored)
    assert [s.Status for s in results] == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [s.NumberOfRemainingSuboperations for s in results[:-1]] == [2, 1, 0]
    final = results[-1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 0)
    for name, ds in zip(FILES, stored, strict=True):
        original = dcmread(_file(name))
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        assert ds.get("PixelData") == original.get("PixelData")


def test_c_get_reports_failed_sub_operations(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(lambda request: [_file(name) for name in FILES], (Service.C_GET,))
    failing = dcmread(_file("MR_small.dcm")).SOPInstanceUID
    stored: list[Dataset] = []
    results = _c_get(bridge.port, stored, fail=frozenset({failing}))
    final = results[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)


def test_c_get_with_no_matches_is_success_with_zero_counts(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(lambda request: [], (Service.C_GET,))
    results = _c_get(bridge.port, [])
    assert [s.Status for s in results] == [0x0000]


def test_c_get_consumer_failure_before_any_sub_operation(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(lambda request: Response(0xA900, error_comment="unknown study"), (Service.C_GET,))
    results = _c_get(bridge.port, [])
    assert [s.Status for s in results] == [0xA900]
    assert results[0].ErrorComment == "unknown study"


def test_c_get_large_instances_travel_by_claim_check(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    bulk = tmp_path / "bulk"
    harness = make_bridge(bulk_dir=str(bulk), bulk_threshold=1024)
    harness.wait_ready()
    consumer = make_consumer(lambda request: [_file(name) for name in FILES], (Service.C_GET,))
    consumer.consumer.store = type(harness.running.scp._store)(bulk)
    consumer.consumer.bulk_threshold = 1024
    stored: list[Dataset] = []
    results = _c_get(harness.port, stored)
    assert results[-1].Status == 0x0000
    assert stored[0].PixelData == dcmread(_file("CT_small.dcm")).PixelData
    assert not [p for p in bulk.iterdir() if p.is_file()], "claim-check files left behind"


def test_c_store_large_values_travel_by_claim_check(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    bulk = tmp_path / "bulk"
    harness = make_bridge(bulk_dir=str(bulk), bulk_threshold=1024)
    harness.wait_ready()
    seen: list[tuple[dict[str, Any], dict[str, Any], bytes]] = []

    def store(request: Request) -> int:
        assert request.dataset is not None
        envelope = request.envelope
        seen.append(
            (envelope["part10"], envelope["dataset"]["7FE00010"], request.dataset.PixelData)
        )
        return 0

    make_consumer(store, (Service.C_STORE,))
    original = dcmread(_file("CT_small.dcm"))
    with association(harness.port, [CTImageStorage]) as assoc:
        assert assoc.send_c_store(original).Status == 0
    ((part10_json, pixel_json, pixels),) = seen
    # The received file is in the store; the pixel data's JSON refers into it.
    assert part10_json["BulkDataURI"].startswith("file://")
    assert pixel_json["BulkDataURI"].startswith("?offset=")
    assert pixels == original.PixelData
    # (the bridge's .receiving directory is in there too)
    assert not [p for p in bulk.iterdir() if p.is_file()], "claim-check file not deleted"


def test_envelope_over_the_max_message_size_is_refused(
    make_bridge: BridgeFactory, recorder: Any
) -> None:
    harness = make_bridge(bulk_threshold=1 << 30, max_message_size=16384)
    harness.wait_ready()
    with association(harness.port, [CTImageStorage]) as assoc:
        status = assoc.send_c_store(dcmread(_file("CT_small.dcm")))
    assert status.Status == 0xC000
    assert "exceeds the max message size" in status.ErrorComment
    assert not recorder.requests


# -- C-MOVE -----------------------------------------------------------------------------


class StoreSCP:
    """A pynetdicom storage SCP the test owns: the C-MOVE destination."""

    def __init__(self, ae_title: str = "MOVE-DEST", fail: bool = False) -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title=ae_title)
        for uid in STORAGE:
            self.ae.add_supported_context(uid)
        self.port = free_port()

        def on_store(event: evt.Event) -> int:
            self.received.append(event.dataset)
            return 0xA700 if fail else 0x0000

        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def store_scp() -> Iterator[Callable[..., StoreSCP]]:
    started: list[StoreSCP] = []

    def make(**kwargs: Any) -> StoreSCP:
        scp = StoreSCP(**kwargs)
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


def _ae_table(tmp_path: Path, entries: dict[str, int]) -> str:
    path = tmp_path / "ae-table.yaml"
    path.write_text("".join(f"{t}: {{host: 127.0.0.1, port: {p}}}\n" for t, p in entries.items()))
    return str(path)


def _move(port: int, destination: str) -> list[Dataset]:
    with association(port, [MOVE]) as assoc:
        return [s for s, _ in assoc.send_c_move(_study_query(), destination, MOVE)]


def test_c_move_to_a_destination_from_the_ae_table(
    make_bridge: BridgeFactory,
    make_consumer: ConsumerFactory,
    store_scp: Callable[..., StoreSCP],
    tmp_path: Path,
) -> None:
    destination = store_scp()
    harness = make_bridge(ae_table=_ae_table(tmp_path, {"MOVE-DEST": destination.port}))
    harness.wait_ready()
    make_consumer(lambda request: [_file(name) for name in FILES], (Service.C_MOVE,))
    results = _move(harness.port, "MOVE-DEST")
    assert [s.Status for s in results] == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert results[-1].NumberOfCompletedSuboperations == 3
    assert sorted(ds.SOPInstanceUID for ds in destination.received) == sorted(
        dcmread(_file(name)).SOPInstanceUID for name in FILES
    )


def test_c_move_destination_named_by_the_consumer(
    bridge: BridgeHarness, make_consumer: ConsumerFactory, store_scp: Callable[..., StoreSCP]
) -> None:
    destination = store_scp(ae_title="ELSEWHERE")
    make_consumer(
        lambda request: Retrieval([_file("CT_small.dcm")], ("127.0.0.1", destination.port)),
        (Service.C_MOVE,),
    )
    results = _move(bridge.port, "ELSEWHERE")
    assert results[-1].Status == 0x0000
    assert len(destination.received) == 1


def test_c_move_unknown_destination(bridge: BridgeHarness, make_consumer: ConsumerFactory) -> None:
    make_consumer(lambda request: [_file("CT_small.dcm")], (Service.C_MOVE,))
    results = _move(bridge.port, "NOWHERE")
    assert [s.Status for s in results] == [0xA801]


def test_c_move_destination_that_refuses_the_association(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    closed_port = free_port()  # nothing listens there
    harness = make_bridge(ae_table=_ae_table(tmp_path, {"GONE": closed_port}))
    harness.wait_ready()
    make_consumer(lambda request: [_file("CT_small.dcm")], (Service.C_MOVE,))
    results, elapsed = timed(lambda: _move(harness.port, "GONE"))
    assert [s.Status for s in results] == [0xA801]
    assert elapsed < 5


def test_c_move_destination_that_fails_every_store(
    make_bridge: BridgeFactory,
    make_consumer: ConsumerFactory,
    store_scp: Callable[..., StoreSCP],
    tmp_path: Path,
) -> None:
    destination = store_scp(fail=True)
    harness = make_bridge(ae_table=_ae_table(tmp_path, {"MOVE-DEST": destination.port}))
    harness.wait_ready()
    make_consumer(lambda request: [_file(name) for name in FILES], (Service.C_MOVE,))
    results = _move(harness.port, "MOVE-DEST")
    final = results[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 3


def test_c_move_consumer_announcing_more_than_it_sends(
    make_bridge: BridgeFactory,
    store_scp: Callable[..., StoreSCP],
    exchange: str,
    tmp_path: Path,
) -> None:
    destination = store_scp()
    harness = make_bridge(ae_table=_ae_table(tmp_path, {"MOVE-DEST": destination.port}))
    harness.wait_ready()
    instance = orjson.dumps(
        {
            "status": 0xFF00,
            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
            "dataset": dataset_to_json(dcmread(_file("CT_small.dcm"))),
        }
    )
    bodies = [orjson.dumps({"status": 0xFF00, "sub_operations": 3}), instance, b'{"status": 0}']
    responder = RawResponder(exchange, lambda message: bodies)
    try:
        results = _move(harness.port, "MOVE-DEST")
    finally:
        responder.stop()
    final = results[-1]
    assert final.Status == 0xB000
    assert "consumer sent 1 of 3 instances" in final.ErrorComment
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 2)
