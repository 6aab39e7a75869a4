"""SDK for consumers that command the bridge: ``send_*`` helpers, async and sync.

    from bridge.sdk.client import CommandClient

    async with CommandClient("amqp://guest:guest@127.0.0.1:5672/") as client:
        result = await client.send_echo("ARCHIVE")          # status 0x0000
        async for match in client.send_find("ARCHIVE", query, query_model="study-root"):
            print(match.dataset.StudyInstanceUID)

    with CommandClient(url) as client:                      # no event loop of your own
        client.send_store_sync("ARCHIVE", dataset)

A client publishes commands (``schemas/command.schema.json``) to the exchange with
routing key ``command.<service>.<AE>`` (or straight to a queue), persistent and mandatory,
and waits for the correlated replies on its own exclusive reply queue. The helpers encode
pydicom datasets to DICOM JSON (values above ``bulk_threshold`` through the claim-check
directory ``bulk_dir``, shared with the bridge) and decode response datasets on first
access to :attr:`CommandResult.dataset`.

Return and raise: a helper returns the :class:`CommandResult` whatever DIMSE status the
peer answered; it raises :class:`CommandFailed` when there is no DIMSE answer (the reply's
``error``: ``unknown-destination``, ``refused``, ``timeout``, ...), when no reply came
within ``timeout`` (``no-reply``), or when no queue is bound for commands
(``unroutable``). C-FIND matches are iterated as they arrive; a final status other than
Success or Warning raises :class:`CommandFailed` at the end of the iteration.

The client's connection lives in one event loop: the one ``start()`` ran in, or a thread
of its own when it is used synchronously (``start_sync()``, ``with client:``, or the first
``*_sync`` call). Async helpers called from another loop hop over to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiormq
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from pydicom.dataset import Dataset

from bridge.errors import BridgeError
from bridge.protocol import command, dicomjson
from bridge.protocol.envelope import iso_time
from bridge.protocol.model import Service, routing_word
from bridge.transport.bulkstore import DirectoryStore, path_of, read_uri

__all__ = ["CommandClient", "CommandFailed", "CommandResult", "FindStream"]

T = TypeVar("T")
Tags = Sequence[int]
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
        self._connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": f"dicom-bridge command client pid {id(self)}"},
        )
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel
        self._exchange = (
            channel.default_exchange
            if self.queue
            else await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        )
        name = f"dicom-bridge.command-reply.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
        reply_queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await reply_queue.consume(self._on_reply, no_ack=True)
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
        correlation_id = str(document.setdefault("id", str(uuid.uuid4())))
        body = orjson.dumps(document)
        if len(body) > self.max_message_size:
            raise CommandFailed("bad-dataset", "command larger than max_message_size")
        service = str(document.get("service"))
        destination = document.get("destination")
        ae_title = str(destination.get("ae_title")) if isinstance(destination, dict) else "-"
        routing_key = self.queue or f"{command.ROUTING_PREFIX}.{routing_word(service)}." + (
            routing_word(ae_title) or "-"
        )
        call = _Call(correlation_id)
        self._calls[correlation_id] = call
        headers: dict[str, Any] = {"service": service, "destination-ae": ae_title}
        try:
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
        except aiormq.exceptions.PublishError:
            self._forget(call)
            raise CommandFailed(
                "unroutable", f"no queue bound for {routing_key}: no bridge takes commands"
            ) from None
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
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CommandFailed("bad-reply", "reply is not JSON") from None
        if not isinstance(document, dict):
            raise CommandFailed("bad-reply", "reply is not a JSON object")
        return CommandResult(document)

    async def _request(self, document: JSONDict, timeout: float) -> CommandResult:
        call = await self._publish(document)
        try:
            return await self._next_reply(call, timeout)
        finally:
            self._forget(call)

    # -- commands -------------------------------------------------------------------------

    def command(
        self,
        service: Service | str,
        ae_title: str,
        *,
        request: Mapping[str, Any] | None = None,
        datasets: Mapping[str, Dataset | JSONDict | None] | None = None,
        host: str | None = None,
        port: int | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> JSONDict:
        """A command document (see ``schemas/command.schema.json``): datasets may be
        pydicom Datasets; the deadline is ``timeout`` from now."""
        destination: JSONDict = {"ae_title": ae_title}
        if host is not None or port is not None:
            destination.update(host=host, port=port)
        deadline = datetime.now(UTC) + timedelta(seconds=timeout or self.timeout)
        document: JSONDict = {
            "version": command.COMMAND_VERSION,
            "id": str(uuid.uuid4()),
            "service": Service(service).value,
            "destination": destination,
            "deadline": iso_time(deadline),
        }
        if request:
            document["request"] = {k: v for k, v in request.items() if v is not None}
        for name, value in (datasets or {}).items():
            document[name] = self._json(value)
        document.update({k: v for k, v in fields.items() if v is not None})
        return document

    def _json(self, value: Dataset | JSONDict | None) -> JSONDict | None:
        if value is None or isinstance(value, dict):
            return value
        return dicomjson.dataset_to_json(value, bulk_data=self._sink)

    def _sink(self, tag: int, vr: str, value: bytes) -> str | None:
        if self.store is None or len(value) <= self.bulk_threshold:
            return None
        return self.store.put(value)

    async def send(self, document: JSONDict, *, timeout: float | None = None) -> CommandResult:
        """Publish any command document and return its (single) reply."""
        wait = timeout or self.timeout
        result = await self._on_home(self._request(document, wait))
        return _raise_for_error(result)

    def send_sync(self, document: JSONDict, *, timeout: float | None = None) -> CommandResult:
        wait = timeout or self.timeout
        return _raise_for_error(self._sync(self._request(document, wait), wait + 5.0))

    # Each helper builds the document, then sends it; *_sync twins block instead.

    def _echo(self, ae: str, **options: Any) -> JSONDict:
        return self.command(Service.C_ECHO, ae, **options)

    def _store(
        self,
        ae: str,
        dataset: Dataset,
        *,
        priority: int | None = None,
        move_originator_ae_title: str | None = None,
        move_originator_message_id: int | None = None,
        **options: Any,
    ) -> JSONDict:
        meta = getattr(dataset, "file_meta", None)
        syntax = getattr(meta, "TransferSyntaxUID", None)
        options.setdefault("transfer_syntax_uid", str(syntax) if syntax else None)
        request = {
            "priority": priority,
            "move_originator_ae_title": move_originator_ae_title,
            "move_originator_message_id": move_originator_message_id,
        }
        return self.command(
            Service.C_STORE, ae, request=request, datasets={"dataset": dataset}, **options
        )

    def _event_report(
        self,
        ae: str,
        event_type_id: int,
        event_information: Dataset | None,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        role: str = "scp",
        **options: Any,
    ) -> JSONDict:
        request = {
            "event_type_id": event_type_id,
            "affected_sop_class_uid": sop_class_uid,
            "affected_sop_instance_uid": sop_instance_uid,
        }
        return self.command(
            Service.N_EVENT_REPORT,
            ae,
            request=request,
            datasets={"event_information": event_information},
            role=role,
            **options,
        )

    @staticmethod
    def _requested(sop_class_uid: str, sop_instance_uid: str, **more: Any) -> JSONDict:
        return {
            "requested_sop_class_uid": sop_class_uid,
            "requested_sop_instance_uid": sop_instance_uid,
            **more,
        }

    def _action(
        self,
        ae: str,
        action_type_id: int,
        action_information: Dataset | None,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        **options: Any,
    ) -> JSONDict:
        request = self._requested(sop_class_uid, sop_instance_uid, action_type_id=action_type_id)
        datasets = {"action_information": action_information}
        return self.command(Service.N_ACTION, ae, request=request, datasets=datasets, **options)

    def _create(
        self,
        ae: str,
        attribute_list: Dataset | None,
        *,
        sop_class_uid: str,
        sop_instance_uid: str | None = None,
        **options: Any,
    ) -> JSONDict:
        request = {
            "affected_sop_class_uid": sop_class_uid,
            "affected_sop_instance_uid": sop_instance_uid,
        }
        datasets = {"attribute_list": attribute_list}
        return self.command(Service.N_CREATE, ae, request=request, datasets=datasets, **options)

    def _set(
        self,
        ae: str,
        modification_list: Dataset,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        **options: Any,
    ) -> JSONDict:
        request = self._requested(sop_class_uid, sop_instance_uid)
        datasets = {"modification_list": modification_list}
        return self.command(Service.N_SET, ae, request=request, datasets=datasets, **options)

    def _get(
        self,
        ae: str,
        attribute_identifier_list: Tags | None = None,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        **options: Any,
    ) -> JSONDict:
        tags = None
        if attribute_identifier_list is not None:
            tags = [f"{tag:08X}" for tag in attribute_identifier_list]
        request = self._requested(sop_class_uid, sop_instance_uid, attribute_identifier_list=tags)
        return self.command(Service.N_GET, ae, request=request, **options)

    def _delete(
        self, ae: str, *, sop_class_uid: str, sop_instance_uid: str, **options: Any
    ) -> JSONDict:
        request = self._requested(sop_class_uid, sop_instance_uid)
        return self.command(Service.N_DELETE, ae, request=request, **options)

    def _find(
        self,
        ae: str,
        identifier: Dataset,
        *,
        query_model: str | None = "study-root",
        sop_class_uid: str | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> JSONDict:
        request = {"affected_sop_class_uid": sop_class_uid, "priority": priority}
        return self.command(
            Service.C_FIND,
            ae,
            request=request,
            datasets={"identifier": identifier},
            query_model=None if sop_class_uid else query_model,
            **options,
        )

    def _timeout(self, options: Mapping[str, Any]) -> float:
        value = options.get("timeout")
        return float(value) if value else self.timeout

    async def send_echo(self, ae: str, **options: Any) -> CommandResult:
        """C-ECHO. ``options``: ``host``, ``port`` (else the AE table), ``timeout``,
        ``calling_ae``, ``request`` (more command fields)."""
        return await self.send(self._echo(ae, **options), timeout=self._timeout(options))

    def send_echo_sync(self, ae: str, **options: Any) -> CommandResult:
        return self.send_sync(self._echo(ae, **options), timeout=self._timeout(options))

    async def send_store(self, ae: str, dataset: Dataset, **options: Any) -> CommandResult:
        """C-STORE of ``dataset`` (its ``file_meta`` Transfer Syntax UID, if any, is the
        encoding its pixel data is in). Also ``priority``, ``move_originator_ae_title``,
        ``move_originator_message_id``."""
        return await self.send(self._store(ae, dataset, **options), timeout=self._timeout(options))

    def send_store_sync(self, ae: str, dataset: Dataset, **options: Any) -> CommandResult:
        return self.send_sync(self._store(ae, dataset, **options), timeout=self._timeout(options))

    async def send_event_report(
        self, ae: str, event_type_id: int, event_information: Dataset | None, **options: Any
    ) -> CommandResult:
        """N-EVENT-REPORT; needs ``sop_class_uid`` and ``sop_instance_uid``. The bridge
        proposes to be the SCP of the class (role selection) unless ``role="scu"``."""
        document = self._event_report(ae, event_type_id, event_information, **options)
        return await self.send(document, timeout=self._timeout(options))

    def send_event_report_sync(
        self, ae: str, event_type_id: int, event_information: Dataset | None, **options: Any
    ) -> CommandResult:
        document = self._event_report(ae, event_type_id, event_information, **options)
        return self.send_sync(document, timeout=self._timeout(options))

    async def send_action(
        self, ae: str, action_type_id: int, action_information: Dataset | None, **options: Any
    ) -> CommandResult:
        """N-ACTION; needs ``sop_class_uid`` and ``sop_instance_uid``."""
        document = self._action(ae, action_type_id, action_information, **options)
        return await self.send(document, timeout=self._timeout(options))

    def send_action_sync(
        self, ae: str, action_type_id: int, action_information: Dataset | None, **options: Any
    ) -> CommandResult:
        document = self._action(ae, action_type_id, action_information, **options)
        return self.send_sync(document, timeout=self._timeout(options))

    async def send_create(
        self, ae: str, attribute_list: Dataset | None, **options: Any
    ) -> CommandResult:
        """N-CREATE; needs ``sop_class_uid``, takes ``sop_instance_uid`` (else the peer
        assigns one: :attr:`CommandResult.affected_sop_instance_uid`)."""
        document = self._create(ae, attribute_list, **options)
        return await self.send(document, timeout=self._timeout(options))

    def send_create_sync(
        self, ae: str, attribute_list: Dataset | None, **options: Any
    ) -> CommandResult:
        return self.send_sync(
            self._create(ae, attribute_list, **options), timeout=self._timeout(options)
        )

    async def send_set(self, ae: str, modification_list: Dataset, **options: Any) -> CommandResult:
        """N-SET; needs ``sop_class_uid`` and ``sop_instance_uid``."""
        document = self._set(ae, modification_list, **options)
        return await self.send(document, timeout=self._timeout(options))

    def send_set_sync(self, ae: str, modification_list: Dataset, **options: Any) -> CommandResult:
        document = self._set(ae, modification_list, **options)
        return self.send_sync(document, timeout=self._timeout(options))

    async def send_get(
        self, ae: str, attribute_identifier_list: Tags | None = None, **options: Any
    ) -> CommandResult:
        """N-GET of the given tags (all attributes when None); needs ``sop_class_uid``
        and ``sop_instance_uid``."""
        document = self._get(ae, attribute_identifier_list, **options)
        return await self.send(document, timeout=self._timeout(options))

    def send_get_sync(
        self, ae: str, attribute_identifier_list: Tags | None = None, **options: Any
    ) -> CommandResult:
        document = self._get(ae, attribute_identifier_list, **options)
        return self.send_sync(document, timeout=self._timeout(options))

    async def send_delete(self, ae: str, **options: Any) -> CommandResult:
        """N-DELETE; needs ``sop_class_uid`` and ``sop_instance_uid``."""
        return await self.send(self._delete(ae, **options), timeout=self._timeout(options))

    def send_delete_sync(self, ae: str, **options: Any) -> CommandResult:
        return self.send_sync(self._delete(ae, **options), timeout=self._timeout(options))

    def send_find(self, ae: str, identifier: Dataset, **options: Any) -> FindStream:
        """C-FIND: iterate the matches (``async for`` or ``for``) as the peer sends them.
        ``query_model`` (default ``study-root``) or ``sop_class_uid`` names the model;
        ``timeout`` bounds the wait for each reply."""
        return FindStream(self, self._find(ae, identifier, **options), self._timeout(options))

    send_find_sync = send_find


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
