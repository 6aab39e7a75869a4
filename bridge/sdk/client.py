"""SDK for consumers that command the bridge: ``send`` and ``stream``, async and sync.

    from bridge.protocol import command
    from bridge.sdk.client import CommandClient

    async with CommandClient("amqp://guest:guest@127.0.0.1:5672/") as client:
        result = await client.send(command.echo("ARCHIVE"))     # status 0x0000
        query = command.find("ARCHIVE", identifier, query_model="study-root")
        async for match in client.stream(query):
            print(match.dataset.StudyInstanceUID)

    with CommandClient(url) as client:                          # no event loop of your own
        client.send_sync(command.store("ARCHIVE", dataset))
        client.send_store_sync("ARCHIVE", "/data/CT1.dcm")      # a Part 10 file, sent as it is

The builders of :mod:`bridge.protocol.command` write the commands; every builder also has
shorthands here, ``send_<service>`` and ``send_<service>_sync`` with its arguments
(``client.send_echo("ARCHIVE")`` is ``client.send(command.echo("ARCHIVE"))``).

A client publishes commands (``schemas/command.schema.json``) to the exchange with
routing key ``command.<service>.<AE>`` (or straight to a queue), persistent and mandatory,
and waits for the correlated replies on its own exclusive reply queue. It encodes pydicom
datasets to DICOM JSON (values above ``bulk_threshold`` through the claim-check directory
``bulk_dir``, shared with the bridge), carries a C-STORE's Part 10 file as ``part10``
(in the message up to ``bulk_threshold`` bytes, else linked or copied into ``bulk_dir``,
never read whole), names the command and stamps its deadline when it sends it
(:meth:`CommandClient.prepare`), and decodes response datasets on first access to
:attr:`CommandResult.dataset`.

Return and raise: ``send`` returns the :class:`CommandResult` whatever DIMSE status the
peer answered; it raises :class:`CommandFailed` when there is no DIMSE answer (the reply's
``error``: ``unknown-destination``, ``refused``, ``timeout``, ...), when no reply came
within ``timeout`` (``no-reply``), when no queue is bound for commands (``unroutable``)
or the broker failed the publish (``unavailable``). ``stream`` yields C-FIND matches as
they arrive; a final status other than Success or Warning raises :class:`CommandFailed`
at the end of the iteration.

The client's connection lives in one event loop: the one ``start()`` ran in, or a thread
of its own when it is used synchronously (``start_sync()``, ``with client:``, or the first
``*_sync`` call). Async methods called from another loop hop over to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, ParamSpec, Self, TypeVar, overload

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from pydicom.dataset import Dataset

from bridge.errors import BridgeError, BrokerUnavailable, CodecError, Unroutable
from bridge.protocol import command as commands
from bridge.protocol import dicomjson, part10
from bridge.protocol.envelope import iso_time
from bridge.protocol.model import Service
from bridge.protocol.values import json_object
from bridge.sdk.replies import file_part10
from bridge.transport import broker
from bridge.transport.bulkstore import DirectoryStore, path_of, read_uri

__all__ = ["CommandClient", "CommandFailed", "CommandResult", "FindStream"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
JSONDict = dict[str, Any]


class CommandFailed(Exception):
    """A command got no DIMSE answer (or, for C-FIND, a failed final status).

    ``reason`` is the reply's error reason (``unknown-destination``, ``refused``,
    ``unavailable``, ``timeout``, ``aborted``, ``bad-command``, ``bad-dataset``,
    ``expired``, ``internal``), or the client's own: ``no-reply``, ``unroutable``,
    ``status`` (a C-FIND ended with a failure or cancel status).
    """

    def __init__(self, reason: str, message: str, result: CommandResult | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.result = result


def _tags(value: Any) -> list[int] | None:
    return None if value is None else [int(tag, 16) for tag in value]


@dataclass(frozen=True)
class CommandResult:
    """One reply of the bridge to a command. ``document`` is the reply as received."""

    document: JSONDict = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.document.get("id", ""))

    @property
    def service(self) -> str:
        return str(self.document.get("service", ""))

    @property
    def final(self) -> bool:
        return bool(self.document.get("final", True))

    @property
    def status(self) -> int | None:
        """The peer's DIMSE Status; None when there was no response."""
        status = self.document.get("status")
        return status if isinstance(status, int) else None

    @property
    def category(self) -> str | None:
        """``success``, ``warning``, ``failure``, ``cancel`` or ``pending``."""
        category = self.document.get("category")
        return category if isinstance(category, str) else None

    @property
    def ok(self) -> bool:
        """Success or Warning."""
        return self.category in ("success", "warning")

    @property
    def error_comment(self) -> str | None:
        return self.document.get("error_comment")

    @property
    def error_id(self) -> int | None:
        return self.document.get("error_id")

    @property
    def offending_element(self) -> list[int] | None:
        return _tags(self.document.get("offending_element"))

    @property
    def attribute_identifier_list(self) -> list[int] | None:
        return _tags(self.document.get("attribute_identifier_list"))

    @property
    def affected_sop_instance_uid(self) -> str | None:
        return self.document.get("affected_sop_instance_uid")

    @property
    def error(self) -> tuple[str, str] | None:
        """``(reason, message)`` when the bridge could not do all of the command."""
        error = self.document.get("error")
        if not isinstance(error, dict):
            return None
        return str(error.get("reason")), str(error.get("message"))

    @cached_property
    def dataset(self) -> Dataset | None:
        """The response dataset (N-* reply datasets, a C-FIND match), decoded on first
        access; claim-check files it references are read and deleted."""
        document = self.document.get("dataset")
        if document is None:
            return None
        read: list[str] = []

        def fetch(uri: str) -> bytes:
            data = read_uri(uri)
            read.append(uri)
            return data

        dataset = dicomjson.json_to_dataset(document, bulk_data=fetch)
        for uri in read:  # the reader deletes (bridge/bulkstore.py)
            with contextlib.suppress(OSError, BridgeError):
                path_of(uri).unlink(missing_ok=True)
        return dataset


def _raise_for_error(result: CommandResult) -> CommandResult:
    error = result.error
    if error is not None and result.status is None:
        raise CommandFailed(error[0], error[1], result)
    return result


class _Call:
    """Replies to one command, in arrival order (lives in the client's loop)."""

    def __init__(self, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()


class FindStream:
    """The matches of a C-FIND command, as they arrive: ``async for`` or ``for``.

    After the iteration, :attr:`final` holds the final reply. The command is published on
    the first step. A final Failure or Cancel status, or a bridge error, raises
    :class:`CommandFailed` at the end.
    """

    def __init__(self, client: CommandClient, document: JSONDict, timeout: float) -> None:
        self._client = client
        self._document = document
        self._timeout = timeout
        self._call: _Call | None = None
        self.final: CommandResult | None = None
        self.matches = 0

    def __aiter__(self) -> FindStream:
        return self

    async def __anext__(self) -> CommandResult:
        result = await self._client._on_home(self._next())
        if result is None:
            raise StopAsyncIteration
        return result

    def __iter__(self) -> FindStream:
        return self

    def __next__(self) -> CommandResult:
        result = self._client._sync(self._next(), self._timeout + 5.0)
        if result is None:
            raise StopIteration
        return result

    async def _next(self) -> CommandResult | None:
        if self.final is not None:
            return None
        if self._call is None:
            self._call = await self._client._publish(self._document)
        try:
            result = await self._client._next_reply(self._call, self._timeout)
        except BaseException:
            self._client._forget(self._call)
            raise
        if not result.final:
            self.matches += 1
            return result
        self.final = result
        self._client._forget(self._call)
        _raise_for_error(result)
        if not result.ok:
            raise CommandFailed(
                "status", f"C-FIND ended with status 0x{result.status or 0:04X}", result
            )
        return None


class _Shorthand(Generic[P, R]):
    """A method of :class:`CommandClient` that builds a command with ``builder`` and hands
    it to ``method`` (the client's ``send``, ``send_sync`` or ``stream``, named
    ``sending``)."""

    def __init__(
        self,
        builder: Callable[P, JSONDict],
        method: Callable[[CommandClient, JSONDict], R],
        sending: str,
    ) -> None:
        self.builder = builder
        self.method = method
        self.sending = sending
        self.name = builder.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, client: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, client: CommandClient, owner: type | None = None) -> Callable[P, R]: ...

    def __get__(
        self, client: CommandClient | None, owner: type | None = None
    ) -> Self | Callable[P, R]:
        if client is None:
            return self
        builder, method = self.builder, self.method

        @functools.wraps(builder)
        def shorthand(*args: P.args, **kwargs: P.kwargs) -> R:
            return method(client, builder(*args, **kwargs))

        shorthand.__name__ = shorthand.__qualname__ = self.name
        shorthand.__doc__ = f"{self.sending}(command.{builder.__name__}(...)): {builder.__doc__}"
        return shorthand


# The shorthands are made in the class body, before the class exists: they look its
# methods up when called.


def _single(
    builder: Callable[P, JSONDict],
) -> tuple[_Shorthand[P, Coroutine[Any, Any, CommandResult]], _Shorthand[P, CommandResult]]:
    """``send_<service>`` and ``send_<service>_sync`` for a single-reply service."""
    return (
        _Shorthand(builder, lambda client, document: client.send(document), "send"),
        _Shorthand(builder, lambda client, document: client.send_sync(document), "send_sync"),
    )


def _streamed(
    builder: Callable[P, JSONDict],
) -> tuple[_Shorthand[P, FindStream], _Shorthand[P, FindStream]]:
    """``send_<service>`` and ``send_<service>_sync``, the same stream, for C-FIND."""

    def stream(client: CommandClient, document: JSONDict) -> FindStream:
        return client.stream(document)

    return _Shorthand(builder, stream, "stream"), _Shorthand(builder, stream, "stream_sync")


class CommandClient:
    """Publishes commands and waits for the bridge's replies. See the module docstring."""

    def __init__(
        self,
        amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
        exchange: str = "dicom",
        *,
        queue: str | None = None,
        timeout: float = 30.0,
        bulk_dir: Path | None = None,
        bulk_threshold: int = 1 << 20,
        publish_timeout: float = 5.0,
        max_message_size: int = 16 << 20,
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange_name = exchange
        self.queue = queue
        """Publish straight to this queue (default exchange) instead of the exchange."""
        self.timeout = timeout
        self.store = DirectoryStore(bulk_dir) if bulk_dir is not None else None
        self.bulk_threshold = bulk_threshold
        self.publish_timeout = publish_timeout
        self.max_message_size = max_message_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._reply_queue = ""
        self._calls: dict[str, _Call] = {}
        self.late_replies = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the running loop, which becomes the client's loop."""
        if self._connection is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.store is not None:
            self.store.ensure()
        connection = await broker.connect(self.amqp_url, purpose="command-client", robust=True)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = (
                channel.default_exchange
                if self.queue
                else await broker.declare_exchange(channel, self.exchange_name)
            )
            name = f"dicom-bridge.command-reply.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
            reply_queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await reply_queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._reply_queue = name

    async def close(self) -> None:
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            await self._on_home(self.close())
            return
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
        for call in self._calls.values():
            call.replies.put_nowait(b"")
        self._calls.clear()

    async def __aenter__(self) -> CommandClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start_sync(self) -> None:
        """Start the client in a thread of its own, for synchronous use."""
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="command-client", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread, self._loop = None, None
            raise

    def close_sync(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.close(), loop).result(30)
        if thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._thread = None
        self._loop = None

    def __enter__(self) -> CommandClient:
        self.start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_sync()

    # -- the client's loop ----------------------------------------------------------------

    async def _on_home(self, coro: Coroutine[Any, Any, T]) -> T:
        home = self._loop
        if home is None:
            coro.close()
            raise RuntimeError("client not started: await start() or use start_sync()")
        if asyncio.get_running_loop() is home:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, home))

    def _sync(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            self.start_sync()
        home = self._loop
        assert home is not None
        if _running_loop() is home:
            coro.close()
            raise RuntimeError("a *_sync method called in the client's own loop: use await")
        return asyncio.run_coroutine_threadsafe(coro, home).result(timeout)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        call = self._calls.get(message.correlation_id or "")
        if call is None:
            self.late_replies += 1
            return
        call.replies.put_nowait(message.body)

    def _forget(self, call: _Call) -> None:
        self._calls.pop(call.correlation_id, None)

    async def _publish(self, document: JSONDict) -> _Call:
        exchange = self._exchange
        if exchange is None:
            raise CommandFailed("unavailable", "client not connected")
        correlation_id = str(document["id"])
        body = orjson.dumps(document)
        if len(body) > self.max_message_size:
            raise CommandFailed("bad-dataset", "command larger than max_message_size")
        service = str(document.get("service"))
        destination = document.get("destination")
        ae_title = str(destination.get("ae_title")) if isinstance(destination, dict) else "-"
        routing_key = self.queue or commands.routing_key(service, ae_title)
        call = _Call(correlation_id)
        self._calls[correlation_id] = call
        headers: dict[str, Any] = {"service": service, "destination-ae": ae_title}
        try:
            with broker.publishing(routing_key, self.publish_timeout, what="command"):
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        correlation_id=correlation_id,
                        message_id=correlation_id,
                        reply_to=self._reply_queue,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        type="command",
                        app_id="dicom-bridge-client",
                        timestamp=datetime.now(UTC),
                        headers=headers,
                    ),
                    routing_key,
                    mandatory=True,
                    timeout=self.publish_timeout,
                )
        except Unroutable as exc:
            self._forget(call)
            raise CommandFailed("unroutable", f"{exc.message}: no bridge takes commands") from None
        except BrokerUnavailable as exc:
            self._forget(call)
            raise CommandFailed("unavailable", exc.message) from None
        except BaseException:
            self._forget(call)
            raise
        return call

    async def _next_reply(self, call: _Call, timeout: float) -> CommandResult:
        try:
            body = await asyncio.wait_for(call.replies.get(), timeout)
        except TimeoutError:
            raise CommandFailed("no-reply", f"no reply within {timeout:g} s") from None
        if not body:
            raise CommandFailed("unavailable", "client closed")
        return CommandResult(
            json_object(body, "reply", functools.partial(CommandFailed, "bad-reply"))
        )

    async def _request(self, document: JSONDict, timeout: float) -> CommandResult:
        call = await self._publish(document)
        try:
            return await self._next_reply(call, timeout)
        finally:
            self._forget(call)

    # -- commands -------------------------------------------------------------------------

    def prepare(self, command: Mapping[str, Any], *, timeout: float | None = None) -> JSONDict:
        """The document as :meth:`send` publishes ``command`` (a builder's, or any command
        document): pydicom Datasets encoded to DICOM JSON (binary values above
        ``bulk_threshold`` through the claim-check directory), a ``part10`` path or bytes
        as its JSON form (:meth:`_part10`), an ``id`` unless it has one, and its
        ``deadline`` as a time: a relative one from now, else ``timeout`` (default the
        client's) from now, unless it names one. Raises ValueError for a ``part10`` that
        is not a DICOM Part 10 file, OSError when its path cannot be read or linked."""
        document = {name: self._encoded(name, value) for name, value in command.items()}
        document.setdefault("id", str(uuid.uuid4()))
        deadline = document.get("deadline")
        if deadline is None:
            deadline = timedelta(seconds=timeout or self.timeout)
        if isinstance(deadline, timedelta):
            deadline = datetime.now(UTC) + deadline
        if isinstance(deadline, datetime):
            document["deadline"] = iso_time(deadline)
        return document

    def _wait(self, command: Mapping[str, Any], timeout: float | None) -> float:
        """How long to wait for each reply: ``timeout``, else the command's relative
        deadline, else the client's timeout."""
        deadline = command.get("deadline")
        if timeout:
            return timeout
        if isinstance(deadline, timedelta) and deadline > timedelta(0):
            return deadline.total_seconds()
        return self.timeout

    def command(
        self,
        service: Service | str,
        ae_title: str,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> JSONDict:
        """Any command, prepared: :func:`bridge.protocol.command.build`, then
        :meth:`prepare`."""
        return self.prepare(commands.build(service, ae_title, **fields), timeout=timeout)

    def _json(self, value: Dataset) -> JSONDict:
        return dicomjson.dataset_to_json(value, bulk_data=self._sink)

    def _encoded(self, name: str, value: Any) -> Any:
        if isinstance(value, Dataset):
            return self._json(value)
        if name == "part10" and isinstance(value, os.PathLike | bytes | bytearray | memoryview):
            return self._part10(value)
        return value

    def _sink(self, tag: int, vr: str, value: bytes) -> str | None:
        if self.store is None or len(value) <= self.bulk_threshold:
            return None
        return self.store.put(value)

    def _part10(self, source: os.PathLike[str] | bytes | bytearray | memoryview) -> JSONDict:
        """The ``part10`` of a C-STORE command (``schemas/command.schema.json``): the
        file in the message (base64) up to ``bulk_threshold`` bytes or without
        ``bulk_dir``, else in the claim-check directory, hard-linked where it can be
        (else copied by the kernel: a file at a path is never read whole here), which
        the bridge deletes once the command is answered. Raises ValueError when it is
        not a DICOM Part 10 file, OSError when the path cannot be read or linked."""
        if not isinstance(source, os.PathLike):
            data = bytes(source)
            try:
                offset = part10.read_meta(data).dataset_offset
            except CodecError as exc:
                raise ValueError(exc.message) from None
            if self.store is None or len(data) <= self.bulk_threshold:
                return part10.inline_json(data, offset)
            return part10.uri_json(self.store.put(data), len(data), offset)
        store, threshold = self.store, self.bulk_threshold

        def claim(path: Path, size: int) -> str | None:
            return store.put_file(path) if store is not None and size > threshold else None

        try:
            return file_part10(Path(source), claim)
        except CodecError as exc:
            raise ValueError(exc.message) from None

    async def send(
        self, command: Mapping[str, Any], *, timeout: float | None = None
    ) -> CommandResult:
        """Publish a single-reply command (see :mod:`bridge.protocol.command`'s builders)
        and return its reply; ``timeout`` bounds the wait (see :meth:`prepare`)."""
        wait = self._wait(command, timeout)
        document = self.prepare(command, timeout=wait)
        return _raise_for_error(await self._on_home(self._request(document, wait)))

    def send_sync(
        self, command: Mapping[str, Any], *, timeout: float | None = None
    ) -> CommandResult:
        """:meth:`send`, blocking the calling thread (never the client's own loop)."""
        wait = self._wait(command, timeout)
        document = self.prepare(command, timeout=wait)
        return _raise_for_error(self._sync(self._request(document, wait), wait + 5.0))

    def stream(self, command: Mapping[str, Any], *, timeout: float | None = None) -> FindStream:
        """The replies of a C-FIND command as they arrive: ``async for`` or ``for``; the
        command is published on the first step and ``timeout`` bounds the wait for each
        reply."""
        wait = self._wait(command, timeout)
        return FindStream(self, self.prepare(command, timeout=wait), wait)

    stream_sync = stream

    # Shorthands, one line per builder: ``send_echo(...)`` is ``send(command.echo(...))``,
    # ``send_echo_sync(...)`` its blocking twin, with the builder's arguments (``timeout``
    # among them) and docstring.
    send_echo, send_echo_sync = _single(commands.echo)
    send_store, send_store_sync = _single(commands.store)
    send_event_report, send_event_report_sync = _single(commands.event_report)
    send_action, send_action_sync = _single(commands.action)
    send_create, send_create_sync = _single(commands.create)
    send_set, send_set_sync = _single(commands.set)
    send_get, send_get_sync = _single(commands.get)
    send_delete, send_delete_sync = _single(commands.delete)
    send_find, send_find_sync = _streamed(commands.find)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
