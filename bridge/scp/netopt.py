"""TCP tuning for DICOM associations: acknowledge at once, send at once.

DCMTK's storescu and pynetdicom's SCU write a DIMSE command and its data set as two small
segments; the second waits (Nagle) for the ACK of the first, which Linux delays by up to
40 ms. An SCP that sets ``TCP_NODELAY`` and re-arms ``TCP_QUICKACK`` before each receive
(Linux clears it again after a while) removes that wait: measured ~22 -> ~250 C-STOREs/s
from storescu on loopback (../shared/DESIGN.md). Elsewhere (no ``TCP_QUICKACK``) only
``TCP_NODELAY`` is set.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

from bridge._pynetdicom import sockets

if TYPE_CHECKING:
    from pynetdicom.association import Association

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def tune(sock: socket.socket) -> None:
    """Disable Nagle and, where the platform has it, turn on quick ACKs."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


class _QuickAckRecv:
    """An association socket's ``recv`` that re-arms quick ACKs before each read."""

    def __init__(self, raw: socket.socket, recv: Any) -> None:
        self._raw = raw
        self._recv = recv

    def __call__(self, nr_bytes: int) -> Any:
        with contextlib.suppress(OSError):  # the socket is closing: the read will say so
            self._raw.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # type: ignore[arg-type]
        return self._recv(nr_bytes)


def tune_association(assoc: Association) -> None:
    """Tune the socket of ``assoc`` (call from an ``EVT_CONN_OPEN`` handler). Composes
    with other wrappers of the socket's ``recv`` (:func:`bridge.scp.guard.guard_socket`)."""
    raw = sockets.connected_socket(assoc)
    if raw is None:
        return
    tune(raw)
    if QUICKACK is not None:
        sockets.replace_recv(assoc, _QuickAckRecv(raw, sockets.recv_of(assoc)))
