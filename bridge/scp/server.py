"""The DICOM side: a pynetdicom SCP whose handlers ask the broker for every answer.

Handlers run in pynetdicom's association threads. Each one encodes the request in that
thread (pure code), hops into the event loop through :class:`~bridge.transport.seam.Seam`
to publish and await the reply (:class:`~bridge.scp.conversation.Conversation`), decodes the
reply in that thread again, and returns what pynetdicom expects. C-FIND, C-GET and C-MOVE
stream (:mod:`bridge.scp.streams`). Every failure on the way becomes the service's failure
status with an Error Comment; a handler never raises, so pynetdicom never aborts an
association on our account and the association stays usable after a failed request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from bridge._pynetdicom import commandset, loghandlers, reactor, send
from bridge._pynetdicom.contexts import cheap_to_copy
from bridge.config import CallingPolicy
from bridge.errors import BridgeError, BrokerUnavailable, Failure
from bridge.ops.metrics import Metrics
from bridge.protocol import sopclasses
from bridge.protocol.envelope import AssociationInfo
from bridge.protocol.model import Service
from bridge.protocol.reply import reply_to_dimse, status_dataset
from bridge.scp import netopt, received, sending, streams
from bridge.scp.conversation import Conversation, Limits
from bridge.scp.events import EventPublisher, association_event
from bridge.scp.guard import RateLimiter, SocketGuard, guard_socket, install_calling_policy
from bridge.transport import Transport
from bridge.transport.bulkstore import DirectoryStore
from bridge.transport.seam import Seam

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from bridge.config import BridgeSettings

log = logging.getLogger(__name__)

UNCOMPRESSED = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

HandlerResult = Dataset | tuple[Dataset, Dataset | None]

_EVENTS: dict[Service, evt.InterventionEvent] = {
    Service.C_ECHO: evt.EVT_C_ECHO,
    Service.C_STORE: evt.EVT_C_STORE,
    Service.C_FIND: evt.EVT_C_FIND,
    Service.C_GET: evt.EVT_C_GET,
    Service.C_MOVE: evt.EVT_C_MOVE,
    Service.N_EVENT_REPORT: evt.EVT_N_EVENT_REPORT,
    Service.N_GET: evt.EVT_N_GET,
    Service.N_SET: evt.EVT_N_SET,
    Service.N_ACTION: evt.EVT_N_ACTION,
    Service.N_CREATE: evt.EVT_N_CREATE,
    Service.N_DELETE: evt.EVT_N_DELETE,
}


class BridgeSCP:
    """The association acceptor. ``start`` listens; ``stop`` closes every association."""

    def __init__(
        self,
        settings: BridgeSettings,
        transport: Transport,
        seam: Seam,
        metrics: Metrics | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._seam = seam
        self.metrics = metrics or Metrics()
        self._events = events
        self._publish_only = {Service(name) for name in settings.publish_only}
        self._in_flight = 0
        self._idle = threading.Condition()
        self.closing = False
        """Set while shutting down: new requests get a failure status at once."""
        self._associations: weakref.WeakKeyDictionary[Association, AssociationInfo] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # Plain dicts emptied on EVT_CONN_CLOSE: a guard references its association
        # through the socket, so weak keys would never die.
        self._guards: dict[Association, SocketGuard] = {}
        self._limiters: dict[Association, RateLimiter] = {}
        self._server: ThreadedAssociationServer | None = None
        self._store = DirectoryStore(settings.bulk_dir)
        self._ae_table = settings.load_ae_table()
        self._limits = Limits(
            reply_timeout=settings.reply_timeout,
            publish_timeout=settings.publish_timeout,
            bulk_threshold=settings.bulk_threshold,
            max_message_size=settings.max_message_size,
        )
        self._ae = self._build_ae()

    # -- lifecycle ------------------------------------------------------------------------

    def _build_ae(self) -> AE:
        s = self._settings
        # pynetdicom binds "standard" handlers to every association that format a dump of
        # each PDU and DIMSE message, then log it at INFO/DEBUG. The bridge keeps
        # pynetdicom at WARNING (bridge.ops.logging), so that work is thrown away: 0.24 ms of
        # CPU per N-EVENT-REPORT on the SCP side (5 calls). Bound only when they would log.
        verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
        loghandlers.bind_standard_handlers(verbose)
        commandset.install()  # 0.34 -> 0.15 ms of CPU per N-EVENT-REPORT response
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.require_called_aet = s.require_called_ae
        install_calling_policy(CallingPolicy.parse(s.allowed_calling_aes), ae)
        for uid in s.sop_class_uids:
            syntaxes = AllTransferSyntaxes if sopclasses.is_storage(uid) else UNCOMPRESSED
            # Accept whichever role the peer proposes: a Storage Commitment SCP that
            # reports results asks to be the SCP of the class on its own association.
            ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
        return ae

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``--port 0``)."""
        if self._server is None:
            raise RuntimeError("SCP not started")
        return int(self._server.server_address[1])

    @property
    def active_associations(self) -> int:
        return len(self._ae.active_associations)

    @property
    def established_associations(self) -> int:
        """Associations past negotiation: a bare TCP connection (a port probe) is not one."""
        return sum(1 for assoc in self._ae.active_associations if assoc.is_established)

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def in_flight(self) -> int:
        """DIMSE requests being handled now."""
        return self._in_flight

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is being handled; False when ``timeout`` passes first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def stop_listening(self) -> None:
        """Accept no new association; the open ones go on. Blocks briefly."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def start(self) -> None:
        """Listen. Raises OSError when the address cannot be bound or the claim-check or
        receive directory cannot be written."""
        self._store.ensure()
        if self._settings.receive_to_disk:
            directory = self._settings.receive_directory
            # Up to the bulk threshold a data set stays in memory: all its values go into
            # the envelope anyway, and the reader would read it whole from a file too.
            received.enable(self._ae, directory, self._settings.bulk_threshold)
            if swept := received.sweep(directory):
                log.info("deleted %d data set files left in %s", swept, directory)
        # C-GET and C-MOVE send the Part 10 files of part10 replies as they are.
        send.send_files_as_they_are()
        handlers: list[evt.EventHandlerType] = [
            (event, self._handler(service)) for service, event in _EVENTS.items()
        ]
        handlers += [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_DIMSE_RECV, self._on_dimse_received),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_DIMSE_SENT, self._on_dimse_sent),
        ]
        server = self._ae.start_server(
            (self._settings.host, self._settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._settings.dicom_ssl_context(),
            # Copied for every association: 68 ms of CPU each with pynetdicom's deepcopy.
            contexts=cheap_to_copy(self._ae.supported_contexts),
        )
        assert server is not None  # block=False always returns the server
        self._server = server

    def stop(self) -> None:
        """Stop listening and abort the associations still open. Blocks: call it off
        the loop."""
        self.stop_listening()
        self._ae.shutdown()

    # -- association bookkeeping ----------------------------------------------------------

    @staticmethod
    def _describe(assoc: Association) -> AssociationInfo:
        requestor = assoc.requestor
        return AssociationInfo(
            id=str(uuid.uuid4()),
            calling_ae=str(requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            peer_address=str(requestor.address),
            peer_port=int(requestor.port),
            implementation_class_uid=_opt(requestor.implementation_class_uid),
            implementation_version_name=_opt(requestor.implementation_version_name),
        )

    def _info(self, assoc: Association) -> AssociationInfo:
        with self._lock:
            info = self._associations.get(assoc)
            if info is None:
                info = self._describe(assoc)
                self._associations[assoc] = info
            return info

    def _on_connection(self, event: Event) -> None:
        s = self._settings
        if s.tcp_tuning:
            netopt.tune_association(event.assoc)
        if s.event_reactors:
            reactor.make_event_driven(event.assoc)
        guard = guard_socket(event.assoc, s.max_pdu, s.max_dataset_size)
        with self._lock:
            self._guards[event.assoc] = guard
            self._limiters[event.assoc] = RateLimiter(s.max_request_rate)

    def _on_requested(self, event: Event) -> None:
        # C-GET: the peer's preferred transfer syntax for what it retrieves, so that
        # stored files in it are sent unchanged.
        sending.prefer_peer_syntaxes(event.assoc)

    def _on_connection_closed(self, event: Event) -> None:
        received.discard_partial(event.assoc)  # a C-STORE data set cut off mid-transfer
        with self._lock:
            self._guards.pop(event.assoc, None)
            self._limiters.pop(event.assoc, None)

    def _on_dimse_received(self, event: Event) -> None:
        guard = self._guards.get(event.assoc)
        if guard is not None:
            guard.message_done()

    def _emit(self, outcome: str, info: AssociationInfo) -> None:
        if self._events is not None and self._settings.association_events:
            self._events.emit(association_event(outcome, info))

    def _on_established(self, event: Event) -> None:
        self.metrics.associations.labels("accepted").inc()
        info = self._info(event.assoc)
        self._emit("accepted", info)
        log.info(
            "association accepted from %s:%d",
            info.peer_address,
            info.peer_port,
            extra={"association_id": info.id, "calling_ae": info.calling_ae},
        )

    def _on_closed(self, event: Event) -> None:
        received.discard_queued(event.assoc)  # C-STOREs received but never to be handled
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        self.metrics.associations.labels(outcome).inc()
        with self._lock:
            info = self._associations.pop(event.assoc, None)
        if info is not None:
            self._emit(outcome, info)
            log.info(
                "association %s",
                outcome,
                extra={"association_id": info.id, "calling_ae": info.calling_ae},
            )

    def _on_dimse_sent(self, event: Event) -> None:
        # Every final response the peer gets, whoever chose its status (pynetdicom
        # decides C-GET/C-MOVE finals from its sub-operation counts).
        name = type(event.message).__name__
        if not name.endswith("_RSP"):
            return
        status = getattr(event.message.command_set, "Status", None)
        if status is None or status in (0xFF00, 0xFF01):
            return
        service = Service(name[:-4].lower().replace("_", "-"))
        self.metrics.requests.labels(service.value, f"0x{int(status):04X}").inc()

    def _on_rejected(self, event: Event) -> None:
        self.metrics.associations.labels("rejected").inc()
        with self._lock:
            info = self._associations.pop(event.assoc, None)
        self._emit("rejected", info or self._describe(event.assoc))
        requestor = event.assoc.requestor
        log.warning(
            "association rejected from %s:%s (calling AE %r)",
            requestor.address,
            requestor.port,
            str(requestor.ae_title).strip(),
        )

    # -- requests -------------------------------------------------------------------------

    def conversation(self, event: Event, service: Service) -> Conversation:
        """Start the exchange with the consumers for one request (no I/O yet). Raises
        BrokerUnavailable while the bridge shuts down."""
        if self.closing:
            raise BrokerUnavailable("bridge is shutting down")
        limiter = self._limiters.get(event.assoc)
        if limiter is not None:
            limiter.take()
        return Conversation(
            event,
            service,
            self._info(event.assoc),
            transport=self._transport,
            seam=self._seam,
            store=self._store,
            limits=self._limits,
            metrics=self.metrics,
        )

    def _handler(self, service: Service) -> Callable[[Event], Any]:
        def handle(event: Event) -> Any:
            if service is Service.C_FIND:
                return self._counted(streams.handle_find(event, self.conversation))
            if service is Service.C_GET:
                return self._counted(streams.handle_get(event, self.conversation, self._store))
            if service is Service.C_MOVE:
                return self._counted(
                    streams.handle_move(event, self.conversation, self._store, self._ae_table)
                )
            with self._request():
                return self.handle(event, service)

        handle.__name__ = f"handle_{service.name.lower()}"
        return handle

    def _counted(self, stream: Iterator[Any]) -> Iterator[Any]:
        """A streamed handler counted as in flight until pynetdicom is done with it."""
        with self._request():
            yield from stream

    def handle(self, event: Event, service: Service) -> HandlerResult:
        """Answer one single-reply request through the broker; never raises."""
        spec = service.spec
        conversation: Conversation | None = None
        try:
            conversation = self.conversation(event, service)
            with conversation.logging_context():
                if service in self._publish_only and self._events is not None:
                    conversation.hand_over(self._events)
                    status, dataset = status_dataset(0x0000), None
                else:
                    reply = conversation.round_trip()
                    status, dataset = reply_to_dimse(
                        reply,
                        spec,
                        request_instance_uid=conversation.envelope.request_instance_uid,
                    )
        except BridgeError as exc:
            status = status_dataset(spec.failure_status(exc.failure), {"ErrorComment": exc.comment})
            dataset = None
            self.metrics.failed(service, exc.failure)
            log.warning(
                "%s failed (%s): %s; answered 0x%04X",
                service.dimse_name,
                exc.failure.value,
                exc.message,
                status.Status,
                extra=_extra(conversation),
            )
        except Exception:
            status = status_dataset(
                spec.failure_status(Failure.INTERNAL), {"ErrorComment": "bridge internal error"}
            )
            dataset = None
            self.metrics.failed(service, Failure.INTERNAL)
            log.exception(
                "%s failed: internal error; answered 0x%04X",
                service.dimse_name,
                status.Status,
                extra=_extra(conversation),
            )
        else:
            log.debug(
                "%s answered 0x%04X in %.1f ms",
                service.dimse_name,
                status.Status,
                conversation.elapsed_ms(),
                extra=_extra(conversation),
            )
        finally:
            if conversation is not None:
                conversation.close()
        # pynetdicom wants a bare status where the response has no dataset (C-ECHO,
        # C-STORE, N-DELETE) and a (status, dataset) pair otherwise.
        if spec.reply_dataset is None:
            return status
        return status, dataset


def _opt(value: Any) -> str | None:
    return str(value).strip() if value else None


def _extra(conversation: Conversation | None) -> dict[str, str]:
    if conversation is None:
        return {}
    return {
        "correlation_id": conversation.id,
        "association_id": conversation.info.id,
        "calling_ae": conversation.info.calling_ae,
    }
