"""SCP logic against the in-process transport: error translation and the seam backstop.

The same behaviours are tested over the real broker in test_failures.py; these cover
what a real broker cannot be made to do on demand (a bug inside the bridge, a coroutine
that never returns).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence

import pytest
from pydicom import examples
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bridge.config import BridgeSettings
from bridge.errors import BrokerUnavailable, ReplyTimeout, Unroutable
from bridge.scp.server import BridgeSCP
from bridge.transport import Outbound
from bridge.transport.memory import MemoryTransport
from bridge.transport.seam import Seam
from tests.harness import LoopThread, association, timed

Responder = Callable[[Outbound], Sequence[bytes] | Awaitable[Sequence[bytes]]]


@pytest.fixture
def scp() -> Iterator[Callable[..., tuple[BridgeSCP, MemoryTransport]]]:
    loop = LoopThread("memory-loop")
    started: list[BridgeSCP] = []

    def make(respond: Responder, **overrides: float) -> tuple[BridgeSCP, MemoryTransport]:
        async def responder(message: Outbound) -> Sequence[bytes]:
            result = respond(message)
            if inspect.isawaitable(result):
                return await result
            return result

        transport = MemoryTransport(responder)
        settings = BridgeSettings(host="127.0.0.1", port=0, **overrides)  # type: ignore[arg-type]
        server = BridgeSCP(settings, transport, Seam(loop.loop))
        server.start()
        started.append(server)
        return server, transport

    yield make
    for server in started:
        server.stop()
    loop.stop()


def test_success_path_publishes_one_message(
    scp: Callable[..., tuple[BridgeSCP, MemoryTransport]],
) -> None:
    server, transport = scp(lambda message: [b'{"status": 0}'])
    with association(server.port, [Verification, CTImageStorage]) as assoc:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(examples.ct).Status == 0
    echo, store = transport.sent
    assert echo.routing_key == "c-echo.1_2_840_10008_1_1.TEST-SCU"
    assert store.type == "c-store"
    assert store.expiration == 10.0
    assert store.headers["sop-class"] == str(CTImageStorage)
    assert store.headers["ce-id"] == store.correlation_id
    assert all(call.closed for call in transport.calls)


@pytest.mark.parametrize(
    ("error", "echo_status", "store_status"),
    [
        (Unroutable("no queue bound for x"), 0x0110, 0xA700),
        (BrokerUnavailable("not connected to the broker"), 0x0110, 0xA700),
        (ReplyTimeout("no reply within 1 s"), 0x0110, 0xC001),
        (RuntimeError("a bug"), 0x0110, 0xC211),
    ],
    ids=["unroutable", "unavailable", "timeout", "internal"],
)
def test_errors_become_failure_statuses(
    scp: Callable[..., tuple[BridgeSCP, MemoryTransport]],
    error: Exception,
    echo_status: int,
    store_status: int,
) -> None:
    def fail(message: Outbound) -> Sequence[bytes]:
        raise error

    server, _ = scp(fail)
    with association(server.port, [Verification, CTImageStorage]) as assoc:
        echo = assoc.send_c_echo()
        store = assoc.send_c_store(examples.ct)
        assert assoc.is_established
    assert (echo.Status, store.Status) == (echo_status, store_status)
    expected = "bridge internal error" if isinstance(error, RuntimeError) else str(error)
    assert store.ErrorComment == expected


@pytest.mark.slow
def test_seam_backstop_answers_when_the_loop_never_does(
    scp: Callable[..., tuple[BridgeSCP, MemoryTransport]],
) -> None:
    async def hang(message: Outbound) -> Sequence[bytes]:
        await asyncio.sleep(3600)
        return []

    # The publish never completes: only the seam's own deadline can answer the peer,
    # at publish_timeout + reply_timeout + 1 s.
    server, _ = scp(hang, reply_timeout=0.5, publish_timeout=0.1)
    with association(server.port, [Verification]) as assoc:
        status, elapsed = timed(assoc.send_c_echo)
    assert status.Status == 0x0110
    assert status.ErrorComment == "no answer within 1.6 s"
    assert 1.5 < elapsed < 3.0


def test_seam_refuses_the_loop_thread_and_a_closed_loop() -> None:
    loop = LoopThread("seam-test")
    seam = Seam(loop.loop)

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="event loop thread"):
            seam.run(asyncio.sleep(0), timeout=1)

    loop.run(inside())
    assert seam.run(asyncio.sleep(0, result=42), timeout=1) == 42
    loop.stop()
    with pytest.raises(BrokerUnavailable):
        seam.run(asyncio.sleep(0), timeout=1)


def test_seam_timeout_cancels_the_coroutine() -> None:
    loop = LoopThread("seam-cancel")
    seam = Seam(loop.loop)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ReplyTimeout):
        seam.run(forever(), timeout=0.2)
    loop.run(asyncio.wait_for(cancelled.wait(), 2))
    loop.stop()
