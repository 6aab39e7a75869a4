"""Admission and limits: calling/called AE title policy, association and size limits,
request rate, and hostile bytes on the DICOM port."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import examples
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bridge.config import CallingPolicy
from bridge.errors import ConfigError
from tests.conftest import BridgeFactory
from tests.harness import BridgeHarness, Recorder, assoc_rq, association, send_raw
from tests.waiting import eventually


def _associate(port: int, calling: str = "TEST-SCU", called: str = "DICOM-BRIDGE") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    return ae, assoc


def _rejection(assoc: Any) -> tuple[int, int, int]:
    primitive = assoc.acceptor.primitive
    return (primitive.result, primitive.result_source, primitive.diagnostic)


def test_calling_policy_parsing() -> None:
    policy = CallingPolicy.parse(["CT1", "MR2@10.0.0.0/24|192.168.1.7", "MR2@10.9.9.9"])
    assert policy.allows("CT1", "203.0.113.5")
    assert policy.allows("MR2", "10.0.0.77")
    assert policy.allows("MR2", "10.9.9.9")
    assert not policy.allows("MR2", "10.0.1.1")
    assert not policy.allows("US3", "10.0.0.1")
    assert CallingPolicy.parse([]).allows("ANYONE", None)
    with pytest.raises(ConfigError):
        CallingPolicy.parse(["CT1@not-an-address"])
    with pytest.raises(ConfigError):
        CallingPolicy.parse(["THIS-TITLE-IS-TOO-LONG"])


@pytest.mark.parametrize(
    ("calling", "accepted"),
    [("CT1", True), ("LOOPBACK", True), ("ELSEWHERE", False), ("STRANGER", False)],
)
def test_calling_ae_allow_list_with_source_networks(
    calling: str, accepted: bool, make_bridge: BridgeFactory, recorder: Recorder
) -> None:
    harness = make_bridge(allowed_calling_aes="CT1,LOOPBACK@127.0.0.0/8,ELSEWHERE@10.0.0.0/8")
    harness.wait_ready()
    ae, assoc = _associate(harness.port, calling=calling)
    try:
        assert assoc.is_established is accepted
        if accepted:
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        else:
            # rejected-permanent, service-user, calling-AE-title-not-recognized
            assert assoc.is_rejected
            assert _rejection(assoc) == (0x01, 0x01, 0x03)
    finally:
        ae.shutdown()


def test_called_ae_title_must_match_when_required(make_bridge: BridgeFactory) -> None:
    harness = make_bridge(require_called_ae=True)
    ae, assoc = _associate(harness.port, called="SOMEONE-ELSE")
    try:
        assert assoc.is_rejected
        assert _rejection(assoc) == (0x01, 0x01, 0x07)  # called AE title not recognized
    finally:
        ae.shutdown()
    ae, assoc = _associate(harness.port)
    assert assoc.is_established
    assoc.release()
    ae.shutdown()


def test_association_limit(make_bridge: BridgeFactory) -> None:
    harness = make_bridge(max_associations=2)
    open_ones = [_associate(harness.port) for _ in range(2)]
    try:
        assert all(assoc.is_established for _, assoc in open_ones)
        ae, third = _associate(harness.port)
        assert third.is_rejected
        # rejected-transient, service-provider (presentation), local-limit-exceeded
        assert _rejection(third) == (0x02, 0x03, 0x02)
        ae.shutdown()
    finally:
        for ae, assoc in open_ones:
            assoc.release()
            ae.shutdown()


def _aborted_within(assoc: Any, seconds: float) -> bool:
    return eventually(
        lambda: assoc.is_aborted or not assoc.is_established,
        "the association aborted",
        timeout=seconds,
        interval=0.02,
    )


def test_pdu_declaring_a_huge_length_aborts_at_once(bridge: BridgeHarness) -> None:
    ae, assoc = _associate(bridge.port)
    try:
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        # P-DATA-TF declaring 3 GB; a reader that believed it would wait and buffer.
        raw.sendall(b"\x04\x00" + struct.pack(">L", 3_000_000_000) + b"\x00" * 64)
        assert _aborted_within(assoc, 3.0)
    finally:
        ae.shutdown()
    with association(bridge.port) as again:  # the bridge serves on
        assert again.is_established


def test_dataset_over_the_size_limit_aborts(make_bridge: BridgeFactory, recorder: Recorder) -> None:
    harness = make_bridge(max_dataset_size=200_000)
    harness.wait_ready()
    with association(harness.port, [CTImageStorage]) as assoc:
        assert assoc.send_c_store(examples.ct).Status == 0  # ~40 KB: fine
    big = Dataset()
    big.SOPClassUID = CTImageStorage
    big.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.500"
    big.BitsAllocated = 8
    big.PixelData = os.urandom(400_000)
    big.file_meta = examples.ct.file_meta
    ae, assoc = _associate(harness.port)
    try:
        status = assoc.send_c_store(big)
        assert not status  # no response: the association was aborted
        assert _aborted_within(assoc, 3.0)
    finally:
        ae.shutdown()
    assert len(recorder.requests) == 1


def test_request_rate_limit_per_association(make_bridge: BridgeFactory, recorder: Recorder) -> None:
    harness = make_bridge(max_request_rate=5)
    harness.wait_ready()
    with association(harness.port) as assoc:
        statuses = [assoc.send_c_echo() for _ in range(12)]
        time.sleep(1.0)  # the time under test: a second later the rate allows requests again
        later = assoc.send_c_echo()
    codes = [s.Status for s in statuses]
    assert codes[:5] == [0] * 5
    refused = [s for s in statuses if s.Status != 0]
    assert refused
    assert all(s.Status == 0x0110 for s in refused)
    assert "requests/s" in refused[0].ErrorComment
    assert later.Status == 0


# -- hostile bytes on the DICOM port ------------------------------------------------------


CRAFTED = {
    "unknown-pdu-type": b"\x09\x00\x00\x00\x00\x04abcd",
    "truncated-header": b"\x01\x00\x00",
    "rq-shorter-than-declared": b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 20,
    "rq-garbage-items": assoc_rq(b"\x10\x00\x00\x15" + b"\xff" * 40),
    "rq-item-length-overrun": assoc_rq(b"\x20\x00\xff\xff\x01\x00"),
    "garbage-after-valid-rq": assoc_rq() + b"\x99" * 100,
    "p-data-before-association": b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",
    "huge-declared-rq": b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 32,
}


@pytest.mark.parametrize("payload", list(CRAFTED.values()), ids=list(CRAFTED))
def test_malformed_pdus_never_take_the_bridge_down(
    payload: bytes, bridge: BridgeHarness, recorder: Recorder
) -> None:
    send_raw(bridge.port, payload)
    with association(bridge.port) as assoc:
        assert assoc.send_c_echo().Status == 0


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda t, rest: bytes([t, 0]) + rest, st.integers(1, 7), st.binary(max_size=300)),
    )
)
def test_random_bytes_never_take_the_bridge_down(data: bytes, bridge: BridgeHarness) -> None:
    send_raw(bridge.port, data)
    ae, assoc = _associate(bridge.port)
    try:
        assert assoc.is_established
        assoc.release()
    finally:
        ae.shutdown()


def test_no_state_is_left_behind_per_association(bridge: BridgeHarness) -> None:
    import gc

    from pynetdicom.association import Association

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Association) for o in gc.get_objects())

    for _ in range(3):
        with association(bridge.port) as assoc:
            assoc.send_c_echo()
    before = alive()
    for _ in range(20):
        with association(bridge.port) as assoc:
            assoc.send_c_echo()
    scp = bridge.running.scp
    eventually(
        lambda: not (scp._guards or scp._limiters),
        lambda: f"no guard or limiter left; left: {scp._guards}, {scp._limiters}",
    )
    assert not scp._guards
    assert not scp._limiters
    assert alive() <= before + 2


def test_a_bare_tcp_connection_does_not_hold_up_the_drain(
    make_bridge: BridgeFactory,
) -> None:
    harness = make_bridge(drain_timeout=10.0)
    harness.wait_ready()
    with socket.create_connection(("127.0.0.1", harness.port)):  # a port probe, no A-ASSOCIATE
        scp = harness.running.scp
        eventually(lambda: scp.active_associations == 1, "the bridge accepted the connection")
        started = time.monotonic()
        harness._loop.run(harness.running.drain(), timeout=30)
        assert time.monotonic() - started < 2.0
