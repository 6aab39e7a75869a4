"""A bounded disk spool for messages that must reach the broker eventually.

Events and publish-only requests are never lost silently: when the broker cannot take
them they are written here (one file per message, fsync'd, atomic rename) and replayed,
oldest first, once it is back. The spool survives a restart. It is bounded in bytes: a
message that does not fit raises :class:`SpoolFull`, which the caller turns into a
failure the peer or the log can see.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson

from bridge.errors import BrokerUnavailable
from bridge.transport import Outbound


class SpoolFull(BrokerUnavailable):
    """The broker is away and the spool has no room left."""


def _encode(message: Outbound) -> bytes:
    head = {
        "routing_key": message.routing_key,
        "correlation_id": message.correlation_id,
        "type": message.type,
        "timestamp": message.timestamp.isoformat(),
        "expiration": message.expiration,
        "headers": dict(message.headers),
        "persistent": message.persistent,
        "mandatory": message.mandatory,
    }
    return orjson.dumps(head) + b"\n" + message.body


def _decode(data: bytes) -> Outbound:
    head_bytes, _, body = data.partition(b"\n")
    head = orjson.loads(head_bytes)
    return Outbound(
        routing_key=head["routing_key"],
        body=body,
        correlation_id=head["correlation_id"],
        type=head["type"],
        timestamp=datetime.fromisoformat(head["timestamp"]),
        expiration=head["expiration"],
        headers=head["headers"],
        persistent=head["persistent"],
        mandatory=head["mandatory"],
    )


class DiskSpool:
    """Messages in files named by time of arrival; thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = 0
        self._count = 0

    def open(self) -> None:
        """Create the directory and count what an earlier run left (to be replayed)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.directory.glob(".*.partial"):
            leftover.unlink(missing_ok=True)
        entries = list(self._entries())
        with self._lock:
            self._count = len(entries)
            self._bytes = sum(path.stat().st_size for path in entries)

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._bytes

    def _entries(self) -> list[Path]:
        return sorted(self.directory.glob("*.msg"))

    def put(self, message: Outbound) -> None:
        """Write ``message`` durably. Raises SpoolFull when it does not fit."""
        data = _encode(message)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"spool full ({self._bytes} of {self.max_bytes} bytes)")
            self._bytes += len(data)
            self._count += 1
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        partial = self.directory / f".{name}.partial"
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.directory / f"{name}.msg")
        except OSError as exc:
            with self._lock:
                self._bytes -= len(data)
                self._count -= 1
            partial.unlink(missing_ok=True)
            raise SpoolFull(f"spool not writable: {exc.strerror or exc}") from exc

    def oldest(self, limit: int) -> Iterator[tuple[Path, Outbound]]:
        """Up to ``limit`` spooled messages, oldest first. An unreadable file is renamed
        ``*.bad`` (left for an operator, no longer replayed or counted)."""
        for path in self._entries()[:limit]:
            try:
                yield path, _decode(path.read_bytes())
            except (OSError, ValueError, KeyError):
                self._set_aside(path)

    def _set_aside(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.rename(path.with_suffix(".bad"))
        except OSError:
            return
        with self._lock:
            self._bytes -= size
            self._count -= 1

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._bytes -= size
            self._count -= 1
