"""dicom-bridge: a DICOM SCP whose every DIMSE request is answered by RabbitMQ consumers.

``import bridge`` loads the errors and the service vocabulary only. The consumer SDK's
names (``Consumer``, ``Request``, ``Response``) are loaded on first use, so that the
settings and the protocol modules do not pull in aio-pika.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bridge.errors import BridgeError, CodecError, ConfigError, ReplyError, TransportError
from bridge.protocol.model import Category, Service

if TYPE_CHECKING:
    from bridge.sdk.consumer import Consumer, Request, Response

_SDK = {"Consumer", "Request", "Response"}

__all__ = [
    "BridgeError",
    "Category",
    "CodecError",
    "ConfigError",
    "Consumer",
    "ReplyError",
    "Request",
    "Response",
    "Service",
    "TransportError",
]


def __getattr__(name: str) -> Any:
    if name in _SDK:
        return getattr(importlib.import_module("bridge.sdk.consumer"), name)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")
