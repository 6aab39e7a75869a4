"""Who may associate, and how much a peer may send: the SCP's admission and limits.

- :func:`install_calling_policy`: the allow-list of calling AE titles
  (:class:`bridge.config.CallingPolicy`), plugged into pynetdicom's own calling-AE check,
  so a refused peer gets a proper A-ASSOCIATE-RJ (rejected-permanent, service-user,
  "calling AE title not recognized") rather than an abort.
- :func:`guard_socket`: limits on what a peer sends, enforced where pynetdicom reads the
  socket, before anything is buffered: a PDU longer than the limit, or a DIMSE message
  (command plus data set) larger than the maximum data set size, ends the association
  (A-ABORT); memory never grows with a declared length.
- :class:`RateLimiter`: requests per second per association (token bucket).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from bridge._pynetdicom import calling, sockets
from bridge.config import CallingPolicy
from bridge.errors import BridgeError, Failure

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.association import Association

log = logging.getLogger(__name__)


def install_calling_policy(policy: CallingPolicy, ae: AE) -> None:
    """Make pynetdicom's calling-AE check apply ``policy`` (no policy: no check)."""
    if policy.entries:
        calling.require_calling_titles(
            ae,
            list(policy.entries),
            lambda address: [t for t in policy.entries if policy.allows(t, address)],
        )


class RateLimited(BridgeError):
    failure = Failure.UNAVAILABLE


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts up to ``rate`` (at least 1)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> None:
        """Use one token; raises RateLimited when none is left (0 rate: no limit)."""
        if self._rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                raise RateLimited(f"over {self._rate:g} requests/s on this association")
            self._tokens -= 1


# A-ASSOCIATE-RQ PDUs carry no data sets but can list 128 contexts: never limit them below
# this.
_MIN_PDU_LIMIT = 1 << 20


class SocketGuard:
    """Wraps an association socket's ``recv``; see :func:`guard_socket`."""

    def __init__(self, recv: Any, max_pdu: int, max_message: int) -> None:
        self._recv = recv
        self._max_pdu = max(max_pdu, _MIN_PDU_LIMIT) if max_pdu else 0
        self._max_message = max_message
        self._message_bytes = 0

    def message_done(self) -> None:
        self._message_bytes = 0

    def recv(self, nr_bytes: int) -> Any:
        if nr_bytes > sockets.HEADER_READ:  # a PDU body
            if self._max_pdu and nr_bytes > self._max_pdu + 6:
                log.warning("peer sent a PDU of %d bytes, over the limit: aborting", nr_bytes)
                raise OSError("PDU over the size limit")
            self._message_bytes += nr_bytes
            if self._max_message and self._message_bytes > self._max_message:
                log.warning(
                    "peer sent a DIMSE message of over %d bytes, the limit: aborting",
                    self._max_message,
                )
                raise OSError("DIMSE message over the size limit")
        return self._recv(nr_bytes)


def guard_socket(assoc: Association, max_pdu: int, max_message: int) -> SocketGuard:
    """Enforce ``max_pdu`` (bytes per PDU, 0: pynetdicom's own behaviour) and
    ``max_message`` (bytes per DIMSE message) on what the peer of ``assoc`` sends.

    pynetdicom's DUL reads a PDU body with the length the peer declared
    (:mod:`bridge._pynetdicom.sockets`); raising OSError there is what pynetdicom does for
    a broken connection: it aborts the association. Call :meth:`SocketGuard.message_done`
    when a message is complete.
    """
    guard = SocketGuard(sockets.recv_of(assoc), max_pdu, max_message)
    sockets.replace_recv(assoc, guard.recv)
    return guard
