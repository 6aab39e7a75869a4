"""The consumer SDK's delivery machinery: coalesced acks (``_Acks``), the worker threads
of plain handlers (``_Workers``), and the reply and ack path against the real broker."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import aio_pika
import aiormq
import orjson
import pytest

from bridge.protocol.model import ENVELOPE_VERSION, Service
from bridge.sdk.consumer import Consumer, Request, _Acks, _Workers
from tests.harness import AMQP_URL, delete_queue

# -- _Acks against a channel that checks what RabbitMQ checks ------------------------------


class StrictChannel:
    """Takes acks as RabbitMQ does: the tag must be unacked, and ``multiple`` settles
    every unacked tag up to it. Anything else is a channel error, recorded (RabbitMQ would
    close the channel). Each ack may suspend first, as a put on aiormq's bounded write
    queue does, so that concurrent senders could overtake one another."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.unacked: set[int] = set()
        self.frames: list[tuple[int, bool]] = []
        self.errors: list[str] = []
        self.is_closed = False

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.rnd.random() < 0.5:
            await asyncio.sleep(0)
        self.frames.append((tag, multiple))
        if tag not in self.unacked:
            self.errors.append(f"unknown delivery tag {tag} (multiple={multiple})")
            raise aiormq.exceptions.ChannelInvalidStateError("closed by the broker")
        if multiple:
            self.unacked = {t for t in self.unacked if t > tag}
        else:
            self.unacked.discard(tag)

    def nack(self, tag: int) -> None:
        self.unacked.discard(tag)


@pytest.mark.parametrize("seed", range(8))
def test_acks_coalesce_out_of_order_completions_without_a_channel_error(seed: int) -> None:
    rnd = random.Random(seed)
    channel = StrictChannel(rnd)
    count = 1500
    nacked: list[int] = []

    async def main() -> None:
        acks = _Acks(cast(aiormq.abc.AbstractChannel, channel))

        async def handle(tag: int) -> None:
            for _ in range(rnd.randint(0, 6)):  # finishes out of order
                await asyncio.sleep(0)
            if rnd.random() < 0.05:  # failed: nacked by its own frame
                channel.nack(tag)
                nacked.append(tag)
                acks.settled(tag)
            else:
                acks.ack(tag)

        tasks = []
        for tag in range(1, count + 1):
            channel.unacked.add(tag)
            tasks.append(asyncio.create_task(handle(tag)))
            if rnd.random() < 0.3:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await acks.drain()

    asyncio.run(main())
    assert channel.errors == []
    assert channel.unacked == set(), "every request settled"
    assert nacked
    multiple = sum(1 for _, m in channel.frames if m)
    assert multiple > 0
    assert len(channel.frames) < count - len(nacked), "acks were coalesced"


def test_acks_of_later_requests_do_not_wait_for_a_slow_one() -> None:
    channel = StrictChannel(random.Random(0))
    channel.unacked = set(range(1, 1011))

    async def main() -> None:
        acks = _Acks(cast(aiormq.abc.AbstractChannel, channel))
        acks.ack(2)
        acks.ack(3)
        acks.ack(1)  # tags 1-3 done together: one multiple ack
        await acks.drain()
        assert channel.frames == [(3, True)]
        for tag in range(1010, 4, -1):  # tag 4 is still being handled
            acks.ack(tag)
            if tag % 7 == 0:
                await acks.drain()
        await acks.drain()
        assert sorted(channel.frames[1:]) == [(tag, False) for tag in range(5, 1011)]
        assert channel.unacked == {4}
        # What was acked meanwhile is remembered as one range, not a thousand tags.
        assert (acks._starts, acks._ends) == ([5], [1010])
        acks.ack(4)
        await acks.drain()
        assert channel.frames[-1] == (4, True)
        assert (acks._starts, acks._ends) == ([], [])
        channel.unacked |= {1011, 1012}
        acks.ack(1012)
        acks.ack(1011)
        await acks.drain()
        assert channel.frames[-1] == (1012, True), "coalescing resumed past the range"

    asyncio.run(main())
    assert channel.errors == []
    assert channel.unacked == set()


# -- _Workers ------------------------------------------------------------------------------


def test_workers_run_blocking_jobs_side_by_side_up_to_their_number() -> None:
    release = threading.Event()
    entered: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> str:
        with lock:
            entered.append(name)
        release.wait(10)
        return name.upper()

    def fail() -> None:
        raise ValueError("handler bug")

    async def main() -> None:
        workers = _Workers(asyncio.get_running_loop(), 3, "test-worker")
        try:
            futures = [workers.run(job, name) for name in ("a", "b", "c", "d")]
            await asyncio.sleep(0.3)
            # Three blocked jobs, three threads; the fourth waits for one of them.
            assert sorted(entered) == ["a", "b", "c"]
            assert workers._threads == 3
            release.set()
            assert await asyncio.gather(*futures) == ["A", "B", "C", "D"]
            with pytest.raises(ValueError, match="handler bug"):
                await workers.run(fail)
            assert workers._threads == 3
        finally:
            workers.shutdown()

    try:
        asyncio.run(main())
    finally:
        release.set()  # a failed assertion must not leave threads blocked


def test_workers_shutdown_cancels_queued_jobs() -> None:
    release = threading.Event()

    async def main() -> None:
        workers = _Workers(asyncio.get_running_loop(), 1, "test-worker")
        running = workers.run(release.wait, 10)
        queued = workers.run(lambda: "never")
        await asyncio.sleep(0.05)
        workers.shutdown()
        assert queued.cancelled()
        assert workers.run(lambda: "late").cancelled()
        release.set()
        assert await running is True

    try:
        asyncio.run(main())
    finally:
        release.set()


# -- against the broker --------------------------------------------------------------------


@pytest.fixture
def queue_name(broker: None) -> Iterator[str]:
    name = f"test-consumer-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queue(name)


def _envelope(request_id: str, service: Service = Service.C_ECHO) -> bytes:
    return orjson.dumps(
        {
            "version": ENVELOPE_VERSION,
            "id": request_id,
            "service": service.value,
            "sop_class_uid": "1.2.840.10008.1.1",
            "association": {"calling_ae": "TEST-SCU", "called_ae": "DICOM-BRIDGE"},
            "request": {"message_id": 1},
        }
    )


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, reply_to: str,
                   ids: list[str]) -> None:  # fmt: skip
    await asyncio.gather(*(
        channel.default_exchange.publish(
            aio_pika.Message(
                _envelope(request_id),
                correlation_id=request_id,
                reply_to=reply_to,
                type="c-echo",
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            ),
            routing_key=queue,
        )
        for request_id in ids
    ))  # fmt: skip


async def _remaining(queue: str) -> int:
    """Messages left in ``queue``: the unacked ones are back in it once their consumer's
    connection is closed."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def test_requests_finishing_out_of_order_are_answered_once_and_all_acked(
    queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain handlers that finish out of order, some failing: every request gets one
    reply, is acked (nothing left in the queue after the consumer is gone) with fewer
    ack frames than requests, and the broker never closes the channel over an ack."""
    count = 400
    frames: list[tuple[int, bool]] = []
    real_ack = aiormq.Channel.basic_ack

    async def counting_ack(self: aiormq.Channel, tag: int, multiple: bool = False,
                           wait: bool = True) -> None:  # fmt: skip
        frames.append((tag, multiple))
        await real_ack(self, tag, multiple=multiple, wait=wait)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", counting_ack)
    rnd = random.Random(7)
    delays: dict[str, float] = {}

    def handler(request: Request) -> int:
        time.sleep(delays[request.id])
        if request.id.endswith("7"):
            raise RuntimeError("handler bug")  # a failure reply, and still acked
        return 0

    async def main() -> tuple[list[Any], Consumer]:
        connection = await aio_pika.connect(AMQP_URL)
        replies: list[Any] = []
        first_reply, all_replies = asyncio.Event(), asyncio.Event()
        async with connection:
            channel = await connection.channel()
            reply_queue = await channel.declare_queue("", exclusive=True)

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                replies.append((message.correlation_id, message.type, orjson.loads(message.body)))
                first_reply.set()
                if len(replies) >= count:
                    all_replies.set()

            await reply_queue.consume(on_reply, no_ack=True)
            # Queued before the consumer starts (declared as the SDK declares it), so
            # that it has a full prefetch window to finish out of order.
            await channel.declare_queue(
                queue_name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            ids = [f"{uuid.uuid4().hex}{n % 10}" for n in range(count)]
            delays.update({i: rnd.choice((0, 0, 0.001, 0.003)) for i in ids})
            await _publish(channel, queue_name, reply_queue.name, ids)
            consumer = Consumer(AMQP_URL, f"test-{uuid.uuid4().hex[:8]}", queue_name)
            consumer.add(Service.C_ECHO, handler)
            await consumer.start()
            await asyncio.wait_for(first_reply.wait(), 30)
            first = consumer._acks
            await asyncio.wait_for(all_replies.wait(), 60)
            await asyncio.sleep(0.3)  # any duplicate reply would arrive now
            # A channel the broker closed over a bad ack would have been reopened, with
            # a tracker of its own.
            assert first is not None
            assert consumer._acks is first
            assert not first.channel.is_closed
            await consumer.close()
        return replies, consumer

    replies, consumer = asyncio.run(main())
    assert len(replies) == count
    assert len({r[0] for r in replies}) == count, "each request answered once"
    assert {r[1] for r in replies} == {"c-echo-reply"}
    failed = [r for r in replies if r[2]["status"] != 0]
    assert failed
    assert all(r[0].endswith("7") for r in failed)
    assert consumer.stats.handled + consumer.stats.failed == count
    assert asyncio.run(_remaining(queue_name)) == 0, "every request acked"
    assert 0 < len(frames) < 0.8 * count, "acks were coalesced"
    assert any(multiple for _, multiple in frames)


def test_reply_to_a_vanished_queue_is_counted_and_the_request_acked(queue_name: str) -> None:
    async def main() -> Consumer:
        consumer = Consumer(AMQP_URL, f"test-{uuid.uuid4().hex[:8]}", queue_name)
        consumer.add(Service.C_ECHO, lambda request: 0)
        await consumer.start()
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            gone = f"test-gone-{uuid.uuid4().hex[:8]}"  # no such queue: the reply returns
            await _publish(channel, queue_name, gone, [uuid.uuid4().hex])
            deadline = time.monotonic() + 10
            while consumer.stats.undeliverable_replies < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await consumer.close()
        return consumer

    consumer = asyncio.run(main())
    assert consumer.stats.undeliverable_replies == 1
    assert consumer.stats.handled == 1
    assert asyncio.run(_remaining(queue_name)) == 0
