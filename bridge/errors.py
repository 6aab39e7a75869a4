"""Errors of the bridge.

Every error that can end a DIMSE request carries a :class:`Failure` kind. The kind, not the
exception class, decides the DIMSE status the peer receives: :mod:`bridge.protocol.model` maps
``(service, kind)`` to a status code, so one error means the right thing for C-STORE (0xA700,
0xC000, ...) and for the DIMSE-N services (0x0110, 0x0213, ...) alike.
"""

from __future__ import annotations

from enum import StrEnum


class Failure(StrEnum):
    """Why the bridge itself could not get an answer for a request."""

    UNAVAILABLE = "unavailable"
    """The broker is down, blocked, or did not confirm the publish in time."""
    UNROUTABLE = "unroutable"
    """No queue is bound for the request's routing key (the broker returned it)."""
    TIMEOUT = "timeout"
    """No consumer replied before the reply deadline."""
    BAD_REPLY = "bad-reply"
    """The consumer's reply is not JSON, fails the reply schema, or has a forbidden status."""
    BAD_REQUEST = "bad-request"
    """A dataset in the peer's request cannot be decoded or turned into DICOM JSON."""
    INTERNAL = "internal"
    """A bug in the bridge; logged with a traceback."""


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    failure: Failure = Failure.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def comment(self) -> str:
        """The Error Comment (0000,0902) for the peer: a LO value, at most 64 characters.

        The message of a bridge error never contains values from a dataset, so it is safe
        to send and to log.
        """
        return self.message[:64]


class CodecError(BridgeError):
    """A dataset or a JSON document cannot be converted. The message names the element
    (tag and VR), never its value, so it is free of patient data."""

    failure = Failure.BAD_REQUEST


class ReplyError(BridgeError):
    """A consumer's reply cannot be used: not JSON, schema violation, forbidden status."""

    failure = Failure.BAD_REPLY


class TransportError(BridgeError):
    """The broker could not carry a request or its reply."""

    failure = Failure.UNAVAILABLE


class BrokerUnavailable(TransportError):
    """Not connected, connection blocked, or publish not confirmed within its deadline."""

    failure = Failure.UNAVAILABLE


class Unroutable(TransportError):
    """The broker returned the request: no queue is bound for its routing key."""

    failure = Failure.UNROUTABLE


class ReplyTimeout(TransportError):
    """No reply arrived before the deadline."""

    failure = Failure.TIMEOUT


class ConfigError(BridgeError):
    """The configuration is invalid; raised at start-up, before anything listens."""


class StartupError(BridgeError):
    """The bridge cannot start with a valid configuration (the port is taken, ...)."""


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for a log line about a library's exception (at most 200 chars)."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}"[:200] if text else name
