"""Fire-and-forget messages that must not be lost: association events and publish-only
requests.

Events (``event.association-<outcome>.<calling AE>``) are published confirmed and
persistent; while the broker is away, or while older messages wait in the spool, they go
to the :class:`~bridge.scp.spool.DiskSpool` and a replayer publishes them, oldest first, when
the broker is back. Nothing is dropped without a log line and a metric: a full spool is
an error.

Publish-only requests (``--publish-only c-store,...``): the peer gets Success once the
broker confirmed the envelope, or once it is safe in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.errors import BrokerUnavailable, Unroutable
from bridge.ops.metrics import Metrics
from bridge.protocol.envelope import AssociationInfo, iso_time
from bridge.protocol.model import ENVELOPE_VERSION, routing_word
from bridge.scp.spool import DiskSpool, SpoolFull
from bridge.transport import Outbound, Transport

log = logging.getLogger(__name__)

REPLAY_BATCH = 64
REPLAY_IDLE = 0.5


def association_event(outcome: str, info: AssociationInfo) -> Outbound:
    """The event for an association accepted, released, aborted or rejected."""
    event_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    kind = f"association-{outcome}"
    stamp = iso_time(now)
    body = {
        "version": ENVELOPE_VERSION,
        "type": kind,
        "id": event_id,
        "timestamp": stamp,
        "association": info.as_json(),
    }
    return Outbound(
        routing_key=f"event.{kind}.{routing_word(info.calling_ae) or '-'}",
        body=orjson.dumps(body),
        correlation_id=event_id,
        type=kind,
        timestamp=now,
        headers={"event": kind, "calling-ae": info.calling_ae, "ce-specversion": "1.0",
                 "ce-id": event_id, "ce-type": f"org.dicom-bridge.{kind}",
                 "ce-source": f"dicom://{info.called_ae}", "ce-time": stamp},
        persistent=True,
        mandatory=False,  # nobody has to listen to events
    )  # fmt: skip


class EventPublisher:
    """Publishes through the transport, falls back to the spool, replays the spool.

    Lives in the event loop; :meth:`emit` may be called from any thread.
    """

    def __init__(
        self,
        transport: Transport,
        spool: DiskSpool,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._spool = spool
        self._metrics = metrics
        self._loop = loop
        self._wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._spool.open()
        if len(self._spool):
            log.info("%d spooled messages from an earlier run will be replayed", len(self._spool))
        self._replayer = asyncio.create_task(self._replay(), name="spool-replayer")

    async def close(self, timeout: float) -> None:
        """Let publishes in progress end (they spool on failure), stop the replayer."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout)
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if len(self._spool):
            log.warning("%d messages stay spooled for the next run", len(self._spool))

    # -- events ---------------------------------------------------------------------------

    def emit(self, message: Outbound) -> None:
        """Publish ``message`` eventually; never blocks the caller's thread."""
        try:
            self._loop.call_soon_threadsafe(self._schedule, message)
        except RuntimeError:  # the loop is closed: straight to disk
            self._to_spool(message)

    def _schedule(self, message: Outbound) -> None:
        task = asyncio.create_task(self._publish_or_spool(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish_or_spool(self, message: Outbound) -> None:
        try:
            await self.deliver(message)
        except Unroutable:
            pass  # cannot happen for events (not mandatory)
        except BrokerUnavailable as exc:
            log.error("event lost: %s", exc.message)

    # -- publish-only requests and events alike -------------------------------------------

    async def deliver(self, message: Outbound) -> None:
        """Publish now if the broker is there and nothing older waits, else spool.

        Raises Unroutable (mandatory messages only) and SpoolFull.
        """
        if self._transport.ready and not len(self._spool):
            try:
                await self._transport.publish(message)
            except Unroutable:
                raise
            except BrokerUnavailable:
                pass  # spool it below
            else:
                self._metrics.spool.labels("published").inc()
                return
        self._to_spool(message)

    def _to_spool(self, message: Outbound) -> None:
        try:
            self._spool.put(message)
        except SpoolFull:
            self._metrics.spool.labels("lost").inc()
            raise
        self._metrics.spool.labels("spooled").inc()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _replay(self) -> None:
        while True:
            if not len(self._spool) or not self._transport.ready:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), REPLAY_IDLE)
                continue
            sent = 0
            for path, message in self._spool.oldest(REPLAY_BATCH):
                try:
                    await self._transport.publish(message)
                except Unroutable:
                    # A publish-only request nobody is bound for: keep it, try later.
                    log.warning("spooled %s unroutable: kept for later", message.type)
                    break
                except BrokerUnavailable:
                    break
                self._spool.remove(path)
                self._metrics.spool.labels("replayed").inc()
                sent += 1
            if sent:
                log.info("replayed %d spooled messages, %d left", sent, len(self._spool))
            else:
                await asyncio.sleep(REPLAY_IDLE)
