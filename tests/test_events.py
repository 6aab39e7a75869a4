"""Fire-and-forget: association events and publish-only requests are never lost silently,
through broker outages (disk spool, replay) and restarts."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from pydicom import examples
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bridge.protocol.model import Service
from bridge.sdk.consumer import Request
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import AMQP_URL, BridgeHarness, Recorder, TcpProxy, association
from tests.waiting import eventually


class EventQueue:
    """A durable queue bound to the exchange with ``pattern``, read at the end."""

    def __init__(self, exchange: str, pattern: str = "event.#") -> None:
        self.name = f"test-events-{uuid.uuid4().hex[:8]}"
        asyncio.run(self._declare(exchange, pattern))

    async def _declare(self, exchange: str, pattern: str) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange_ = await channel.declare_exchange(exchange, "topic", durable=True)
            queue = await channel.declare_queue(self.name, durable=True)
            await queue.bind(exchange_, pattern)

    def drain(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(self.name, durable=True)
                found = []
                while (message := await queue.get(fail=False, no_ack=True)) is not None:
                    document = orjson.loads(message.body)
                    document["_properties"] = {
                        "routing_key": message.routing_key,
                        "persistent": message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                        "reply_to": message.reply_to,
                    }
                    found.append(document)
                return found

        return asyncio.run(read())

    def drain_until(
        self, enough: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Drain until what came is ``enough``; everything that came, in order."""
        found: list[dict[str, Any]] = []

        def more() -> bool:
            found.extend(self.drain())
            return enough(found)

        eventually(more, lambda: f"{what}; {len(found)} came", timeout=timeout, interval=0.05)
        return found

    def delete(self) -> None:
        async def delete() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.name)

        asyncio.run(delete())


@pytest.fixture
def events_queue(exchange: str) -> Iterator[Callable[..., EventQueue]]:
    made: list[EventQueue] = []

    def make(pattern: str = "event.#") -> EventQueue:
        queue = EventQueue(exchange, pattern)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.delete()


def _open_and_close(port: int, times: int) -> None:
    for _ in range(times):
        with association(port) as assoc:
            assert assoc.is_established


def test_association_events(bridge: BridgeHarness, events_queue: Callable[..., EventQueue]) -> None:
    queue = events_queue()
    _open_and_close(bridge.port, 3)
    eventually(lambda: bridge.running.events._pending == set(), "every event confirmed")
    events = queue.drain_until(lambda found: len(found) >= 6, "accepted and released, 3 times")
    kinds = [e["type"] for e in events]
    assert kinds.count("association-accepted") == 3
    assert kinds.count("association-released") == 3
    accepted = [e for e in events if e["type"] == "association-accepted"]
    assert accepted[0]["association"]["calling_ae"] == "TEST-SCU"
    props = accepted[0]["_properties"]
    assert props["routing_key"] == "event.association-accepted.TEST-SCU"
    assert props["persistent"]
    ids = {e["association"]["id"] for e in events}
    assert len(ids) == 3  # accepted and released of one association share its id


def test_events_survive_a_broker_cut_during_a_burst(
    make_bridge: BridgeFactory, events_queue: Callable[..., EventQueue]
) -> None:
    queue = events_queue()
    proxy = TcpProxy(("127.0.0.1", 5672))
    proxy.start()
    try:
        harness = make_bridge(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        harness.wait_ready()
        _open_and_close(harness.port, 10)
        proxy.stop()  # the broker goes away mid-burst
        _open_and_close(harness.port, 10)
        spool = harness.running.events._spool
        eventually(lambda: len(spool) >= 20, "the events of the cut spooled")
        proxy.start()
        eventually(lambda: len(spool) == 0, "the spool drained", timeout=20)
    finally:
        proxy.close()
    events = queue.drain_until(lambda found: len({e["id"] for e in found}) >= 40, "40 events")
    # Every event arrived; a publish cut before its confirm may come twice (at least once).
    unique = {e["id"] for e in events}
    assert len(unique) == 40
    kinds = [e["type"] for e in {e["id"]: e for e in events}.values()]
    assert kinds.count("association-accepted") == 20
    assert kinds.count("association-released") == 20


def test_spooled_events_are_replayed_after_a_restart(
    make_bridge: BridgeFactory, events_queue: Callable[..., EventQueue], tmp_path: Path
) -> None:
    queue = events_queue()
    spool = tmp_path / "spool"
    down = TcpProxy(("127.0.0.1", 5672))  # never started: the broker is unreachable
    first = make_bridge(amqp_url=f"amqp://guest:guest@127.0.0.1:{down.port}/", spool_dir=str(spool))
    _open_and_close(first.port, 4)
    eventually(lambda: len(first.running.events._spool) == 8, "8 events spooled")
    first.stop()
    down.close()
    assert len(list(spool.glob("*.msg"))) == 8
    second = make_bridge(spool_dir=str(spool))
    second.wait_ready()
    eventually(lambda: len(second.running.events._spool) == 0, "the spool replayed", timeout=10)

    def ours(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["association"]["calling_ae"] == "TEST-SCU"]

    def replayed(found: list[dict[str, Any]]) -> bool:
        return len({e["id"] for e in ours(found)}) >= 8

    events = ours(queue.drain_until(replayed, "the 8 spooled events delivered"))
    assert len({e["id"] for e in events}) >= 8


# -- publish-only requests ----------------------------------------------------------------


def test_publish_only_c_store_is_answered_without_waiting_for_a_consumer(
    make_bridge: BridgeFactory, make_consumer: ConsumerFactory
) -> None:
    harness = make_bridge(publish_only="c-store", reply_timeout=2.0)
    harness.wait_ready()
    arrived = threading.Event()
    seen: list[Request] = []

    def slow(request: Request) -> int:
        seen.append(request)
        arrived.set()
        time.sleep(3)  # the slowness under test: far beyond the reply timeout
        return 0

    make_consumer(slow, (Service.C_STORE,))
    with association(harness.port, [CTImageStorage]) as assoc:
        started = time.perf_counter()
        status = assoc.send_c_store(examples.ct)
        elapsed = time.perf_counter() - started
    assert status.Status == 0
    assert elapsed < 1.0
    assert arrived.wait(5)
    assert seen[0].envelope["reply_expected"] is False
    assert seen[0].envelope["deadline"] is None
    assert seen[0].dataset is not None
    assert seen[0].dataset.SOPInstanceUID == examples.ct.SOPInstanceUID


def test_publish_only_while_the_broker_is_down_is_spooled_then_delivered(
    make_bridge: BridgeFactory, events_queue: Callable[..., EventQueue]
) -> None:
    stores = events_queue("c-store.#")
    proxy = TcpProxy(("127.0.0.1", 5672))
    try:
        harness = make_bridge(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", publish_only="c-store"
        )
        with association(harness.port, [CTImageStorage]) as assoc:
            assert assoc.send_c_store(examples.ct).Status == 0  # safe on disk
        proxy.start()
        harness.wait_ready(timeout=15)
        eventually(lambda: len(harness.running.events._spool) == 0, "spool drained", timeout=15)
    finally:
        proxy.close()
    delivered = stores.drain_until(bool, "the stored instance delivered")
    assert [d["service"] for d in delivered] == ["c-store"]
    assert delivered[0]["_properties"]["persistent"]
    assert delivered[0]["_properties"]["reply_to"] is None


def test_publish_only_fails_when_it_cannot_be_held(
    make_bridge: BridgeFactory, exchange: str, recorder: Recorder
) -> None:
    down = TcpProxy(("127.0.0.1", 5672))
    try:
        full = make_bridge(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{down.port}/",
            publish_only="c-store",
            spool_max_bytes=10_000,  # CT_small does not fit
        )
        with association(full.port, [CTImageStorage, Verification]) as assoc:
            status = assoc.send_c_store(examples.ct)
        assert status.Status == 0xA700
        assert status.ErrorComment.startswith("spool full")
    finally:
        down.close()


def test_publish_only_nobody_bound_is_refused(make_bridge: BridgeFactory) -> None:
    harness = make_bridge(publish_only="c-store")
    harness.wait_ready()
    with association(harness.port, [CTImageStorage]) as assoc:
        status = assoc.send_c_store(examples.ct)
    assert status.Status == 0xA700
    assert status.ErrorComment.startswith("no queue bound")
