"""Failures a peer must never feel as a hang: each is answered with the service's failure
status and an Error Comment, within its bound, and the association stays usable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import orjson
import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
    Verification,
)

from bridge.protocol.model import Service
from bridge.sdk.consumer import Request, Response
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import (
    BridgeHarness,
    RawResponder,
    Recorder,
    TcpProxy,
    association,
    send_raw_store,
    timed,
)
from tests.waiting import eventually

INSTANCE = "1.2.826.0.1.3680043.8.498.1"
CONTEXTS = [
    Verification,
    CTImageStorage,
    StorageCommitmentPushModel,
    ModalityPerformedProcedureStep,
]


def _event_info() -> Dataset:
    ds = Dataset()
    ds.TransactionUID = "1.2.826.0.1.3680043.8.498.3"
    return ds


# (service, how the peer sends it, status expected per failure kind)
Send = Callable[[Association], Dataset]
SENDS: dict[Service, Send] = {
    Service.C_ECHO: lambda a: a.send_c_echo(),
    Service.C_STORE: lambda a: a.send_c_store(examples.ct),
    Service.N_EVENT_REPORT: lambda a: a.send_n_event_report(
        _event_info(), 1, StorageCommitmentPushModel, INSTANCE
    )[0],
    Service.N_ACTION: lambda a: a.send_n_action(
        _event_info(), 1, StorageCommitmentPushModel, INSTANCE
    )[0],
}
UNROUTABLE = {
    Service.C_ECHO: 0x0110,
    Service.C_STORE: 0xA700,
    Service.N_EVENT_REPORT: 0x0213,
    Service.N_ACTION: 0x0213,
}
TIMEOUT = {
    Service.C_ECHO: 0x0110,
    Service.C_STORE: 0xC001,
    Service.N_EVENT_REPORT: 0x0110,
    Service.N_ACTION: 0x0110,
}
BAD_REPLY = {
    Service.C_ECHO: 0x0110,
    Service.C_STORE: 0xC002,
    Service.N_EVENT_REPORT: 0x0110,
    Service.N_ACTION: 0x0110,
}


@pytest.mark.parametrize("service", list(SENDS), ids=lambda s: s.value)
def test_unroutable_request_fails_at_once(service: Service, bridge: BridgeHarness) -> None:
    with association(bridge.port, CONTEXTS) as assoc:
        status, elapsed = timed(lambda: SENDS[service](assoc))
        assert status.Status == UNROUTABLE[service]
        assert status.ErrorComment.startswith("no queue bound for")
        assert elapsed < 1.0, "unroutable must not wait for the reply timeout"
        # The association is still usable.
        assert SENDS[service](assoc).Status == UNROUTABLE[service]
    assert bridge.running.transport.stats.returned == 2


@pytest.mark.parametrize("service", list(SENDS), ids=lambda s: s.value)
def test_no_reply_within_timeout_fails_and_late_reply_is_dropped(
    service: Service, make_bridge: BridgeFactory, raw: Callable[..., RawResponder]
) -> None:
    harness = make_bridge(reply_timeout=1.0)
    harness.wait_ready()
    silent = raw(lambda message: None)
    with association(harness.port, CONTEXTS) as assoc:
        status, elapsed = timed(lambda: SENDS[service](assoc))
        assert status.Status == TIMEOUT[service]
        assert status.ErrorComment == "no reply within 1 s"
        assert 0.9 < elapsed < 2.5
        # The consumer answers after all: the reply is late, dropped and counted.
        silent.publish_reply(silent.messages[0], b'{"status": 0}')
        stats = harness.running.transport.stats
        eventually(lambda: stats.late_replies >= 1, "the late reply counted")
        assert stats.late_replies == 1
        assert harness.running.transport.in_flight == 0
        assert assoc.is_established


BAD_REPLIES = {
    "not-json": b"this is not json",
    "not-an-object": b"[0]",
    "no-status": b'{"dataset": {}}',
    "status-not-int": b'{"status": "0"}',
    "status-bool": b'{"status": true}',
    "status-out-of-range": b'{"status": 70000}',
    "status-not-allowed": b'{"status": 65280}',
    "unknown-field": b'{"status": 0, "statuss": 1}',
    "comment-too-long": orjson.dumps({"status": 0, "error_comment": "x" * 65}),
    "bad-offending-element": b'{"status": 0, "offending_element": ["0010"]}',
    "version-2": b'{"version": 2, "status": 0}',
}


@pytest.mark.parametrize("body", list(BAD_REPLIES.values()), ids=list(BAD_REPLIES))
def test_malformed_reply_gives_failure_with_comment(
    body: bytes, bridge: BridgeHarness, raw: Callable[..., RawResponder]
) -> None:
    raw(lambda message: body)
    with association(bridge.port, CONTEXTS) as assoc:
        status, _ = assoc.send_n_event_report(
            _event_info(), 1, StorageCommitmentPushModel, INSTANCE
        )
        assert status.Status == 0x0110
        assert status.ErrorComment
        store = assoc.send_c_store(examples.ct)
        assert store.Status == 0xC002
        assert assoc.is_established


@pytest.mark.parametrize(
    ("service", "body", "comment"),
    [
        (Service.C_ECHO, b'{"status": 0, "dataset": {}}', "C-ECHO reply takes no dataset"),
        (Service.C_STORE, b'{"status": 0, "error_id": 1}', "error_id not allowed for C-STORE"),
        (
            Service.N_EVENT_REPORT,
            b'{"status": 0, "dataset": {"00100010": {"vr": "XX"}}}',
            "reply dataset",
        ),
        (Service.N_ACTION, b'{"status": 0, "offending_element": ["00100010"]}', "not allowed"),
    ],
    ids=["echo-dataset", "store-error-id", "bad-dataset", "action-offending"],
)
def test_reply_not_fit_for_the_service_is_refused(
    service: Service,
    body: bytes,
    comment: str,
    bridge: BridgeHarness,
    raw: Callable[..., RawResponder],
) -> None:
    raw(lambda message: body)
    with association(bridge.port, CONTEXTS) as assoc:
        status = SENDS[service](assoc)
    assert status.Status == BAD_REPLY[service]
    assert comment in status.ErrorComment


def test_n_create_success_without_instance_uid_is_refused(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(Recorder(answer=lambda request: Response(0)))
    ds = Dataset()
    ds.Modality = "CT"
    with association(bridge.port, CONTEXTS) as assoc:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, None)
    assert status.Status == 0x0110
    assert "affected_sop_instance_uid" in status.ErrorComment


def test_consumer_exception_becomes_failure_status(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    def boom(request: Request) -> int:
        raise ValueError("consumer bug")

    make_consumer(boom)
    with association(bridge.port, CONTEXTS) as assoc:
        assert assoc.send_c_store(examples.ct).Status == 0xC211
        status, _ = assoc.send_n_event_report(
            _event_info(), 1, StorageCommitmentPushModel, INSTANCE
        )
    assert status.Status == 0x0110
    assert status.ErrorComment == "consumer error: ValueError"


BROKEN_DATASETS = {
    # (0010,0010) PN with a length far beyond the data (implicit VR little endian)
    "length-overrun": bytes.fromhex("10001000") + (0x7FFFFFF0).to_bytes(4, "little") + b"DOE",
    # a valid (0008,0016) UI, then (0010,0020) LO declaring 16 bytes but carrying 4
    "truncated-value": bytes.fromhex("080016001a000000")
    + b"1.2.840.10008.5.1.4.1.1.2\x00"
    + bytes.fromhex("1000200010000000")
    + b"ABCD",
    # (0028,0030) DS "abc": not a decimal string
    "bad-ds": bytes.fromhex("2800300004000000") + b"abc ",
    # (0008,1140) SQ whose item has a wrong tag
    "broken-sequence": bytes.fromhex("08004011ffffffff")
    + bytes.fromhex("feff00e1")
    + b"\x08\x00\x00\x00"
    + b"\x00" * 8,
}


@pytest.mark.parametrize("payload", list(BROKEN_DATASETS.values()), ids=list(BROKEN_DATASETS))
def test_undecodable_dataset_gives_failure_and_association_survives(
    payload: bytes, bridge: BridgeHarness, recorder: Recorder
) -> None:
    with association(bridge.port, CONTEXTS) as assoc:
        status = send_raw_store(assoc, payload)
        assert status == 0xC000
        assert assoc.send_c_store(examples.ct).Status == 0
    assert len(recorder.requests) == 1


def test_broker_unreachable_at_start_then_recovers(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))
    try:
        harness = make_bridge(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        with association(harness.port, CONTEXTS) as assoc:
            status, elapsed = timed(lambda: assoc.send_c_store(examples.ct))
            assert status.Status == 0xA700
            assert status.ErrorComment == "not connected to the broker"
            assert elapsed < 0.5
            echo = assoc.send_c_echo()
            assert echo.Status == 0x0110
        make_consumer(Recorder())
        proxy.start()
        harness.wait_ready(timeout=15)
        with association(harness.port, CONTEXTS) as assoc:
            assert assoc.send_c_store(examples.ct).Status == 0
    finally:
        proxy.close()


def test_connection_loss_fails_in_flight_requests_promptly(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))
    proxy.start()
    release = threading.Event()
    arrived = threading.Event()

    def slow(request: Request) -> int:
        arrived.set()
        release.wait(10)
        return 0

    try:
        harness = make_bridge(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", reply_timeout=8.0
        )
        harness.wait_ready()
        make_consumer(slow)
        results: list[tuple[Dataset, float]] = []

        def send() -> None:
            with association(harness.port, CONTEXTS) as assoc:
                results.append(timed(lambda: assoc.send_c_store(examples.ct)))

        worker = threading.Thread(target=send)
        worker.start()
        assert arrived.wait(10), "the request did not reach the consumer"  # now in flight
        cut = time.perf_counter()
        proxy.stop()
        worker.join(10)
        lost_after = time.perf_counter() - cut
        assert results, "peer got no answer"
        status, _ = results[0]
        assert status.Status == 0xA700
        assert status.ErrorComment == "connection to the broker lost"
        assert lost_after < 2.0
        assert harness.running.transport.in_flight == 0
        # Back again: the bridge reconnects without a restart.
        release.set()
        proxy.start()
        harness.wait_ready(timeout=15)
        with association(harness.port, CONTEXTS) as assoc:
            assert assoc.send_c_echo().Status == 0
    finally:
        release.set()
        proxy.close()


def test_oversize_reply_gives_failure_with_comment(
    make_bridge: BridgeFactory, raw: Callable[..., RawResponder]
) -> None:
    harness = make_bridge(max_message_size=16384, bulk_threshold=1024)
    harness.wait_ready()
    comment = "x" * 60
    huge = orjson.dumps({"status": 0, "x-padding": "y" * 20000, "error_comment": comment})
    raw(lambda message: huge)
    with association(harness.port, CONTEXTS) as assoc:
        status = assoc.send_c_echo()
        assert assoc.is_established
    assert status.Status == 0x0110
    assert status.ErrorComment.startswith("reply of 20")
    assert status.ErrorComment.endswith("exceeds the max message size")
