"""Logging set-up: one line per record, text for people or JSON for pipelines.

Records may carry ``association_id``, ``correlation_id`` and ``calling_ae`` (passed as
``extra``); both formats print them. Nothing here adds dataset values: callers never log
them at INFO or above (no patient data in logs).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

CONTEXT_FIELDS = ("association_id", "correlation_id", "calling_ae")


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
