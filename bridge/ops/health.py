"""The bridge's HTTP port: ``/healthz``, ``/readyz`` and ``/metrics``.

A deliberately small HTTP/1.1 server on asyncio streams (three GET endpoints, one
response per connection): it runs in the bridge's loop, needs no extra dependency, and a
slow or hostile client costs at most a 5 s read timeout and 8 KiB of buffer.

- ``/healthz``: 200 while the process runs its loop (liveness).
- ``/readyz``: 200 when the SCP listens, the broker connection is usable and the bridge
  is not draining; 503 otherwise, with the failing checks in the JSON body (readiness).
- ``/metrics``: Prometheus text exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
MAX_REQUEST = 8192

Checks = Callable[[], dict[str, bool]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


class HealthServer:
    def __init__(
        self, host: str, port: int, checks: Checks, exposition: Callable[[], bytes]
    ) -> None:
        self._host = host
        self._port = port
        self._checks = checks
        self._exposition = exposition
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; raises OSError when the port cannot be bound."""
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request line: the routing, kept pure."""
        path = path.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._exposition()
        checks = self._checks()
        ready = all(checks.values())
        body = orjson.dumps({"ready": ready, "checks": checks}) + b"\n"
        return (200 if ready else 503), "application/json", body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, kind, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, kind, body = self.respond(method, parts[1])
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header if method == "HEAD" else header + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):  # fmt: skip
            pass
        except Exception:
            log.exception("health endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
