"""pynetdicom's "standard" log handlers: bound to every association, or to none.

Every association made while ``_config.LOG_HANDLER_LEVEL`` is ``"standard"`` binds
handlers that format a dump of each PDU and DIMSE message and log it at INFO or DEBUG
(``Association._bind_defaults``), whether or not the ``pynetdicom`` logger lets the line
through.
"""

from __future__ import annotations

from pynetdicom import _config


def bind_standard_handlers(enabled: bool) -> None:
    """Whether associations made from now on, in the whole process, bind pynetdicom's
    standard log handlers."""
    _config.LOG_HANDLER_LEVEL = "standard" if enabled else "none"
