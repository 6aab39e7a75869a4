"""The HTTP port (metrics scraped after real traffic, health and readiness with the broker
going away), structured logs, and draining on SIGTERM."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import examples
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from bridge.ops import logging as bridge_logging
from bridge.protocol.model import Service
from bridge.sdk.consumer import Request
from tests.conftest import BridgeFactory, ConsumerFactory
from tests.harness import (
    BridgeHarness,
    ConsumerHarness,
    Recorder,
    TcpProxy,
    association,
    delete_exchange,
    free_port,
)
from tests.waiting import eventually

EXE = str(Path(sys.executable).with_name("dicom-bridge"))


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _http(bridge: BridgeHarness, path: str) -> tuple[int, str, bytes]:
    return _get(f"http://127.0.0.1:{bridge.running.health.port}{path}")


def _samples(bridge: BridgeHarness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, kind, body = _http(bridge, "/metrics")
    assert status == 200
    assert kind.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_after_real_traffic(bridge: BridgeHarness, make_consumer: ConsumerFactory) -> None:
    with association(bridge.port, [Verification, CTImageStorage]) as assoc:
        assert assoc.send_c_echo().Status == 0x0110  # nobody bound yet: unroutable
        make_consumer(Recorder())
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(examples.ct).Status == 0
        samples = _samples(bridge)
        assert samples[("dicom_bridge_active_associations", ())] == 1
    requests = "dicom_bridge_requests_total"
    assert samples[(requests, (("service", "c-echo"), ("status", "0x0000")))] == 1
    assert samples[(requests, (("service", "c-echo"), ("status", "0x0110")))] == 1
    assert samples[(requests, (("service", "c-store"), ("status", "0x0000")))] == 1
    failures = "dicom_bridge_failures_total"
    assert samples[(failures, (("reason", "unroutable"), ("service", "c-echo")))] == 1
    assert samples[(failures, (("reason", "timeout"), ("service", "c-store")))] == 0
    duration = "dicom_bridge_request_duration_seconds_count"
    assert samples[(duration, (("service", "c-store"),))] == 1
    size = "dicom_bridge_message_size_bytes_sum"
    assert samples[(size, (("direction", "request"),))] > len(examples.ct.PixelData)
    assert samples[("dicom_bridge_returned_publishes_total", ())] == 1
    assert samples[("dicom_bridge_replies_total", ())] == 2
    assert samples[("dicom_bridge_amqp_connected", ())] == 1
    assert samples[("dicom_bridge_amqp_blocked", ())] == 0
    assert samples[("dicom_bridge_associations_total", (("outcome", "accepted"),))] == 1
    # No label carries a UID or an AE title.
    for (_name, labels), _ in samples.items():
        for key, value in labels:
            assert key in {"service", "status", "reason", "direction", "outcome", "action", "le"}
            assert "TEST-SCU" not in value


def test_health_and_readiness_follow_the_broker(make_bridge: BridgeFactory) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))
    proxy.start()
    try:
        harness = make_bridge(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        harness.wait_ready()
        assert _http(harness, "/healthz")[0] == 200
        status, kind, body = _http(harness, "/readyz")
        assert (status, kind) == (200, "application/json")
        assert orjson.loads(body)["ready"] is True
        proxy.stop()
        eventually(lambda: _http(harness, "/readyz")[0] != 200, "not ready", interval=0.05)
        status, _, body = _http(harness, "/readyz")
        assert status == 503
        assert orjson.loads(body)["checks"]["broker_connected"] is False
        assert _http(harness, "/healthz")[0] == 200  # alive all the same
        proxy.start()
        harness.wait_ready(timeout=15)
        assert _http(harness, "/readyz")[0] == 200
    finally:
        proxy.close()


def test_http_port_answers_only_its_three_paths(bridge: BridgeHarness) -> None:
    assert _http(bridge, "/nope")[0] == 404
    request = urllib.request.Request(
        f"http://127.0.0.1:{bridge.running.health.port}/healthz", method="POST", data=b"x"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 405


def test_json_logs_carry_association_and_correlation_ids(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(bridge_logging.JsonFormatter())
    handler.addFilter(bridge_logging.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:

        def noisy(request: Request) -> int:
            return 0x0211

        make_consumer(Recorder(answer=noisy), (Service.C_ECHO,))
        with association(bridge.port) as assoc:
            assert assoc.send_c_echo().Status == 0x0211
            with bridge_logging.request_context(correlation_id="outer"):
                logging.getLogger("bridge.test").warning("inside a request context")
        # an unroutable request logs a warning in the handler thread
        with association(bridge.port, [CTImageStorage]) as assoc:
            assert assoc.send_c_store(examples.ct).Status == 0xA700
    finally:
        root.removeHandler(handler)
    records = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    failed = [r for r in records if r["message"].startswith("C-STORE failed")]
    assert failed, records
    assert failed[0]["level"] == "warning"
    assert len(failed[0]["association_id"]) == 36
    assert len(failed[0]["correlation_id"]) == 36
    assert failed[0]["calling_ae"] == "TEST-SCU"
    assert any(r.get("correlation_id") == "outer" for r in records)
    accepted = [r for r in records if r["message"].startswith("association accepted")]
    assert all("association_id" in r for r in accepted)


# -- SIGTERM: drain ---------------------------------------------------------------------


class Served:
    """A ``dicom-bridge serve`` process with JSON logs, its output read as it comes."""

    def __init__(self, proc: subprocess.Popen[str], port: int, http: int, exchange: str) -> None:
        self.proc, self.port, self.http, self.exchange = proc, port, http, exchange
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.append(line)

    def logged(self, prefix: str) -> bool:
        """Whether a log record so far has a message starting with ``prefix``."""
        return any(orjson.loads(line)["message"].startswith(prefix) for line in self.lines)

    def records(self) -> list[dict[str, Any]]:
        """Every log record, once the process has exited and its output is read."""
        self._reader.join(10)
        return [orjson.loads(line) for line in self.lines]


def _ready(http: int) -> bool:
    try:
        return _get(f"http://127.0.0.1:{http}/readyz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def served(broker: None) -> Iterator[Served]:
    exchange = f"test-drain-{uuid.uuid4().hex[:8]}"
    port, http = free_port(), free_port()
    env = {**os.environ, "BRIDGE_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [EXE, "serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http),
         "--exchange", exchange, "--drain-timeout", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    served = Served(proc, port, http, exchange)
    try:
        eventually(lambda: _ready(http), "bridge ready", timeout=15, interval=0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        delete_exchange(exchange)


@pytest.mark.process
def test_sigterm_drains_every_started_request_gets_a_response(served: Served) -> None:
    proc, port, http, exchange = served.proc, served.port, served.http, served.exchange
    release = threading.Event()
    arrived: list[str] = []

    def slow(request: Request) -> int:
        arrived.append(request.id)
        release.wait(10)
        return 0

    consumer = ConsumerHarness(exchange, slow, (Service.C_ECHO, Service.C_STORE))
    results: list[int] = []
    errors: list[BaseException] = []

    def peer() -> None:
        try:
            with association(port, [Verification, CTImageStorage]) as assoc:
                results.append(assoc.send_c_store(examples.ct).Status)
        except BaseException as exc:
            errors.append(exc)

    try:
        peers = [threading.Thread(target=peer) for _ in range(4)]
        for thread in peers:
            thread.start()
        eventually(lambda: len(arrived) == 4, "the four requests in flight at the consumer")
        proc.send_signal(signal.SIGTERM)
        eventually(lambda: served.logged("draining"), "the bridge stopped listening")
        # Draining: not ready, and no new association is accepted.
        assert _get(f"http://127.0.0.1:{http}/readyz")[0] == 503
        ae = AE("LATECOMER")
        ae.add_requested_context(Verification)
        late = ae.associate("127.0.0.1", port, ae_title="DICOM-BRIDGE")
        assert not late.is_established
        ae.shutdown()
        release.set()  # the consumer answers; the peers release their associations
        for thread in peers:
            thread.join(15)
        assert not errors, errors
        assert results == [0, 0, 0, 0]
        assert proc.wait(15) == 0
    finally:
        release.set()
        consumer.stop()
    lines = served.records()
    assert any(line["message"].startswith("draining") for line in lines)
    assert lines[-1]["message"] == "stopped"


def test_trace_context_joins_the_consumer_span_to_the_bridge_span(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; later calls are ignored
    seen: list[Request] = []

    def record(request: Request) -> int:
        seen.append(request)
        return 0

    make_consumer(Recorder(answer=record), (Service.C_ECHO,))
    with association(bridge.port) as assoc:
        assert assoc.send_c_echo().Status == 0
    traceparent = str(seen[0].headers["traceparent"])
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1, "sampled"
    assert trace.get_tracer_provider() is provider
    producers = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.PRODUCER]
    consumers = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]
    assert len(producers) == 1
    assert len(consumers) == 1
    producer, consumer = producers[0], consumers[0]
    assert f"{producer.context.trace_id:032x}" == trace_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
