"""Test harness: a real bridge and real consumers on the local broker, in background loops.

Tests are plain synchronous functions because pynetdicom's SCU API blocks; the bridge and
consumers run in their own event loop threads, as they do in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

import aio_pika
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from bridge.config import BridgeSettings
from bridge.ops import service
from bridge.protocol import part10
from bridge.protocol.model import Service
from bridge.sdk.consumer import Consumer, Handler, Request
from bridge.transport.bulkstore import path_of
from tests.waiting import eventually

T = TypeVar("T")
P = ParamSpec("P")


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


def stopping(make: Callable[P, S]) -> Iterator[Callable[P, S]]:
    """A factory fixture's body: yields ``make``, then stops what it made, in the order it
    made them (``yield from stopping(make)``)."""
    started: list[S] = []

    def tracked(*args: P.args, **kwargs: P.kwargs) -> S:
        thing = make(*args, **kwargs)
        started.append(thing)
        return thing

    yield tracked
    for thing in started:
        thing.stop()


AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` executes a coroutine there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class BridgeHarness:
    """A bridge started in-process on a free port."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self._loop = LoopThread("bridge-loop")
        self._stopped = False
        self.running = self._loop.run(service.start(settings))

    @property
    def port(self) -> int:
        return self.running.port

    def wait_ready(self, timeout: float = 10.0) -> None:
        if not self._loop.run(self.running.transport.wait_ready(timeout), timeout + 1):
            raise AssertionError("bridge did not connect to the broker")

    def stop(self) -> None:
        """Stop the bridge; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self._loop.run(self.running.stop(), timeout=30)
        self._loop.stop()


def bridge_settings(exchange: str, spool_dir: Path, **overrides: Any) -> BridgeSettings:
    """Settings of a test bridge on ``exchange``, its event spool in ``spool_dir`` (a
    directory of the test's, which pytest removes)."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "amqp_url": AMQP_URL,
        "exchange": exchange,
        "reply_timeout": 5.0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "spool_dir": spool_dir,
        "commands": False,  # tests of commands run their own commander on their own queue
    }
    values.update(overrides)
    return BridgeSettings(**values)


@dataclass
class Recorder:
    """Envelopes seen by a test consumer, and the answer it gives."""

    answer: Callable[[Request], Any] = field(default=lambda request: 0)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Any:
        with self.lock:
            self.requests.append(request)
        return self.answer(request)


class ConsumerHarness:
    """An SDK consumer with an exclusive queue, answering every single-reply service."""

    def __init__(
        self,
        exchange: str,
        handler: Handler,
        services: tuple[Service, ...],
        *,
        queue: str | None = None,
        **filters: str,
    ) -> None:
        self._loop = LoopThread("consumer-loop")
        self.consumer = Consumer(
            AMQP_URL, exchange, queue or f"test-{uuid.uuid4().hex[:8]}", exclusive=True
        )
        for svc in services:
            self.consumer.add(svc, handler, **filters)
        self._loop.run(self.consumer.start())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self.consumer.close(), timeout=10)
        self._loop.stop()


async def _delete_exchange(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


def delete_exchange(name: str) -> None:
    asyncio.run(_delete_exchange(name))


async def _delete_queue(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


def delete_queue(name: str) -> None:
    """Delete a durable queue a test made a consumer declare."""
    asyncio.run(_delete_queue(name))


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def association(
    port: int,
    contexts: list[str] | None = None,
    *,
    ae_title: str = "TEST-SCU",
    called: str = "DICOM-BRIDGE",
    roles: list[Any] | None = None,
) -> Iterator[Association]:
    """A pynetdicom SCU association to 127.0.0.1:``port``; released on exit."""
    ae = AE(ae_title=ae_title)
    ae.dimse_timeout = 30
    ae.acse_timeout = 10
    for uid in contexts or ["1.2.840.10008.1.1"]:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, ext_neg=roles)
    if not assoc.is_established:
        raise AssertionError("association not established")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send_raw(port: int, payload: bytes) -> None:
    """Send ``payload`` on a bare TCP connection to 127.0.0.1:``port`` and read until the
    peer closes (or 2 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while sock.recv(4096):
                pass
        except OSError:
            pass


def assoc_rq(body_tail: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ header with fixed fields, then ``body_tail`` as its items."""
    fixed = struct.pack(">HH", 1, 0) + b"DICOM-BRIDGE".ljust(16) + b"FUZZER".ljust(16) + bytes(32)
    body = fixed + body_tail
    return b"\x01\x00" + struct.pack(">L", len(body)) + body


def send_raw_store(assoc: Association, payload: bytes) -> int:
    """Send a C-STORE whose data set is ``payload`` as is, bypassing pydicom's encoder."""
    request = C_STORE()
    request.MessageID = 99
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    request.Priority = 2
    request.DataSet = BytesIO(payload)
    context_id = assoc._get_valid_context(CTImageStorage, "", "scu").context_id
    assert context_id is not None
    assoc._reactor_checkpoint.clear()
    eventually(lambda: assoc._is_paused, "the association's reactor paused", interval=0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None
    assert response.Status is not None
    return int(response.Status)


def timed(function: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


class RawResponder:
    """A consumer without the SDK: binds ``pattern`` and answers with ``reply(message)``:
    one body, several (a stream, sent in order), or None for silence.

    Lets tests send replies the SDK would never produce (not JSON, bad fields...).
    """

    def __init__(
        self,
        exchange: str,
        reply: Callable[[aio_pika.abc.AbstractIncomingMessage], bytes | list[bytes] | None],
        pattern: str = "#",
    ) -> None:
        self._loop = LoopThread("raw-responder")
        self._reply = reply
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        self._connection = self._loop.run(self._start(exchange, pattern))

    async def _start(self, exchange_name: str, pattern: str) -> aio_pika.abc.AbstractConnection:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, pattern)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if (message.routing_key or "").startswith("event."):
                await message.ack()  # association events: not requests
                return
            self.messages.append(message)
            answer = self._reply(message)
            bodies = [answer] if isinstance(answer, bytes) else answer or []
            for body in bodies:
                if message.reply_to:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, correlation_id=message.correlation_id),
                        routing_key=message.reply_to,
                    )
            await message.ack()

        await queue.consume(on_message)
        return connection

    def publish_reply(self, message: aio_pika.abc.AbstractIncomingMessage, body: bytes) -> None:
        """Send a reply later (e.g. after the bridge gave up)."""

        async def send() -> None:
            channel = await self._connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=message.correlation_id),
                routing_key=message.reply_to or "",
            )
            await channel.close()

        self._loop.run(send())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._connection.close(), timeout=10)
        self._loop.stop()


class TcpProxy:
    """A TCP forwarder the test controls: stand-in for a broker that goes away.

    ``start()`` listens on ``port`` and forwards to ``target``; ``stop()`` closes the
    listener and every forwarded connection at once, as a broker crash would.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._loop = LoopThread("tcp-proxy")
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def start(self) -> None:
        async def listen() -> asyncio.base_events.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._server = self._loop.run(listen())

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.run(close())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self._loop.stop()


TRANSACTION_UID = "1.2.826.0.1.3680043.8.498.3"


def make_dataset(**elements: Any) -> Dataset:
    """A dataset with ``elements`` set by keyword."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def commitment_info() -> Dataset:
    """Storage Commitment Event/Action Information: one referenced CT instance."""
    item = make_dataset(
        ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        ReferencedSOPInstanceUID="1.2.826.0.1.3680043.8.498.2",
    )
    return make_dataset(TransactionUID=TRANSACTION_UID, ReferencedSOPSequence=[item])


def inline_references(document: Any, whole: bytes | None) -> Any:
    """A DICOM JSON dataset with every reference into the envelope's Part 10 file
    (``?offset=O&length=L``) replaced by the InlineBinary of those bytes: what the
    dataset's JSON is without the Part 10 file."""
    if isinstance(document, dict):
        uri = document.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("?"):
            assert whole is not None, "a reference without a Part 10 file"
            data = part10.slice_reference(whole, uri)
            rest = {k: v for k, v in document.items() if k != "BulkDataURI"}
            return {**rest, "InlineBinary": base64.b64encode(data).decode()}
        return {key: inline_references(value, whole) for key, value in document.items()}
    if isinstance(document, list):
        return [inline_references(value, whole) for value in document]
    return document


def part10_of(envelope: dict[str, Any]) -> bytes | None:
    """The Part 10 file an envelope carries (inline or in the claim-check directory)."""
    document = envelope.get("part10")
    if document is None:
        return None
    ref = part10.from_json(document)
    if ref.data is not None:
        return ref.data
    return path_of(str(ref.uri)).read_bytes()
