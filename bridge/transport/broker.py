"""Connecting to RabbitMQ: one place for the connection name, the connect call and what
its failures mean.

Everything here runs in an event loop (aio-pika).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

CONNECT_ERRORS = (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError)
"""What an attempt to connect, open a channel or declare may raise for a broker that is
down, refuses us or goes away meanwhile."""


def connection_name(purpose: str) -> str:
    """``dicom-bridge <purpose> <host> pid <pid>``: how a connection shows in the
    management UI, naming the process it belongs to."""
    return f"dicom-bridge {purpose} {socket.gethostname()} pid {os.getpid()}"


async def connect(
    url: str, *, purpose: str, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> AbstractConnection:
    """One plain connection, within ``timeout`` seconds. Raises one of
    :data:`CONNECT_ERRORS`."""
    return await asyncio.wait_for(
        aio_pika.connect(
            url,
            timeout=timeout,
            client_properties={"connection_name": connection_name(purpose)},
            ssl_context=ssl_context,
        ),
        timeout + 1,
    )


def failure_reason(exc: BaseException, secret: str | None = None) -> str:
    """One line about a connection failure, never containing ``secret``."""
    args = exc.args
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        text = "authentication refused (user or password wrong)"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        # aiormq's AMQPConnectionError(errno, message) from the socket error
        text = os.strerror(args[0]) if args[0] > 0 else args[1]
    else:
        text = " ".join(str(args[0] if args else exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text[:200]


def channel_error_text(exc: BaseException) -> str:
    """The broker's reply text of a channel error, without the code name in front."""
    text = str(exc.args[0] if exc.args else "") or type(exc).__name__
    return text.split(" - ", 1)[-1][:200]
