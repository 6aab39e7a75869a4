"""Logging set-up: one line per record, text for people or JSON for pipelines.

Records carry ``association_id``, ``correlation_id`` and ``calling_ae``: from ``extra``,
or else from the context of the request the logging thread is serving (:func:`request_context`,
set by the SCP's handlers), so every line logged while a request is handled says which
association and request it belongs to, pynetdicom's lines included. Nothing here adds
dataset values: callers never log them at INFO or above (no patient data in logs).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

CONTEXT_FIELDS = ("association_id", "correlation_id", "calling_ae")
_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("bridge_log_context", default=None)


@contextlib.contextmanager
def request_context(**fields: str) -> Iterator[None]:
    """Log lines of this thread (or task) carry ``fields`` until the block ends."""
    previous = _CONTEXT.get()
    token = _CONTEXT.set({**(previous or {}), **fields})
    try:
        yield
    finally:
        try:
            _CONTEXT.reset(token)
        except ValueError:  # a generator closed from another context: restore by value
            _CONTEXT.set(previous)


class ContextFilter(logging.Filter):
    """Adds the request context to records that do not carry the fields already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_CONTEXT.get() or {}).items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if not context:
            return line
        head, newline, tail = line.partition("\n")
        return f"{head} [{context}]{newline}{tail}"


class _DropConnectNoise(logging.Filter):
    """aiormq logs every failed connect at ERROR; the transport already says it once,
    with the retry delay, so the duplicate only adds noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error when creating transport")


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr in ``fmt``; quiet the chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO and may print identifiers: keep it to warnings.
    for name, floor in (
        ("pynetdicom", logging.WARNING),
        ("aio_pika", logging.WARNING),
        ("aiormq", logging.WARNING),
    ):
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level)))
    noisy = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, _DropConnectNoise) for f in noisy.filters):
        noisy.addFilter(_DropConnectNoise())
