"""dicom-bridge: a DICOM SCP whose every DIMSE request is answered by RabbitMQ consumers."""

from bridge.errors import BridgeError, CodecError, ConfigError, ReplyError, TransportError
from bridge.protocol.model import Category, Service
from bridge.sdk.consumer import Consumer, Request, Response

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
