"""Lifecycle of ``dicom-bridge serve``: broker, then SCP and HTTP port, serve, and on
SIGTERM drain and stop in reverse order.

The asyncio loop runs in the calling thread; pynetdicom's server and association threads
enter it only through :class:`~bridge.transport.seam.Seam`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from bridge.config import BridgeSettings
from bridge.errors import StartupError
from bridge.ops.health import HealthServer
from bridge.ops.metrics import LiveState, Metrics
from bridge.scp.events import EventPublisher
from bridge.scp.server import BridgeSCP
from bridge.scp.spool import DiskSpool
from bridge.scu.commander import Commander, CommanderSettings
from bridge.transport.amqp import AmqpTransport
from bridge.transport.bulkstore import DirectoryStore
from bridge.transport.seam import Seam

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A started bridge: what tests and the CLI need to see, drain and stop it."""

    settings: BridgeSettings
    transport: AmqpTransport
    scp: BridgeSCP
    metrics: Metrics
    events: EventPublisher
    commander: Commander | None = None
    draining: bool = False

    def __post_init__(self) -> None:
        self.health = HealthServer(
            self.settings.http_host, self.settings.http_port, self.checks, self.metrics.exposition
        )

    @property
    def port(self) -> int:
        return self.scp.port

    def checks(self) -> dict[str, bool]:
        """The readiness checks of ``/readyz``."""
        return {
            "scp_listening": self.scp.listening,
            "broker_connected": self.transport.ready,
            "broker_unblocked": not self.transport.blocked,
            "not_draining": not self.draining,
            "commands_consuming": self.commander is None or self.commander.ready,
        }

    async def drain(self) -> None:
        """Stop accepting associations and let peers finish theirs, up to the drain
        timeout; then answer new requests with a failure, wait for those in flight (each
        bounded by its reply deadline) and abort what is still open."""
        settings = self.settings
        self.draining = True
        await asyncio.to_thread(self.scp.stop_listening)
        open_now = self.scp.established_associations
        log.info(
            "draining: not accepting associations; %d open, %d requests in flight, "
            "waiting up to %g s",
            open_now,
            self.scp.in_flight,
            settings.drain_timeout,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.drain_timeout
        # Association threads end on their own; polling their count is simplest.
        while self.scp.established_associations and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.scp.closing = True
        bound = settings.publish_timeout + settings.reply_timeout + 2.0
        if not await asyncio.to_thread(self.scp.wait_idle, bound):
            log.warning("drain: %d requests still in flight after %g s", self.scp.in_flight, bound)
        left = self.scp.active_associations
        if left:
            log.warning("drain: aborting %d associations still open", left)
        if self.commander is not None:
            await self.commander.close()

    async def stop(self) -> None:
        """Abort what is open, then close the HTTP port and the broker connections."""
        # stop() joins association threads, which may be waiting on the loop.
        await asyncio.to_thread(self.scp.stop)
        await self.health.close()
        if self.commander is not None:
            await self.commander.close()
        await self.events.close(timeout=self.settings.publish_timeout + 1.0)
        await self.transport.close()
        log.info("stopped")


async def start(settings: BridgeSettings, metrics: Metrics | None = None) -> Running:
    """Connect to the broker in the background, start listening for DICOM and HTTP.

    Raises :class:`~bridge.errors.StartupError` when a port cannot be bound or the
    claim-check directory cannot be written. An unreachable broker does not fail
    start-up: the transport keeps retrying, and requests fail fast meanwhile.
    """
    loop = asyncio.get_running_loop()
    metrics = metrics or Metrics()
    transport = AmqpTransport(
        settings.amqp_url,
        settings.exchange,
        publish_timeout=settings.publish_timeout,
        ssl_context=settings.amqp_ssl_context(),
    )
    spool = DiskSpool(settings.spool_dir, settings.spool_max_bytes)
    events = EventPublisher(transport, spool, metrics, loop)
    scp = BridgeSCP(settings, transport, Seam(loop), metrics, events)
    running = Running(settings, transport, scp, metrics, events)
    metrics.watch(
        LiveState(
            connected=lambda: transport.ready,
            blocked=lambda: transport.blocked,
            in_flight=lambda: transport.in_flight,
            associations=lambda: scp.active_associations,
            transport_counters=lambda: vars(transport.stats),
            spooled=lambda: len(spool),
        )
    )
    try:
        await events.start()
    except OSError as exc:
        raise StartupError(f"spool directory {settings.spool_dir}: {exc.strerror or exc}") from exc
    await transport.start()
    if settings.commands:
        running.commander = Commander(
            CommanderSettings.from_settings(settings),
            ae_table=settings.load_ae_table(),
            store=DirectoryStore(settings.bulk_dir),
            ssl_context=settings.amqp_ssl_context(),
        )
        await running.commander.start()  # connects in the background; never raises
    try:
        await running.health.start()
    except OSError as exc:
        await _unwind(running)
        raise StartupError(
            f"cannot listen on {settings.http_host}:{settings.http_port} (HTTP): "
            f"{exc.strerror or exc}"
        ) from exc
    try:
        scp.start()
    except OSError as exc:
        await _unwind(running)
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        await _unwind(running)
        raise
    log.info(
        "listening on %s:%d as %s (%d SOP classes), HTTP on %s:%d, broker %s",
        settings.host,
        scp.port,
        settings.ae_title,
        len(settings.sop_class_uids),
        settings.http_host,
        running.health.port,
        settings.redacted_url(),
    )
    return running


async def _unwind(running: Running) -> None:
    """Undo a start that failed half-way."""
    await running.health.close()
    if running.commander is not None:
        await running.commander.close()
    await running.events.close(timeout=0)
    await running.transport.close()


async def serve(settings: BridgeSettings) -> None:
    """Run until SIGTERM or SIGINT; then drain and stop."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received: draining, then stopping")
        await running.drain()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await running.stop()
