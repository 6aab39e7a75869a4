"""bridge._pynetdicom.reactor: pynetdicom's association loops, event-driven. Same behaviour as the
polling loops (requests, release, abort, network timeout), none of their idle cost. That
the loops it copies are still pynetdicom's: tests/test_pynetdicom_contract.py."""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from bridge._pynetdicom import reactor
from tests.conftest import BridgeFactory
from tests.harness import BridgeHarness, Recorder, assoc_rq, association, send_raw
from tests.waiting import eventually


def _thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one thread of this process."""
    assert native_id is not None
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _acceptors(bridge: BridgeHarness, count: int) -> list[Association]:
    ae = bridge.running.scp._ae
    eventually(
        lambda: sum(a.is_established for a in ae.active_associations) == count,
        f"{count} associations established",
    )
    return list(ae.active_associations)


def _idle_cpu(bridge: BridgeHarness, count: int, seconds: float) -> float:
    """CPU seconds the bridge's threads for ``count`` open, idle associations use."""
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(association(bridge.port))
        acceptors = _acceptors(bridge, count)
        threads = [t for a in acceptors for t in (a, a.dul)]
        before = sum(_thread_cpu(t.native_id) for t in threads)
        time.sleep(seconds)
        return sum(_thread_cpu(t.native_id) for t in threads) - before


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_idle_associations_cost_no_cpu(make_bridge: BridgeFactory) -> None:
    event_driven = make_bridge(event_reactors=True)
    polling = make_bridge(event_reactors=False)
    event_driven.wait_ready()
    polling.wait_ready()
    idle = _idle_cpu(event_driven, 4, 1.0)
    polled = _idle_cpu(polling, 4, 1.0)
    print(f"idle CPU over 1 s, 4 associations: {idle:.3f} s event-driven, {polled:.3f} s polling")
    # 8 threads waking every IDLE_WAKE (20 ms) need about a millisecond; pynetdicom's
    # 1 ms polling takes tens of milliseconds per association and second.
    assert idle <= 0.02, f"{idle:.3f} CPU s for 4 idle associations over 1 s"
    assert polled > 2 * idle + 0.02, f"polling {polled:.3f} s vs event-driven {idle:.3f} s"


def _event_information() -> Dataset:
    info = Dataset()
    info.TransactionUID = "1.2.826.0.1.3680043.8.498.3"
    return info


@pytest.fixture(params=[True, False], ids=["event-driven", "polling"])
def any_bridge(request: pytest.FixtureRequest, make_bridge: BridgeFactory) -> BridgeHarness:
    bridge = make_bridge(event_reactors=request.param)
    bridge.wait_ready()
    return bridge


def test_requests_back_to_back_and_release(any_bridge: BridgeHarness, recorder: Recorder) -> None:
    contexts = ["1.2.840.10008.1.1", str(StorageCommitmentPushModel)]
    with association(any_bridge.port, contexts) as assoc:
        started = time.perf_counter()
        for n in range(20):
            assert assoc.send_c_echo(msg_id=2 * n + 1).Status == 0
            status, _ = assoc.send_n_event_report(
                _event_information(), 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
            )
            assert status.Status == 0
        elapsed = time.perf_counter() - started
    assert len(recorder.requests) == 40
    # 40 broker round trips; a lost wake-up would cost IDLE_WAKE (20 ms) each.
    assert elapsed < 40 * reactor.IDLE_WAKE, f"{elapsed:.2f} s for 40 requests"
    eventually(
        lambda: any_bridge.running.scp.active_associations == 0, "no association left", timeout=2.0
    )


def test_peer_abort_ends_the_association(any_bridge: BridgeHarness) -> None:
    ae = AE(ae_title="TEST-SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", any_bridge.port, ae_title="DICOM-BRIDGE")
    try:
        assert assoc.is_established
        _acceptors(any_bridge, 1)
        assoc.abort()
        started = time.perf_counter()
        eventually(
            lambda: any_bridge.running.scp.active_associations == 0,
            "no association left",
            timeout=2.0,
        )
        assert time.perf_counter() - started < 0.5
        assert not any_bridge.running.scp._guards, "EVT_CONN_CLOSE did not run"
    finally:
        ae.shutdown()


@pytest.mark.parametrize("event_reactors", [True, False], ids=["event-driven", "polling"])
def test_network_timeout_still_fires(make_bridge: BridgeFactory, event_reactors: bool) -> None:
    bridge = make_bridge(event_reactors=event_reactors, reply_timeout=0.5, network_timeout=1.0)
    bridge.wait_ready()
    with association(bridge.port) as assoc:
        started = time.perf_counter()
        eventually(lambda: not assoc.is_established, "the association ended", timeout=5.0)
        assert 0.9 < time.perf_counter() - started < 3.0


def test_many_associations_open_and_close(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    bridge.wait_ready()
    started = time.perf_counter()
    for _ in range(20):
        with association(bridge.port):
            pass
    per_association = (time.perf_counter() - started) / 20
    eventually(
        lambda: bridge.running.scp.active_associations == 0, "no association left", timeout=2.0
    )
    # Set-up and release must not wait for a timer tick: a missed wake-up of the DUL
    # (stop_dul, Sta13) would add IDLE_WAKE or more to each.
    assert per_association < 0.25, f"{per_association * 1000:.0f} ms per association"


def test_out_of_order_pdu_aborts_instead_of_killing_the_thread(
    bridge: BridgeHarness, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    # A valid A-ASSOCIATE-RQ and bytes that are no PDU: pynetdicom's loop raised
    # InvalidEventError ('Evt7' in 'Sta13') in the DUL thread.
    send_raw(bridge.port, assoc_rq() + b"\x99" * 100)
    eventually(
        lambda: bridge.running.scp.active_associations == 0, "no association left", timeout=5.0
    )
    assert died == []
    with association(bridge.port) as assoc:
        assert assoc.send_c_echo().Status == 0
