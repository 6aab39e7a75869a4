"""Lifecycle of ``dicom-bridge serve``: broker, then SCP, serve, stop in reverse order.

The asyncio loop runs in the calling thread; pynetdicom's server and association threads
enter it only through :class:`~bridge.seam.Seam`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from bridge.config import BridgeSettings
from bridge.errors import StartupError
from bridge.scp import BridgeSCP
from bridge.seam import Seam
from bridge.transport.amqp import AmqpTransport

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A started bridge: what tests and the CLI need to see and stop it."""

    settings: BridgeSettings
    transport: AmqpTransport
    scp: BridgeSCP

    @property
    def port(self) -> int:
        return self.scp.port

    async def stop(self) -> None:
        """Stop accepting, close associations, then close the broker connections."""
        # shutdown() joins association threads, which may be waiting on the loop.
        await asyncio.to_thread(self.scp.stop)
        await self.transport.close()
        log.info("stopped")


async def start(settings: BridgeSettings) -> Running:
    """Connect to the broker in the background and start listening.

    Raises :class:`~bridge.errors.StartupError` when the DICOM port cannot be bound. An
    unreachable broker does not fail start-up: the transport keeps retrying, and requests
    fail fast meanwhile.
    """
    loop = asyncio.get_running_loop()
    transport = AmqpTransport(
        settings.amqp_url, settings.exchange, publish_timeout=settings.publish_timeout
    )
    await transport.start()
    scp = BridgeSCP(settings, transport, Seam(loop))
    try:
        scp.start()
    except OSError as exc:
        await transport.close()
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        await transport.close()
        raise
    log.info(
        "listening on %s:%d as %s (%d SOP classes), broker %s",
        settings.host,
        scp.port,
        settings.ae_title,
        len(settings.sop_class_uids),
        settings.redacted_url(),
    )
    return Running(settings, transport, scp)


async def serve(settings: BridgeSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received: stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await running.stop()
