"""Broker URLs: what may be printed of one, and what is read from it. Pure; no I/O."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from yarl import URL


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "<unparseable AMQP URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def password(url: str) -> str | None:
    """The URL's password, decoded (to keep it out of error messages)."""
    parts = urlsplit(url)
    return unquote(parts.password) if parts.password else None


def vhost(url: str) -> str:
    """The virtual host of an AMQP URL, as aio-pika reads it (``/`` when absent)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"
