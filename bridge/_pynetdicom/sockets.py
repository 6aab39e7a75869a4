"""An acceptor association's socket: the connected TCP (or TLS) socket, and the read the
DUL makes on it.

pynetdicom's DUL reads every PDU through ``assoc.dul.socket`` (an ``AssociationSocket``):
``recv(HEADER_READ)`` for the header, then ``recv(length)`` for the body, ``length`` being
what the peer declared (``DULServiceProvider._read_pdu_data``). An OSError raised by that
``recv`` is what pynetdicom takes for a broken connection: it aborts the association.
:func:`replace_recv` puts a read of the caller's in its place for one association.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pynetdicom.association import Association

HEADER_READ: Final = 6
"""The first read of every PDU: its header (type, reserved, length). Every larger read is
a PDU body of the length the header declared."""

Recv = Callable[[int], bytearray]
"""``recv(nr_bytes)``: the bytes, all of them, or OSError."""


def connected_socket(assoc: Association) -> socket.socket | None:
    """The socket of ``assoc``'s peer while it is connected, else None."""
    wrapper = assoc.dul.socket
    if wrapper is None or not wrapper._is_connected:
        return None
    raw = wrapper.socket
    return raw if isinstance(raw, socket.socket) else None


def recv_of(assoc: Association) -> Recv:
    """The read the DUL of ``assoc`` makes now (pynetdicom's, or one set by
    :func:`replace_recv`). ``assoc`` must have its socket (an acceptor has it from the
    start)."""
    wrapper = assoc.dul.socket
    assert wrapper is not None, "an acceptor has its socket from the start"
    return wrapper.recv


def replace_recv(assoc: Association, recv: Recv) -> None:
    """Make the DUL of ``assoc`` read through ``recv`` (which usually calls what
    :func:`recv_of` returned before). Call it before the association starts
    (``EVT_CONN_OPEN``)."""
    wrapper = assoc.dul.socket
    assert wrapper is not None, "an acceptor has its socket from the start"
    # The instance attribute shadows the method, for this socket only.
    wrapper.recv = recv  # type: ignore[method-assign, assignment]
