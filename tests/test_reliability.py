"""Faults between the broker and the consumers: a consumer dying mid-request, poison
messages, and a broker memory alarm."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import orjson
import pytest
from pydicom import examples
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bridge.protocol.model import Service
from bridge.sdk.consumer import Consumer, Request
from bridge.transport.broker import connection_name
from tests.conftest import BridgeFactory
from tests.harness import AMQP_URL, BridgeHarness, LoopThread, TcpProxy, association, timed
from tests.waiting import eventually


class Worker:
    """An SDK consumer on a shared durable queue, in its own loop and behind its own TCP
    proxy to the broker: one 'process' that the test can kill."""

    def __init__(self, exchange: str, queue: str, handler: Any, **options: Any) -> None:
        self.proxy = TcpProxy(("127.0.0.1", 5672))
        self.proxy.start()
        self.loop = LoopThread(f"worker-{queue}")
        url = f"amqp://guest:guest@127.0.0.1:{self.proxy.port}/"
        self.consumer = Consumer(url, exchange, queue, **options)
        self.consumer.add(Service.C_ECHO, handler)
        self.consumer.add(Service.C_STORE, handler)
        self.loop.run(self.consumer.start())

    def die(self) -> None:
        """Drop the connection the way a killed process does: no ack, no reply."""
        self.proxy.stop()

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # it may be dead already
            self.loop.run(self.consumer.close(), timeout=10)
        self.loop.stop()
        self.proxy.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _delete_queues(*names: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"test-reliability-{uuid.uuid4().hex[:8]}"
    yield name
    _run(_delete_queues(name, f"{name}.dead"))


def test_consumer_dying_mid_request_is_replaced_by_another(
    bridge: BridgeHarness, exchange: str, queue_name: str
) -> None:
    first_saw = threading.Event()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def stuck(request: Request) -> int:
        seen["a"].append(request.id)
        first_saw.set()
        time.sleep(30)  # never answers: its process is about to die
        return 0

    def healthy(request: Request) -> int:
        seen["b"].append(request.id)
        return 0

    a = Worker(exchange, queue_name, stuck)
    b: Worker | None = None
    results: list[int] = []
    try:
        peer = threading.Thread(target=lambda: results.append(_echo(bridge.port)), name="peer")
        peer.start()
        assert first_saw.wait(5)
        b = Worker(exchange, queue_name, healthy)
        a.die()
        peer.join(10)
        assert results == [0], "the redelivered request was answered by the other consumer"
        # Same request, same id: the idempotency key a consumer deduplicates with.
        assert seen["a"] == seen["b"]
        assert len(seen["b"]) == 1
    finally:
        a.stop()
        if b is not None:
            b.stop()


def _echo(port: int) -> int:
    with association(port, [Verification]) as assoc:
        return int(assoc.send_c_echo().Status)


@pytest.mark.slow
def test_consumer_dying_with_no_other_fails_at_the_deadline(
    make_bridge: BridgeFactory, exchange: str, queue_name: str
) -> None:
    harness = make_bridge(reply_timeout=2.0)
    harness.wait_ready()
    saw = threading.Event()

    def stuck(request: Request) -> int:
        saw.set()
        time.sleep(30)
        return 0

    a = Worker(exchange, queue_name, stuck)
    try:
        results: list[tuple[int, float]] = []
        peer = threading.Thread(target=lambda: results.append(timed(lambda: _echo(harness.port))))
        peer.start()
        assert saw.wait(5)
        a.die()
        peer.join(10)
        ((status, elapsed),) = results
        assert status == 0x0110
        assert 1.5 < elapsed < 3.5
    finally:
        a.stop()


def test_poison_request_is_dead_lettered_after_bounded_deliveries(
    make_bridge: BridgeFactory, exchange: str, queue_name: str
) -> None:
    """Each delivery kills its consumer (simulated by requeueing without an answer); the
    SDK refuses the request on the delivery the limit allows and dead-letters it."""
    harness = make_bridge(reply_timeout=8.0)
    harness.wait_ready()
    dead = f"{queue_name}.dead"
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    deliveries: list[int] = []
    ran: list[str] = []

    async def crashing_consumers() -> aio_pika.abc.AbstractConnection:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        await channel.declare_queue(dead, durable=True)
        exchange_ = await channel.declare_exchange(exchange, "topic", durable=True)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum", **arguments}
        )
        await queue.bind(exchange_, "c-echo.#")

        async def crash(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            count = (message.headers or {}).get("x-delivery-count", 0)
            deliveries.append(count if isinstance(count, int) else 0)
            await message.nack(requeue=True)

        await queue.consume(crash)
        await asyncio.sleep(0)
        return connection

    loop = LoopThread("crashers")
    connection = loop.run(crashing_consumers())
    worker: Worker | None = None
    try:
        results: list[tuple[int, float]] = []
        peer = threading.Thread(target=lambda: results.append(timed(lambda: _echo(harness.port))))
        peer.start()
        eventually(lambda: len(deliveries) >= 2, "the request delivered twice")
        loop.run(connection.close())  # the crashing consumers are gone...

        def handler(request: Request) -> int:
            ran.append(request.id)
            return 0

        worker = Worker(  # ...and a healthy SDK consumer sees the third delivery
            exchange, queue_name, handler, max_deliveries=2, queue_arguments=arguments
        )
        peer.join(10)
        ((status, elapsed),) = results
        assert status == 0x0110  # the SDK's answer for a poison request, not a timeout
        assert elapsed < 6
        assert not ran, "the handler must not run on a poison request"
        assert worker.consumer.stats.poison == 1
    finally:
        if worker is not None:
            worker.stop()
        loop.stop()

    async def dead_letters() -> list[dict[str, Any]]:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(dead, durable=True)
            found = []
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                found.append(orjson.loads(message.body))
            return found

    letters = _run(dead_letters())
    assert [letter["service"] for letter in letters] == ["c-echo"]


# -- broker alarm -------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


@pytest.fixture
def memory_alarm(broker: None) -> Iterator[None]:
    """Raise the broker's memory alarm (a watermark no node can meet); restore it after."""
    before = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    original = before.splitlines()[-1] if before else "0.4"
    try:
        yield
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", original)


def _connection_states() -> dict[str, str]:
    out = _rabbitmqctl("list_connections", "client_properties", "state", "--formatter", "json")
    states = {}
    for row in orjson.loads(out):
        properties = {key: value for key, _, value in row["client_properties"]}
        states[str(properties.get("connection_name", ""))] = row["state"]
    return states


@pytest.mark.process
@pytest.mark.slow
def test_broker_memory_alarm_fails_publishes_not_replies(
    make_bridge: BridgeFactory, recorder: Any, memory_alarm: None
) -> None:
    harness = make_bridge(publish_timeout=1.0, reply_timeout=3.0)
    harness.wait_ready()
    http = harness.running.health.port
    with association(harness.port, [Verification, CTImageStorage]) as assoc:
        assert assoc.send_c_echo().Status == 0
        _rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            store, elapsed = timed(lambda: assoc.send_c_store(examples.ct))
            assert store.Status == 0xA700
            assert store.ErrorComment == "broker did not confirm within 1 s"
            assert elapsed < 2.5
            assert harness.running.transport.blocked
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=5)
            assert caught.value.code == 503
            # Only the publishing connection is blocked. The reply connection never
            # publishes, so the broker keeps delivering to it ('blocking' means: would
            # block on its first publish).
            states = _connection_states()
            assert states.get(connection_name("publish")) == "blocked", states
            replies = states.get(connection_name("replies"))
            assert replies
            assert replies in ("running", "blocking"), states
        finally:
            _rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        transport = harness.running.transport
        eventually(lambda: not transport.blocked, "the publisher unblocked", timeout=10)
        assert assoc.send_c_echo().Status == 0
