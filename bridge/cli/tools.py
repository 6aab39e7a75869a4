"""Operator commands: ``schema`` prints the contract, ``check`` tests a set-up before
``serve``, ``tail`` shows the requests crossing the exchange.

The commands are built by :func:`commands`, which :mod:`bridge.cli` calls when it is
imported: they take their options from :func:`bridge.cli.settings_options`, and building
them lazily keeps ``import bridge.cli.tools`` free of an import cycle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen

import aio_pika
import aiormq
import click
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydicom.uid import UID
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.sop_class import uid_to_service_class

from bridge.config import BridgeSettings, BrokerSettings, load
from bridge.errors import ConfigError
from bridge.protocol import sopclasses
from bridge.protocol.model import Service, routing_key

# -- schema --------------------------------------------------------------------------------

SCHEMAS: dict[str, tuple[str, str]] = {
    "envelope": ("envelope.schema.json", "JSON Schema of a request envelope (draft 2020-12)"),
    "reply": ("reply.schema.json", "JSON Schema of a consumer's reply"),
    "dicom-json": ("dicom-json.schema.json", "JSON Schema of a DICOM JSON dataset"),
    "command": ("command.schema.json", "JSON Schema of a command (the bridge as SCU)"),
    "command-reply": ("command-reply.schema.json", "JSON Schema of a command's reply"),
    "asyncapi": ("asyncapi.yaml", "AsyncAPI 3.0 document: exchange, routing keys, messages"),
}


def schema_dir(package_dir: Path | None = None) -> Path:
    """Where the schemas are: ``bridge/_schemas`` in an installed wheel (pyproject
    force-includes ``schemas`` there), ``schemas/`` beside the package in a checkout."""
    package = package_dir or Path(__file__).resolve().parents[1]
    for candidate in (package / "_schemas", package.parent / "schemas"):
        if (candidate / SCHEMAS["envelope"][0]).is_file():
            return candidate
    raise FileNotFoundError(f"no schemas beside {package}: neither _schemas/ nor ../schemas/")


SCHEMA_HELP = """Print one of the schemas consumers are written against.

\b
NAME is one of:
""" + "\n".join(f"  {name:<11} {text}" for name, (_, text) in SCHEMAS.items())

SCHEMA_EPILOG = """\b
Examples:
  dicom-bridge schema                      # list the names
  dicom-bridge schema envelope > envelope.schema.json
  dicom-bridge schema asyncapi > asyncapi.yaml
  dicom-bridge schema --path reply         # where the file is"""


def _schema(name: str | None, path: bool) -> None:
    try:
        directory = schema_dir()
    except FileNotFoundError as exc:
        _error(str(exc))
    if name is None:
        click.echo(f"schemas in {directory}:")
        for key, (filename, text) in SCHEMAS.items():
            click.echo(f"  {key:<11} {filename:<24} {text}")
        click.echo("print one with: dicom-bridge schema NAME")
        return
    target = directory / SCHEMAS[name][0]
    if path:
        click.echo(str(target))
        return
    try:
        click.echo(target.read_text(encoding="utf-8"), nl=False)
    except OSError as exc:
        _error(f"cannot read {target}: {exc.strerror or exc}")


# -- shared --------------------------------------------------------------------------------


def _error(message: str) -> NoReturn:
    click.echo(f"dicom-bridge: error: {message}", err=True)
    sys.exit(1)


def _reason(exc: BaseException, secret: str | None = None) -> str:
    """One line about a connection failure, never containing ``secret``."""
    args = exc.args
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        text = "authentication refused (user or password wrong)"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        # aiormq's AMQPConnectionError(errno, message) from the socket error
        text = os.strerror(args[0]) if args[0] > 0 else args[1]
    else:
        text = " ".join(str(args[0] if args else exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text[:200]


def _amqp_text(exc: BaseException) -> str:
    """The broker's reply text of a channel error, without the code name in front."""
    text = str(exc.args[0] if exc.args else "") or type(exc).__name__
    return text.split(" - ", 1)[-1][:200]


def _quiet_amqp_libraries(level: str) -> None:
    """Connection failures are reported once, by the command: not again by aio-pika."""
    if level != "DEBUG":
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _password(url: str) -> str | None:
    parts = urlsplit(url)
    return unquote(parts.password) if parts.password else None


def _vhost(url: str) -> str:
    """The virtual host of an AMQP URL, as aio-pika reads it (``/`` when absent)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


_WHO = f"{socket.gethostname()} pid {os.getpid()}"


async def _connect(settings: BrokerSettings, timeout: float, purpose: str) -> AbstractConnection:
    return await asyncio.wait_for(
        aio_pika.connect(
            settings.amqp_url,
            timeout=timeout,
            client_properties={"connection_name": f"dicom-bridge {purpose} {_WHO}"},
            ssl_context=settings.amqp_ssl_context(),
        ),
        timeout + 1,
    )


# -- check ---------------------------------------------------------------------------------

Status = Literal["OK", "WARN", "FAIL"]
_COLOURS: dict[Status, str] = {"OK": "green", "WARN": "yellow", "FAIL": "red"}

# Services of the DIMSE-N service classes pynetdicom implements (its SCP() methods).
_ALL_N = tuple(service for service in Service if service.value.startswith("n-"))
_N_SERVICES: dict[str, tuple[Service, ...]] = {
    "ApplicationEventLoggingServiceClass": (Service.N_ACTION,),
    "DisplaySystemManagementServiceClass": (Service.N_GET,),
    "InstanceAvailabilityNotificationServiceClass": (Service.N_CREATE,),
    "MediaCreationManagementServiceClass": (Service.N_CREATE, Service.N_GET, Service.N_ACTION),
    "PrintManagementServiceClass": _ALL_N,
    "ProcedureStepServiceClass": (
        Service.N_CREATE,
        Service.N_SET,
        Service.N_GET,
        Service.N_EVENT_REPORT,
    ),
    "RTMachineVerificationServiceClass": _ALL_N,
    "StorageCommitmentServiceClass": (Service.N_EVENT_REPORT, Service.N_ACTION),
    "StorageManagementServiceClass": (Service.N_EVENT_REPORT, Service.N_ACTION),
    "UnifiedProcedureStepServiceClass": (
        Service.N_CREATE,
        Service.N_EVENT_REPORT,
        Service.N_GET,
        Service.N_SET,
        Service.N_ACTION,
    ),
}


@functools.cache
def _keyword(uid: str) -> str:
    return next(
        (n for n in dir(pynetdicom_sop_class) if getattr(pynetdicom_sop_class, n) == uid), ""
    )


def services_of(uid: str) -> tuple[Service, ...]:
    """The DIMSE services a peer may use on a presentation context of SOP class ``uid``."""
    if sopclasses.is_verification(uid):
        return (Service.C_ECHO,)
    if sopclasses.is_storage(uid):
        return (Service.C_STORE,)
    if uid in sopclasses.GROUPS["query-retrieve"]():
        keyword = _keyword(uid)
        for suffix, service in (("Get", Service.C_GET), ("Move", Service.C_MOVE)):
            if keyword.endswith(suffix):
                return (service,)
        return (Service.C_FIND,)
    # pynetdicom serves no request on a SOP class it has no service class for: ().
    return _N_SERVICES.get(uid_to_service_class(uid).__name__, ())


def accepted_services(uids: Iterable[str]) -> dict[Service, list[str]]:
    """Service -> the accepted SOP classes it can arrive on, in Service order."""
    found: dict[Service, list[str]] = {}
    for uid in uids:
        for service in services_of(uid):
            found.setdefault(service, []).append(uid)
    return {service: found[service] for service in Service if service in found}


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: ``*`` is one word, ``#`` zero or more."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: Sequence[str], words: Sequence[str | None]) -> bool:
    """``None`` in ``words`` stands for any word (matches literals and ``*``)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    word = words[0]
    if head == "*" or word is None or head == word:
        return _match(rest, words[1:])
    return False


@dataclass(frozen=True)
class Binding:
    routing_key: str
    destination: str
    kind: str  # "queue" or "exchange"


@dataclass
class BindingView:
    """The bindings of the exchange, and consumer counts of queues, from one source."""

    source: str
    bindings: list[Binding]
    consumers: dict[str, int] = field(default_factory=dict)


class Unavailable(Exception):
    """A source of bindings cannot be used; the message says why (one line)."""


def _management(base: str, amqp_url: str, exchange: str, timeout: float) -> BindingView:
    """Bindings through the RabbitMQ management HTTP API (GET only)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https"):
        raise Unavailable(f"management URL must be http:// or https://, not {parts.scheme}:")
    user = unquote(parts.username or "") or unquote(urlsplit(amqp_url).username or "guest")
    password = unquote(parts.password or "") if parts.username else (_password(amqp_url) or "guest")
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    root = parts._replace(netloc=netloc).geturl().rstrip("/")  # without the credentials
    vhost = quote(_vhost(amqp_url), safe="")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(path: str) -> Any:
        request = Request(root + path, headers={"Authorization": f"Basic {token}"})  # noqa: S310 - scheme checked above
        try:
            with urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
                return json.loads(response.read())
        except HTTPError as exc:
            if exc.code in (401, 403):
                raise Unavailable(
                    f"management API at {root} refused user {user!r} ({exc.code})"
                ) from None
            raise Unavailable(f"management API at {root}: HTTP {exc.code} for {path}") from None
        except (URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            text = getattr(reason, "strerror", None) or str(reason)
            raise Unavailable(f"management API not reachable at {root} ({text})") from None

    raw = get(f"/api/exchanges/{vhost}/{quote(exchange, safe='')}/bindings/source")
    bindings = [
        Binding(b["routing_key"], b["destination"], b.get("destination_type", "queue")) for b in raw
    ]
    queues = get(f"/api/queues/{vhost}?columns=name,consumers")
    consumers = {q["name"]: int(q.get("consumers") or 0) for q in queues}
    return BindingView(f"management API at {root}", bindings, consumers)


def _rabbitmqctl(amqp_url: str, exchange: str, timeout: float) -> BindingView:
    """Bindings through ``rabbitmqctl`` on the broker's own host (read-only commands)."""
    host = urlsplit(amqp_url).hostname or "localhost"
    local = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    if host not in local:
        raise Unavailable(f"rabbitmqctl only reaches a broker on this host, not {host}")
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise Unavailable("rabbitmqctl not found on PATH")
    vhost = _vhost(amqp_url)

    def run(*args: str) -> Any:
        try:
            done = subprocess.run(
                [tool, "-q", *args, "-p", vhost, "--formatter", "json"],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"rabbitmqctl failed: {exc}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise Unavailable(f"rabbitmqctl failed: {lines[0] if lines else done.returncode}")
        try:
            return json.loads(done.stdout or "[]")
        except ValueError:
            raise Unavailable("rabbitmqctl printed no JSON") from None

    rows = run(
        "list_bindings", "source_name", "destination_name", "destination_kind", "routing_key"
    )
    bindings = [
        Binding(r["routing_key"], r["destination_name"], r["destination_kind"])
        for r in rows
        if r["source_name"] == exchange
    ]
    queues = run("list_queues", "name", "consumers")
    consumers = {q["name"]: int(q.get("consumers") or 0) for q in queues}
    return BindingView(f"rabbitmqctl on {socket.gethostname()}", bindings, consumers)


class Report:
    """The verdict table, printed row by row as the checks run."""

    def __init__(self) -> None:
        self.rows: list[tuple[Status, str, str]] = []

    def add(self, status: Status, name: str, detail: str) -> None:
        self.rows.append((status, name, detail))
        label = click.style(f"{status:<4}", fg=_COLOURS[status], bold=status != "OK")
        click.echo(f"  {label}  {name:<15} {detail}")

    def count(self, status: Status) -> int:
        return sum(1 for row in self.rows if row[0] == status)

    def finish(self) -> int:
        failed, warned = self.count("FAIL"), self.count("WARN")
        verdict: Status = "FAIL" if failed else "WARN" if warned else "OK"
        summary = f"{failed} failed, {warned} warning{'' if warned == 1 else 's'}, " + (
            f"{self.count('OK')} OK"
        )
        click.echo(f"verdict: {click.style(verdict, fg=_COLOURS[verdict], bold=True)} ({summary})")
        return 1 if failed else 0


def _check_ae_table(settings: BridgeSettings, report: Report) -> None:
    if settings.ae_table is None:
        report.add("OK", "AE table", "none: C-MOVE destinations must come from consumers")
        return
    table = settings.load_ae_table()
    if not len(table):
        report.add("WARN", "AE table", f"{settings.ae_table} is empty")
    else:
        report.add("OK", "AE table", f"{settings.ae_table}: {len(table)} AE titles")


def _check_directories(settings: BridgeSettings, report: Report) -> None:
    _check_directory("bulk directory", settings.bulk_dir, report)
    # The default receive directory is inside the bulk directory: checked with it.
    if settings.receive_to_disk and settings.receive_dir is not None:
        _check_directory("receive directory", settings.receive_dir, report)


def _check_directory(name: str, directory: Path, report: Report) -> None:
    """A directory serve writes patient data into: writable (or creatable), not open to
    every user."""
    path = directory.expanduser().resolve()
    if path.exists():
        if not path.is_dir():
            report.add("FAIL", name, f"{path} is not a directory")
        elif not os.access(path, os.W_OK | os.X_OK):
            report.add("FAIL", name, f"{path} is not writable by this user")
        elif path.stat().st_mode & 0o007:
            mode = path.stat().st_mode & 0o777
            report.add(
                "WARN",
                name,
                f"{path} is open to every user (mode {mode:o}): its files are patient data",
            )
        else:
            report.add("OK", name, f"{path} (writable)")
        return
    ancestor = next(p for p in path.parents if p.exists())
    if os.access(ancestor, os.W_OK | os.X_OK):
        report.add("OK", name, f"{path} does not exist yet; serve creates it (700)")
    else:
        report.add("FAIL", name, f"{path} cannot be created: {ancestor} not writable")


def _check_port(settings: BridgeSettings, report: Report) -> None:
    if settings.port == 0:
        report.add("OK", "DICOM port", "0: serve picks a free port")
        return
    where = f"{settings.host}:{settings.port}"
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        report.add("FAIL", "DICOM port", f"{settings.host}: {exc.strerror}")
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As pynetdicom's server does: TIME_WAIT leftovers do not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                report.add(
                    "WARN",
                    "DICOM port",
                    f"{where} in use: a bridge (or another SCP) may be running; "
                    "serve cannot listen there meanwhile",
                )
            elif exc.errno == errno.EACCES:
                report.add(
                    "FAIL",
                    "DICOM port",
                    f"{where}: permission denied (ports below 1024 need privileges)",
                )
            else:
                report.add("FAIL", "DICOM port", f"{where}: {exc.strerror or exc}")
            return
    report.add("OK", "DICOM port", f"{where} is free")


def _server_version(connection: AbstractConnection) -> str:
    try:
        properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
    except AttributeError:
        return ""
    words = []
    for key in ("product", "version"):
        value = properties.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value:
            words.append(str(value))
    return " ".join(words)


async def _check_exchange(connection: AbstractConnection, name: str, report: Report) -> bool | None:
    """True: it exists as the bridge declares it; False: missing; None: incompatible."""
    channel = await connection.channel()
    try:
        await channel.get_exchange(name, ensure=True)  # passive declare
    except aiormq.exceptions.ChannelNotFoundEntity:
        report.add(
            "WARN",
            "exchange",
            f"{name!r} does not exist yet: serve declares it (topic, durable) on start",
        )
        return False
    except aiormq.exceptions.AMQPError as exc:
        report.add("FAIL", "exchange", f"{name!r} cannot be checked: {_amqp_text(exc)}")
        return None
    channel = await connection.channel()
    try:
        # It exists, so this declare creates nothing: it is the one serve makes, and fails
        # the same way when the type or the flags differ.
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        text = _amqp_text(exc)
        report.add("FAIL", "exchange", f"{name!r} differs from what serve declares: {text}")
        return None
    except aiormq.exceptions.AMQPError as exc:
        report.add("FAIL", "exchange", f"{name!r}: serve could not declare it: {_amqp_text(exc)}")
        return None
    report.add("OK", "exchange", f"{name!r} exists (topic, durable)")
    with contextlib.suppress(Exception):
        await channel.close()
    return True


def _binding_view(
    settings: BridgeSettings, source: str, management_url: str, timeout: float
) -> tuple[BindingView | None, list[str]]:
    reasons: list[str] = []
    attempts: list[Callable[[], BindingView]] = []
    if source in ("auto", "management") and management_url:
        attempts.append(
            lambda: _management(management_url, settings.amqp_url, settings.exchange, timeout)
        )
    if source in ("auto", "rabbitmqctl"):
        attempts.append(lambda: _rabbitmqctl(settings.amqp_url, settings.exchange, timeout))
    for attempt in attempts:
        try:
            return attempt(), reasons
        except Unavailable as exc:
            reasons.append(str(exc))
    if source == "none":
        reasons.append("--bindings-from none")
    elif not management_url and source == "management":
        reasons.append("no --management-url")
    return None, reasons


def _describe_queues(matches: list[Binding], view: BindingView) -> tuple[str, bool]:
    """'queue q (1 consumer) via c-store.#, ...' and whether anyone consumes."""
    seen: dict[str, str] = {}
    live = False
    for binding in matches:
        if binding.destination in seen:
            continue
        if binding.kind == "exchange":
            seen[binding.destination] = f"exchange {binding.destination} via {binding.routing_key}"
            live = True
            continue
        consumers = view.consumers.get(binding.destination)
        live = live or consumers is None or consumers > 0
        count = "?" if consumers is None else str(consumers)
        plural = "" if consumers == 1 else "s"
        seen[binding.destination] = (
            f"queue {binding.destination} ({count} consumer{plural}) via {binding.routing_key}"
        )
    shown = list(seen.values())
    text = ", ".join(shown[:2]) + (f", +{len(shown) - 2} more" if len(shown) > 2 else "")
    return text, live


def _check_bindings(
    settings: BridgeSettings,
    view: BindingView,
    accepted: Mapping[Service, list[str]],
    report: Report,
) -> None:
    # Two calling AE words no binding names literally: a binding matching both covers
    # every peer.
    anyone = (f"probe-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}")
    for service, uids in accepted.items():
        words = [routing_key(service, uid, "x").split(".")[1] for uid in uids]
        touching = [
            b
            for b in view.bindings
            if any(_match(b.routing_key.split("."), [service.value, w, None]) for w in words)
        ]
        covered = [
            w
            for w in words
            if any(
                all(topic_matches(b.routing_key, f"{service.value}.{w}.{ae}") for ae in anyone)
                for b in view.bindings
            )
        ]
        if not touching:
            report.add(
                "FAIL",
                service.value,
                f"no queue bound: its requests fail at once; bind '{service.value}.#' or "
                "leave its SOP classes out of --sop-classes",
            )
            continue
        queues, live = _describe_queues(touching, view)
        if not live:
            report.add(
                "WARN",
                service.value,
                f"{queues}: nobody consumes, so requests wait there and time out after "
                f"{settings.reply_timeout:g} s instead of failing at once",
            )
        elif len(covered) < len(words):
            report.add(
                "WARN",
                service.value,
                f"{queues}: covers every calling AE for {len(covered)} of {len(words)} "
                "accepted SOP classes; the other requests may fail as unroutable",
            )
        else:
            report.add("OK", service.value, queues)


async def _check_broker(
    settings: BridgeSettings,
    report: Report,
    *,
    source: str,
    management_url: str,
    timeout: float,
) -> None:
    target = settings.redacted_url()
    secret = _password(settings.amqp_url)
    _quiet_amqp_libraries(settings.log_level)
    try:
        connection = await _connect(settings, timeout, "check")
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError) as exc:
        report.add("FAIL", "broker", f"cannot connect to {target}: {_reason(exc, secret)}")
        return
    try:
        version = _server_version(connection)
        report.add("OK", "broker", f"connected to {target}" + (f" ({version})" if version else ""))
        exists = await _check_exchange(connection, settings.exchange, report)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)
    accepted = accepted_services(settings.sop_class_uids)
    if exists is False:
        report.add(
            "FAIL",
            "bindings",
            f"no queue can be bound before the exchange exists: the bridge would answer "
            f"every request ({', '.join(s.value for s in accepted)}) with a failure status",
        )
        return
    view, reasons = await asyncio.to_thread(
        _binding_view, settings, source, management_url, timeout
    )
    if view is None:
        report.add(
            "WARN",
            "bindings",
            "not verified: "
            + "; ".join(reasons)
            + ". RabbitMQ has no AMQP call that lists bindings, and a probe request would "
            "reach consumers as a bogus request, so none is sent. Enable the management "
            "plugin or pass --management-url.",
        )
        return
    click.echo(f"  bindings of {settings.exchange!r} from {view.source}:")
    _check_bindings(settings, view, accepted, report)


CHECK_EPILOG = """\b
What is checked, each OK, WARN or FAIL (exit code 1 when anything FAILs):
  configuration   flags and BRIDGE_* variables, as serve reads them
  AE table        --ae-table loads
  bulk directory  --bulk-dir exists and is writable, or can be created
  DICOM port      --host/--port can be bound (in use: WARN, a bridge may be running)
  broker          --amqp-url connects (the password is never printed)
  exchange        exists as serve declares it (missing: WARN, serve declares it)
  <service>       a queue is bound for each service the accepted SOP classes use,
                  and someone consumes from it
\b
Bindings are read from the management HTTP API (--management-url) or, for a broker
on this host, with rabbitmqctl. Without either they are not verified (WARN): AMQP
cannot list bindings, and a probe message would reach consumers as a bogus request.

\b
Examples:
  dicom-bridge check
  BRIDGE_AMQP_URL=amqp://user:pw@mq:5672/ dicom-bridge check --management-url http://mq:15672
  dicom-bridge check --sop-classes verification,CTImageStorage --port 104"""


def _check(management_url: str, bindings_from: str, timeout: float, **flags: Any) -> None:
    report = Report()
    click.echo("dicom-bridge check")
    try:
        settings = load(BridgeSettings, **flags)
    except ConfigError as exc:
        report.add("FAIL", "configuration", exc.message)
        sys.exit(report.finish())
    accepted = accepted_services(settings.sop_class_uids)
    report.add(
        "OK",
        "configuration",
        f"AE title {settings.ae_title}, {len(settings.sop_class_uids)} SOP classes "
        f"({', '.join(s.value for s in accepted)})",
    )
    unknown = [uid for uid in settings.sop_class_uids if not services_of(uid)]
    if unknown:
        report.add(
            "WARN",
            "SOP classes",
            f"pynetdicom implements no service for {len(unknown)} of them "
            f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}): "
            "their requests never reach consumers",
        )
    _check_ae_table(settings, report)
    _check_directories(settings, report)
    _check_port(settings, report)
    asyncio.run(
        _check_broker(
            settings,
            report,
            source=bindings_from,
            management_url=management_url,
            timeout=timeout,
        )
    )
    sys.exit(report.finish())


# -- tail ----------------------------------------------------------------------------------

# Attributes `tail` masks besides every PN value: those of PS3.15 Annex E Table E.1-1
# (Basic Application Level Confidentiality Profile) that describe the patient (Patient
# module and its relatives: IDs, birth date, address, telephone, age, sex, size...) or
# lead straight to them (accession, study, order, admission and procedure step IDs,
# institution). UIDs and dates other than birth dates stay visible: they are what one
# debugs with. Free text (descriptions, comments outside the patient) is not masked.
PHI_TAGS: dict[str, str] = {
    "00080050": "AccessionNumber",
    "00080080": "InstitutionName",
    "00080081": "InstitutionAddress",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100032": "PatientBirthTime",
    "00100033": "PatientBirthDateInAlternativeCalendar",
    "00100034": "PatientDeathDateInAlternativeCalendar",
    "00100040": "PatientSex",
    "00100050": "PatientInsurancePlanCodeSequence",
    "00101000": "OtherPatientIDs",
    "00101001": "OtherPatientNames",
    "00101002": "OtherPatientIDsSequence",
    "00101005": "PatientBirthName",
    "00101010": "PatientAge",
    "00101020": "PatientSize",
    "00101030": "PatientWeight",
    "00101040": "PatientAddress",
    "00101050": "InsurancePlanIdentification",
    "00101060": "PatientMotherBirthName",
    "00101080": "MilitaryRank",
    "00101081": "BranchOfService",
    "00101090": "MedicalRecordLocator",
    "00101100": "ReferencedPatientPhotoSequence",
    "00102000": "MedicalAlerts",
    "00102110": "Allergies",
    "00102150": "CountryOfResidence",
    "00102152": "RegionOfResidence",
    "00102154": "PatientTelephoneNumbers",
    "00102155": "PatientTelecomInformation",
    "00102160": "EthnicGroup",
    "00102180": "Occupation",
    "001021A0": "SmokingStatus",
    "001021B0": "AdditionalPatientHistory",
    "001021C0": "PregnancyStatus",
    "001021D0": "LastMenstrualDate",
    "001021F0": "PatientReligiousPreference",
    "00102203": "PatientSexNeutered",
    "00102297": "ResponsiblePerson",
    "00102299": "ResponsibleOrganization",
    "00104000": "PatientComments",
    "00200010": "StudyID",
    "00380010": "AdmissionID",
    "00380300": "CurrentPatientLocation",
    "00380400": "PatientInstitutionResidence",
    "00380500": "PatientState",
    "00400009": "ScheduledProcedureStepID",
    "00401001": "RequestedProcedureID",
    "00402016": "PlacerOrderNumberImagingServiceRequest",
    "00402017": "FillerOrderNumberImagingServiceRequest",
}
MASK = "***"
_HEX8 = frozenset("0123456789ABCDEFabcdef")


def _is_dataset(node: Mapping[str, Any]) -> bool:
    return bool(node) and all(
        len(key) == 8 and set(key) <= _HEX8 and isinstance(value, dict)
        for key, value in node.items()
    )


def _shown_binary(element: dict[str, Any], binary: bool) -> dict[str, Any]:
    inline = element.get("InlineBinary")
    if binary or not isinstance(inline, str) or len(inline) <= 64:
        return element
    return {**element, "InlineBinary": f"<{len(inline)} base64 characters; --binary shows them>"}


def _mask_dataset(dataset: Mapping[str, Any], show_phi: bool, binary: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for tag, element in dataset.items():
        vr = element.get("vr")
        if not show_phi and (vr == "PN" or tag.upper() in PHI_TAGS):
            masked = {"vr": vr} if vr else {}
            for key in ("Value", "InlineBinary", "BulkDataURI"):
                if key in element:
                    value = element[key]
                    masked[key] = [MASK] * len(value) if isinstance(value, list) else MASK
            shown[tag] = masked
        elif vr == "SQ" and isinstance(element.get("Value"), list):
            items = [
                _mask_dataset(item, show_phi, binary) if isinstance(item, dict) else item
                for item in element["Value"]
            ]
            shown[tag] = {**element, "Value": items}
        else:
            shown[tag] = _shown_binary(element, binary)
    return shown


def mask(document: Any, *, show_phi: bool = False, binary: bool = False) -> Any:
    """A copy of ``document`` for display: in every DICOM JSON dataset inside it (at any
    depth, sequences included), values of PN elements and of :data:`PHI_TAGS` become
    ``***`` unless ``show_phi``; long InlineBinary values are elided unless ``binary``."""
    if isinstance(document, dict):
        if _is_dataset(document):
            return _mask_dataset(document, show_phi, binary)
        return {
            key: mask(value, show_phi=show_phi, binary=binary) for key, value in document.items()
        }
    if isinstance(document, list):
        return [mask(item, show_phi=show_phi, binary=binary) for item in document]
    return document


def _sop_class_text(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return f"{name} [{uid}]" if name and name != uid else uid or "-"


class Delivered(Protocol):
    """What :func:`render` reads of a message (an aio-pika incoming message)."""

    @property
    def body(self) -> bytes: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...


def header_line(message: Delivered, document: Any) -> str:
    """time, service, SOP class, calling AE, DIMSE message id, correlation id."""
    correlation = message.correlation_id or "-"
    if isinstance(document, dict) and document.get("type") == "cancel":
        when = message.timestamp.astimezone(UTC) if message.timestamp else datetime.now(UTC)
        return (
            f"{when.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}  cancel {document.get('service', '?')}"
            f"  {message.routing_key}  correlation-id {document.get('id', correlation)}"
        )
    if not isinstance(document, dict):
        return f"{message.routing_key}  ({len(message.body)} bytes, not a JSON object)"
    association = document.get("association") or {}
    if str(document.get("type", "")).startswith("association-"):
        return "  ".join(
            [
                str(document.get("timestamp", "-")),
                f"event {document['type']}",
                f"from {association.get('calling_ae') or '-'}",
                f"association-id {association.get('id', '-')}",
            ]
        )
    request = document.get("request") or {}
    return "  ".join(
        [
            str(document.get("timestamp", "-")),
            str(document.get("service", "?")),
            _sop_class_text(str(document.get("sop_class_uid", ""))),
            f"from {association.get('calling_ae') or '-'}",
            f"message-id {request.get('message_id', '-')}",
            f"correlation-id {correlation}",
        ]
    )


def render(message: Delivered, *, compact: bool, show_phi: bool, binary: bool) -> str:
    try:
        document = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return header_line(message, None)
    shown = mask(document, show_phi=show_phi, binary=binary)
    options = 0 if compact else orjson.OPT_INDENT_2
    body = orjson.dumps(shown, option=options).decode()
    return f"{header_line(message, document)}\n{body}" + ("" if compact else "\n")


def tail_bindings(binding: str) -> list[str]:
    """BINDING, plus the cancel notices of the requests it matches (``cancel.`` in front)
    unless it matches those already (``#`` does)."""
    keys = [binding]
    if not topic_matches(binding, "cancel.c-find.1_2.AE"):
        keys.append(f"cancel.{binding}")
    return keys


_PHI_LIST = "\n".join("  " + line for line in textwrap.wrap(", ".join(PHI_TAGS.values()), 76))

TAIL_EPILOG = f"""\b
Each message gets one line (time, service, SOP class, calling AE, DIMSE message ID,
correlation ID), then its JSON. Values of PN elements and of these attributes are
masked unless --show-phi (in sequences too; PS3.15 Annex E patient attributes):
{_PHI_LIST}

\b
The tail queue gets a copy of each request: consumers still get theirs. But while it
runs, a request no consumer is bound for is routed to it instead of failing at once,
so that peer waits --reply-timeout for its failure status.

\b
Examples:
  dicom-bridge tail                          # everything, until Ctrl-C
  dicom-bridge tail 'c-store.*.CT_SCANNER_1' --count 5
  dicom-bridge tail 'n-action.#' --compact > n-action.log
  dicom-bridge tail --show-phi --exchange dicom-test"""


async def _tail(
    settings: BrokerSettings,
    binding: str,
    *,
    count: int | None,
    compact: bool,
    show_phi: bool,
    binary: bool,
) -> int:
    target = settings.redacted_url()
    _quiet_amqp_libraries(settings.log_level)
    try:
        connection = await _connect(settings, 10.0, "tail")
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError) as exc:
        _error(f"cannot reach the broker at {target}: {_reason(exc, _password(settings.amqp_url))}")
    seen = 0
    keys = tail_bindings(binding)
    try:
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=100)
            exchange = await channel.declare_exchange(
                settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            name = f"dicom-bridge.tail.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
            # Bounded, dropping the oldest: a slow terminal never makes the broker refuse
            # (and so the bridge fail) a request.
            queue = await channel.declare_queue(
                name,
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": 10000, "x-overflow": "drop-head"},
            )
            for key in keys:
                await queue.bind(exchange, key)
        except aiormq.exceptions.AMQPError as exc:
            _error(f"cannot tail exchange {settings.exchange!r}: {_amqp_text(exc)}")
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        await queue.consume(on_message, no_ack=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        click.echo(
            f"tailing exchange {settings.exchange!r} at {target}, binding "
            f"{' and '.join(repr(k) for k in keys)}; Ctrl-C stops",
            err=True,
        )
        click.echo(
            "note: this is a copy, consumers still get every request; but while it runs, "
            "a request no consumer is bound for comes here instead of failing at once "
            "(its peer waits --reply-timeout)",
            err=True,
        )
        if show_phi:
            click.echo("note: --show-phi: patient data is shown unmasked", err=True)
        lost = asyncio.ensure_future(connection.closed())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while count is None or seen < count:
                getting = asyncio.ensure_future(inbox.get())
                await asyncio.wait({getting, lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    if lost.done() and not stopped.done():
                        _error(f"lost the connection to the broker at {target}")
                    break
                text = render(getting.result(), compact=compact, show_phi=show_phi, binary=binary)
                click.echo(text)
                sys.stdout.flush()
                seen += 1
        finally:
            lost.cancel()
            stopped.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)
    click.echo(f"stopped after {seen} message{'' if seen == 1 else 's'}", err=True)
    return 0


# -- the commands --------------------------------------------------------------------------


@functools.cache
def commands() -> tuple[click.Command, ...]:
    """``schema``, ``check`` and ``tail``, for :mod:`bridge.cli` to register."""
    from bridge.cli import _settings, settings_options  # noqa: PLC0415 - cli imports us

    @click.command("schema", help=SCHEMA_HELP, epilog=SCHEMA_EPILOG)
    @click.argument("name", required=False, type=click.Choice(list(SCHEMAS)))
    @click.option("--path", is_flag=True, help="Print the file's path instead of its text.")
    def schema(name: str | None, path: bool) -> None:
        _schema(name, path)

    @click.command("check", epilog=CHECK_EPILOG)
    @settings_options(BridgeSettings)
    @click.option(
        "--management-url",
        default="http://127.0.0.1:15672",
        show_default=True,
        envvar="BRIDGE_MANAGEMENT_URL",
        help="RabbitMQ management API to read bindings from ('' to skip); it logs in "
        "with the AMQP URL's user unless the URL has its own. [env: BRIDGE_MANAGEMENT_URL]",
    )
    @click.option(
        "--bindings-from",
        type=click.Choice(["auto", "management", "rabbitmqctl", "none"]),
        default="auto",
        show_default=True,
        help="Where to read bindings: auto tries the management API, then rabbitmqctl "
        "when the broker runs on this host.",
    )
    @click.option(
        "--timeout", type=float, default=5.0, show_default=True, help="Seconds per network step."
    )
    def check(management_url: str, bindings_from: str, timeout: float, **flags: Any) -> None:
        """Check a set-up before 'serve': configuration, files, port, broker, bindings."""
        _check(management_url, bindings_from, timeout, **flags)

    @click.command("tail", epilog=TAIL_EPILOG)
    @click.argument("binding", default="#")
    @settings_options(BrokerSettings)
    @click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages.")
    @click.option("--compact", is_flag=True, help="One line of JSON per message.")
    @click.option("--show-phi", is_flag=True, help="Do not mask patient data.")
    @click.option("--binary", is_flag=True, help="Show long InlineBinary values in full.")
    def tail(
        binding: str,
        count: int | None,
        compact: bool,
        show_phi: bool,
        binary: bool,
        **flags: Any,
    ) -> None:
        """Print the requests (and cancel notices) published to the exchange, live.

        BINDING is a topic pattern on the routing key <service>.<sop class>.<calling AE>
        (default '#': everything).
        """
        settings = _settings(BrokerSettings, flags)
        code = asyncio.run(
            _tail(
                settings,
                binding,
                count=count,
                compact=compact,
                show_phi=show_phi,
                binary=binary,
            )
        )
        sys.exit(code)

    return schema, check, tail
