"""``check`` tests a set-up before ``serve``: configuration, files, port, broker, bindings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen

import aiormq
import click
from aio_pika.abc import AbstractConnection

from bridge.cli.options import quiet_amqp_libraries, settings_options
from bridge.config import BridgeSettings, load
from bridge.errors import ConfigError
from bridge.protocol.model import Service, routing_key, topic_matches, topic_words_match
from bridge.protocol.sopclasses import accepted_services, services_of
from bridge.transport import broker, urls

Status = Literal["OK", "WARN", "FAIL"]
_COLOURS: dict[Status, str] = {"OK": "green", "WARN": "yellow", "FAIL": "red"}


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
    password = (
        unquote(parts.password or "") if parts.username else (urls.password(amqp_url) or "guest")
    )
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    root = parts._replace(netloc=netloc).geturl().rstrip("/")  # without the credentials
    vhost = quote(urls.vhost(amqp_url), safe="")
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
    vhost = urls.vhost(amqp_url)

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
        report.add(
            "FAIL", "exchange", f"{name!r} cannot be checked: {broker.channel_error_text(exc)}"
        )
        return None
    channel = await connection.channel()
    try:
        # It exists, so this declare creates nothing: it is the one serve makes, and fails
        # the same way when the type or the flags differ.
        await broker.declare_exchange(channel, name)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        text = broker.channel_error_text(exc)
        report.add("FAIL", "exchange", f"{name!r} differs from what serve declares: {text}")
        return None
    except aiormq.exceptions.AMQPError as exc:
        report.add(
            "FAIL",
            "exchange",
            f"{name!r}: serve could not declare it: {broker.channel_error_text(exc)}",
        )
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
            if any(
                topic_words_match(b.routing_key.split("."), [service.value, w, None]) for w in words
            )
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
    secret = urls.password(settings.amqp_url)
    quiet_amqp_libraries(settings.log_level)
    try:
        connection = await broker.connect(
            settings.amqp_url,
            purpose="check",
            timeout=timeout,
            ssl_context=settings.amqp_ssl_context(),
        )
    except broker.CONNECT_ERRORS as exc:
        report.add(
            "FAIL", "broker", f"cannot connect to {target}: {broker.failure_reason(exc, secret)}"
        )
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
