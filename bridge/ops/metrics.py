"""Prometheus metrics of one bridge process (prometheus-client, own registry).

Names follow Prometheus conventions (``dicom_bridge_..._total``, ``_seconds``,
``_bytes``); labels are low-cardinality: service names, status codes, failure kinds and
directions, never UIDs or AE titles. Counters the transport keeps itself
(:class:`~bridge.transport.amqp.TransportStats`) and live states (connected, blocked,
associations) are read at scrape time by a collector, so the transport and the SCP know
nothing of Prometheus beyond the :class:`Metrics` calls below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.errors import Failure
from bridge.protocol.model import Service

SIZE_BUCKETS = tuple(float(4**n) for n in range(4, 14))  # 256 B .. 64 MiB
DURATION_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip


@dataclass(frozen=True)
class LiveState:
    """Read at each scrape."""

    connected: Callable[[], bool]
    blocked: Callable[[], bool]
    in_flight: Callable[[], int]
    associations: Callable[[], int]
    transport_counters: Callable[[], dict[str, int]]
    spooled: Callable[[], int] = lambda: 0


_TRANSPORT_COUNTERS = {
    "published": ("dicom_bridge_published_requests", "Requests the broker confirmed."),
    "replies": ("dicom_bridge_replies", "Consumer replies matched to a waiting request."),
    "late_replies": (
        "dicom_bridge_late_replies",
        "Replies dropped because no request waited for them (deadline passed, cancelled).",
    ),
    "returned": (
        "dicom_bridge_returned_publishes",
        "Requests the broker returned: no queue bound for the routing key.",
    ),
    "nacked": ("dicom_bridge_nacked_publishes", "Requests the broker refused (nack)."),
    "publish_timeouts": (
        "dicom_bridge_publish_timeouts",
        "Publishes not confirmed in time (broker blocked or overloaded).",
    ),
    "connects": ("dicom_bridge_amqp_connects", "Successful connections to the broker."),
    "connection_losses": ("dicom_bridge_amqp_reconnects", "Broker connections lost."),
    "failed_on_loss": (
        "dicom_bridge_failed_on_connection_loss",
        "In-flight requests failed because the broker connection was lost.",
    ),
}


class _LiveCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily(
            "dicom_bridge_amqp_connected",
            "1 while the broker connections are up.",
            value=float(state.connected()),
        )
        yield GaugeMetricFamily(
            "dicom_bridge_amqp_blocked",
            "1 while the broker blocks publishing (memory or disk alarm).",
            value=float(state.blocked()),
        )
        yield GaugeMetricFamily(
            "dicom_bridge_in_flight_requests",
            "Requests published and awaiting replies.",
            value=float(state.in_flight()),
        )
        yield GaugeMetricFamily(
            "dicom_bridge_active_associations",
            "DICOM associations open now.",
            value=float(state.associations()),
        )
        yield GaugeMetricFamily(
            "dicom_bridge_spooled_messages",
            "Messages waiting in the disk spool for the broker.",
            value=float(state.spooled()),
        )
        counters = state.transport_counters()
        for key, (name, documentation) in _TRANSPORT_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=float(counters.get(key, 0)))


class Metrics:
    """The bridge's metrics; one instance per process (tests make their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dicom_bridge_requests",
            "DIMSE requests answered, by service and final status (hex).",
            ["service", "status"],
            registry=self.registry,
        )
        self.failures = Counter(
            "dicom_bridge_failures",
            "Requests the bridge answered with a failure of its own, by service and reason "
            "(unavailable, unroutable, timeout, bad-reply, bad-request, internal).",
            ["service", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "dicom_bridge_request_duration_seconds",
            "From receiving a DIMSE request to handing the final answer to pynetdicom.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.message_size = Histogram(
            "dicom_bridge_message_size_bytes",
            "Sizes of envelopes published and replies received.",
            ["direction"],
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.cancels = Counter(
            "dicom_bridge_cancels",
            "C-CANCELs received for streamed requests, by service.",
            ["service"],
            registry=self.registry,
        )
        self.spool = Counter(
            "dicom_bridge_fire_and_forget",
            "Events and publish-only requests: published at once, spooled to disk while "
            "the broker was away, replayed from the spool, or lost (spool full).",
            ["action"],
            registry=self.registry,
        )
        for action in ("published", "spooled", "replayed", "lost"):
            self.spool.labels(action)
        self.associations = Counter(
            "dicom_bridge_associations",
            "Associations by outcome: accepted, rejected, released, aborted.",
            ["outcome"],
            registry=self.registry,
        )
        # Create the label sets up front: a series that exists from the start makes
        # rate() and alerts work before the first failure.
        for service in Service:
            for failure in Failure:
                self.failures.labels(service.value, failure.value)

    def watch(self, state: LiveState) -> None:
        self.registry.register(_LiveCollector(state))

    def answered(self, service: Service, status: int, seconds: float) -> None:
        self.requests.labels(service.value, f"0x{status:04X}").inc()
        self.duration.labels(service.value).observe(seconds)

    def failed(self, service: Service, failure: Failure) -> None:
        self.failures.labels(service.value, failure.value).inc()

    def sent(self, size: int) -> None:
        self.message_size.labels("request").observe(size)

    def received(self, size: int) -> None:
        self.message_size.labels("reply").observe(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
