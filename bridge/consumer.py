"""The consumer SDK under its first name: :mod:`bridge.sdk.consumer` is its home."""

from bridge.sdk.consumer import Consumer, Handler, HandlerResult, Request, Response, Retrieval
from bridge.sdk.processes import run_processes

__all__ = [
    "Consumer",
    "Handler",
    "HandlerResult",
    "Request",
    "Response",
    "Retrieval",
    "run_processes",
]
