"""W3C trace context across the broker, so a consumer's span joins the bridge's.

The bridge puts a ``traceparent`` header (W3C Trace Context) on every request. With the
OpenTelemetry API installed (``pip install dicom-bridge[otel]``) and an SDK configured,
the bridge opens a PRODUCER span per DIMSE request and the header carries it (and
``tracestate`` when there is one); the Python SDK opens a CONSUMER span around the
handler as its child. Without OpenTelemetry, the bridge still sends a fresh
``traceparent`` so consumers in any language can start their trace from it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

try:  # optional dependency
    from opentelemetry import propagate, trace

    HAVE_OPENTELEMETRY = True
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    HAVE_OPENTELEMETRY = False

TRACER_NAME = "dicom-bridge"


def _fresh_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _sdk_configured() -> bool:
    """True once an OpenTelemetry SDK has set a tracer provider. Until then the API
    hands out non-recording spans: opening one costs 10-13 us per request and
    propagates nothing. Checked per call: an application may set the SDK up later."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@contextlib.contextmanager
def producer_span(name: str, headers: MutableMapping[str, Any]) -> Iterator[None]:
    """A span around publishing one request; its context goes into ``headers``."""
    if not HAVE_OPENTELEMETRY or not _sdk_configured():
        headers["traceparent"] = _fresh_traceparent()
        yield
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER):
        propagate.inject(headers)
        if "traceparent" not in headers:  # API without an SDK: nothing to propagate
            headers["traceparent"] = _fresh_traceparent()
        yield


@contextlib.contextmanager
def consumer_span(name: str, headers: Mapping[str, Any] | None) -> Iterator[None]:
    """A span around handling one request, child of the bridge's (consumer side)."""
    if not HAVE_OPENTELEMETRY or not _sdk_configured():
        yield
        return
    carrier = {k: str(v) for k, v in (headers or {}).items() if isinstance(v, str | bytes)}
    context = propagate.extract(carrier)
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=context, kind=trace.SpanKind.CONSUMER):
        yield
