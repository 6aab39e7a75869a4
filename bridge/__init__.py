"""dicom-bridge: a DICOM SCP whose every DIMSE request is answered by RabbitMQ consumers."""

from bridge.consumer import Consumer, Request, Response
from bridge.errors import BridgeError, CodecError, ConfigError, ReplyError, TransportError
from bridge.model import Category, Service

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
