"""Several consumer processes on one queue: ``example-consumer --processes N`` and
``bridge.sdk.processes.run_processes``, as real processes against the real broker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import orjson
import pytest

from bridge.config import ConsumerSettings, load
from bridge.errors import StartupError
from bridge.example.consumer import build
from bridge.protocol.model import ENVELOPE_VERSION
from bridge.sdk.consumer import Consumer
from bridge.sdk.processes import run_processes
from tests.harness import AMQP_URL, delete_queue, free_port
from tests.test_cli import Process, run
from tests.waiting import eventually

pytestmark = pytest.mark.process  # every test here starts processes

UP = re.compile(r"(\d+) worker processes consuming \(pids ([\d, ]+)\)")


class Pool:
    """``dicom-bridge example-consumer --processes N`` on a queue of its own."""

    def __init__(self, exchange: str, data_dir: Path, processes: int = 2) -> None:
        self.queue = f"test-processes-{uuid.uuid4().hex[:8]}"
        self.size = processes
        self.process = Process(
            "example-consumer",
            "--processes", str(processes),
            "--queue", self.queue,
            "--data-dir", str(data_dir),
            env={"BRIDGE_EXCHANGE": exchange, "BRIDGE_AMQP_URL": AMQP_URL},
        )  # fmt: skip
        self.pid = self.process.proc.pid

    def workers_up(self, timeout: float = 30.0) -> list[int]:
        """The pids of the next 'N worker processes consuming' line."""
        match = UP.search(self.process.wait_for("worker processes consuming", timeout))
        assert match is not None
        assert int(match[1]) == self.size
        pids = [int(pid) for pid in match[2].split(", ")]
        assert len(set(pids)) == self.size
        return pids

    def stop(self) -> int:
        return self.process.stop(timeout=15)


@pytest.fixture
def pool(exchange: str, tmp_path: Path) -> Iterator[Pool]:
    running = Pool(exchange, tmp_path / "store")
    try:
        yield running
    finally:
        if running.process.proc.poll() is None:
            running.process.proc.kill()
            running.process.proc.wait(10)
        delete_queue(running.queue)


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (its workers, multiprocessing's resource
    tracker), read from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, parent = fields[0], int(fields[1])
        if parent == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def echo(request_id: str) -> bytes:
    return orjson.dumps(
        {
            "version": ENVELOPE_VERSION,
            "id": request_id,
            "service": "c-echo",
            "sop_class_uid": "1.2.840.10008.1.1",
            "association": {"calling_ae": "TEST-SCU", "called_ae": "DICOM-BRIDGE"},
            "request": {"message_id": 1},
        }
    )


async def consumers_and_answering_pids(queue: str, count: int) -> tuple[int, set[int]]:
    """The queue's consumer count, and the pids of the processes that answered ``count``
    C-ECHO requests published to it at once. The SDK's reply ``message_id`` starts with
    the pid of the process that sent it."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        consumers = int(declared.declaration_result.consumer_count or 0)
        replies = await channel.declare_queue("", exclusive=True)
        pids: set[int] = set()
        answered: set[str] = set()
        done = asyncio.Event()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            assert orjson.loads(message.body)["status"] == 0
            pids.add(int((message.message_id or "").split(".")[0]))
            answered.add(message.correlation_id or "")
            if len(answered) == count:
                done.set()

        await replies.consume(on_reply, no_ack=True)
        ids = [uuid.uuid4().hex for _ in range(count)]
        for request_id in ids:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    echo(request_id),
                    correlation_id=request_id,
                    reply_to=replies.name,
                    type="c-echo",
                ),
                routing_key=queue,
            )
        await asyncio.wait_for(done.wait(), 30)
    assert answered == set(ids)
    return consumers, pids


@pytest.mark.slow
def test_every_worker_process_consumes_and_answers(pool: Pool) -> None:
    workers = pool.workers_up()
    assert set(workers) <= children(pool.pid)
    consumers, answering = asyncio.run(consumers_and_answering_pids(pool.queue, 40))
    assert consumers == 2, "one consumer per worker process on the shared queue"
    assert answering == set(workers), "both worker processes answered requests"
    assert pool.pid not in answering, "the supervising process does not consume"
    assert pool.stop() == 0


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_exits_0(pool: Pool) -> None:
    workers = pool.workers_up()
    family = children(pool.pid)
    assert set(workers) <= family
    started = time.monotonic()
    assert pool.stop() == 0
    assert time.monotonic() - started < 5
    pool.process.wait_for("SIGTERM: stopping 2 worker processes")
    eventually(lambda: not any(alive(pid) for pid in family), "no orphan left", timeout=5)


@pytest.mark.slow
def test_a_killed_worker_is_replaced(pool: Pool) -> None:
    first = pool.workers_up()
    victim, survivor = first
    os.kill(victim, signal.SIGKILL)
    line = pool.process.wait_for(f"worker process {victim} was killed by SIGKILL")
    assert "starting another" in line
    again = pool.workers_up()
    assert victim not in again
    assert survivor in again, "the other worker went on"
    assert set(again) <= children(pool.pid)
    assert not alive(victim)
    consumers, answering = asyncio.run(consumers_and_answering_pids(pool.queue, 40))
    assert (consumers, answering) == (2, set(again))
    assert pool.stop() == 0


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(pool: Pool) -> None:
    workers = pool.workers_up()
    pool.process.proc.kill()
    pool.process.proc.wait(5)
    eventually(lambda: not any(alive(pid) for pid in workers), "workers gone", timeout=10)
    eventually(
        lambda: pool.process.drain().count("the supervising process is gone") == 2,
        "each worker said why it stopped",
    )


@pytest.mark.parametrize("value", ["0", "-2"])
def test_processes_below_one_is_refused(value: str) -> None:
    result = run("example-consumer", "--processes", value)
    assert result.returncode == 2
    assert "dicom-bridge: error: invalid configuration: processes" in result.stderr
    assert "greater than or equal to 1" in result.stderr


@pytest.mark.slow
def test_an_unreachable_broker_ends_the_pool_with_an_error(tmp_path: Path) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    started = time.monotonic()
    result = run(
        "example-consumer",
        "--processes", "2",
        "--amqp-url", url,
        "--data-dir", str(tmp_path / "store"),
    )  # fmt: skip
    assert time.monotonic() - started < 25
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("dicom-bridge: error: worker processes keep failing to start (5")
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1:" in error
    assert "s3cret" not in result.stderr
    assert "starting another in" in result.stderr


def exclusive_consumer(settings: ConsumerSettings) -> Consumer:
    """Built in a worker process: must be importable from there."""
    return build(settings, exclusive=True)


def test_an_exclusive_queue_is_not_shared_by_worker_processes(tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = load(ConsumerSettings, amqp_url=url, data_dir=tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(StartupError, match="is exclusive: worker processes cannot share it"):
        run_processes(exclusive_consumer, 2, settings)
    assert time.monotonic() - started < 15, "refused at the first worker, not retried"


def test_run_processes_wants_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_processes(exclusive_consumer, 0, load(ConsumerSettings))
