"""The broker glue every connection goes through: the reconnect policy and its loop, the
translation of publish failures, and connect() against the local broker and dead ones."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection

from bridge.errors import BrokerUnavailable, Unroutable
from bridge.transport import broker
from tests.harness import AMQP_URL, free_port


def test_one_reconnect_policy_capped_exponential() -> None:
    assert list(itertools.islice(broker.RECONNECT.delays(), 7)) == [
        0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0,
    ]  # fmt: skip


def _raised(exc: Exception) -> Exception:
    try:
        with broker.publishing("event.x.AE", 1.5):
            raise exc
    except Exception as translated:
        return translated
    raise AssertionError("nothing raised")


def test_publish_failures_are_translated() -> None:
    # Built without their constructors, which want the broker's frames.
    returned = aiormq.exceptions.PublishError.__new__(aiormq.exceptions.PublishError)
    nacked = aiormq.exceptions.DeliveryError.__new__(aiormq.exceptions.DeliveryError)
    cases: list[tuple[Exception, type[Exception], str]] = [
        (returned, Unroutable, "no queue bound for event.x.AE"),
        (nacked, broker.Nacked, "broker refused the request (nack)"),
        (TimeoutError(), broker.NotConfirmed, "broker did not confirm within 1.5 s"),
        (
            aiormq.exceptions.ChannelInvalidStateError("closed"),
            BrokerUnavailable,
            "publish failed: ChannelInvalidStateError",
        ),
        (ConnectionResetError(), BrokerUnavailable, "publish failed: ConnectionResetError"),
    ]
    for raised, kind, message in cases:
        translated = _raised(raised)
        assert type(translated) is kind
        assert str(translated) == message
    assert issubclass(broker.Nacked, BrokerUnavailable)
    assert issubclass(broker.NotConfirmed, BrokerUnavailable)
    assert isinstance(_raised(ValueError("a bug")), ValueError)  # not a broker failure


def test_keep_trying_logs_each_failure_redacted_then_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "amqp://guest:s3cret@127.0.0.1:1/"
    attempts: list[int] = []
    released: list[int] = []

    async def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "refused by s3cret")
        return "up"

    async def release() -> None:
        released.append(1)

    async def main() -> str:
        return await broker.keep_trying(
            attempt,
            url=url,
            trouble="broker unreachable",
            logger=logging.getLogger("tests.broker"),
            after_failure=release,
            policy=broker.Backoff(first=0.01, cap=0.015),
        )

    with caplog.at_level(logging.WARNING, "tests.broker"):
        assert asyncio.run(main()) == "up"
    assert (len(attempts), len(released)) == (3, 2)
    lines = [record.getMessage() for record in caplog.records]
    assert (
        lines
        == [
            "broker unreachable at amqp://guest:***@127.0.0.1:1/ "
            "(ConnectionRefusedError: [Errno 111] refused by ***); retrying in 0.0 s",
        ]
        * 2
    )
    assert "s3cret" not in caplog.text


def test_keep_trying_stops_when_cancelled_even_if_the_attempt_hides_the_cancel() -> None:
    """aio-pika turns a cancel in mid-connect into a connection error: the retry loop must
    still end (a bridge that cannot bind its port unwinds and exits)."""
    attempts: list[int] = []

    async def attempt() -> None:
        attempts.append(1)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionRefusedError(111, "connect call failed") from None

    async def nothing() -> None:
        return None

    async def main() -> None:
        task = asyncio.create_task(
            broker.keep_trying(
                attempt,
                url="amqp://127.0.0.1:1/",
                trouble="unreachable",
                logger=logging.getLogger("tests.broker"),
                after_failure=nothing,
                policy=broker.Backoff(first=0.01, cap=0.01),
            )
        )
        await asyncio.sleep(0.05)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done, "keep_trying went on retrying after its cancel"
        assert task.cancelled()

    asyncio.run(main())
    assert len(attempts) == 1


def test_ready_within() -> None:
    async def main() -> tuple[bool, bool]:
        ready = asyncio.Event()
        before = await broker.ready_within(ready, 0.05)
        ready.set()
        return before, await broker.ready_within(ready, 0.05)

    assert asyncio.run(main()) == (False, True)


@pytest.mark.usefixtures("broker")
def test_connect_names_the_connection_and_takes_the_policy() -> None:
    async def main() -> None:
        plain = await broker.connect(AMQP_URL, purpose="test", timeout=5, heartbeat=7)
        robust = await broker.connect(AMQP_URL, purpose="test", robust=True)
        try:
            assert not isinstance(plain, AbstractRobustConnection)
            assert isinstance(robust, aio_pika.RobustConnection)
            assert robust.reconnect_interval == broker.RECONNECT.cap
            assert "heartbeat=7" in str(plain)  # the URL it connected with
            for connection in (plain, robust):
                properties = connection.kwargs["client_properties"]
                assert properties["connection_name"] == (
                    f"dicom-bridge test {socket.gethostname()} pid {os.getpid()}"
                )
        finally:
            await plain.close()
            await robust.close()

    asyncio.run(main())


@pytest.mark.parametrize("robust", [False, True])
def test_connect_to_a_dead_port_fails_and_leaves_nothing_running(robust: bool) -> None:
    async def main() -> None:
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        with pytest.raises(broker.CONNECT_ERRORS):
            await broker.connect(url, purpose="test", robust=robust, timeout=2)
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_cancelled_robust_connect_stops_retrying() -> None:
    """A broker that accepts the socket and never speaks: cancelling the attempt (as
    close() does) closes the connection, so aio-pika's own retrying ends with it."""

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        attempt = asyncio.create_task(
            broker.connect(f"amqp://guest:guest@127.0.0.1:{port}/", purpose="test", robust=True)
        )
        await asyncio.sleep(0.3)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        assert not [t for t in left if "connection_factory" in repr(t.get_coro())], left

    asyncio.run(main())
