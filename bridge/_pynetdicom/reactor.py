"""Event-driven reactors for pynetdicom acceptor associations: wake on work, not on a timer.

pynetdicom 3.0 runs two polling threads per association. The DUL thread sleeps 1 ms
whenever a loop found nothing to do; the association thread sleeps 1 ms before every look
at its DIMSE message queue (pynetdicom's own TODO in ``dul.py``: "try and make this event
based rather than running loops"). Every open association therefore wakes about 2,000
times a second, each wake-up taking the GIL from the threads doing real work, and every
request and response waits for the next tick of two of those timers.

:func:`make_event_driven` (call it from an ``EVT_CONN_OPEN`` handler, before the
association starts) swaps the two loops of one association:

- The DUL thread blocks in ``select()`` on the peer's socket and a wake-up socket pair.
  Every queue another thread hands the DUL work through (``to_provider_queue``,
  ``event_queue``) writes a byte to the pair when something is put on it.
- The association thread blocks on a :class:`threading.Event` set by puts on the DIMSE
  message queue and on the DUL's ``to_user_queue`` (release and abort primitives).

The loop bodies are pynetdicom 3.0.4's, call for call; only the waiting differs, and an
``InvalidEventError`` (a peer's PDU out of order) aborts the association instead of
killing the DUL thread with an unhandled exception. Both
loops still wake every :data:`IDLE_WAKE` seconds for what has no event (ARTIM and idle
timers, kill flags set from other threads). They use private attributes of pynetdicom
(listed in :mod:`bridge._pynetdicom`), so ``pyproject.toml`` pins pynetdicom below 3.1 and
``tests/test_pynetdicom_contract.py`` checks that the loops copied and the attributes used
are still the ones this module was written against.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pynetdicom import evt
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ

from bridge._pynetdicom.sockets import connected_socket

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

# The loop bodies are pynetdicom's; they log where and as pynetdicom does.
LOGGER = logging.getLogger("pynetdicom")

IDLE_WAKE = 0.02
"""Seconds either loop waits at most without an event: the delay with which a kill flag
set by another thread, an expired ARTIM timer or the network timeout is noticed."""

CLOSED_WAKE = 0.001
"""Seconds the DUL loop waits once the connection is gone (state Sta1): pynetdicom's
``stop_dul`` polls for the thread's end at its own 1 ms pace."""

T = TypeVar("T")


class _WakingQueue(queue.Queue[T]):
    """A :class:`queue.Queue` that calls ``wake`` after each put."""

    def __init__(self, wake: Callable[[], None], items: queue.Queue[T]) -> None:
        super().__init__()
        self._wake = wake
        self.queue.extend(items.queue)  # what pynetdicom queued before the swap (Evt5)

    def _put(self, item: T) -> None:
        super()._put(item)
        self._wake()


class _Waker:
    """Wakes a thread blocked in ``select()``. A socket pair, not a pipe: after close()
    a late wake() fails on the closed socket object instead of writing to a reused fd."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._signalled = False

    def wake(self) -> None:
        # One byte per sleep is enough; further puts before the reader drains add none.
        if not self._signalled:
            self._signalled = True
            # Buffer full (a byte is waiting anyway) or closed (the loop has ended).
            with contextlib.suppress(OSError):
                self._w.send(b"\0")

    def wait(self, peer: socket.socket | None, timeout: float) -> None:
        """Block until the peer's socket is readable, wake() was called or ``timeout``."""
        readers: list[socket.socket] = [self._r]
        if peer is not None and peer.fileno() >= 0:
            if isinstance(peer, ssl.SSLSocket) and peer.pending():
                return  # decrypted bytes already buffered: select() would not see them
            readers.append(peer)
        try:
            select.select(readers, [], [], timeout)
        except (OSError, ValueError):  # the peer socket was closed under us
            select.select([self._r], [], [], CLOSED_WAKE)
        self._signalled = False
        with contextlib.suppress(OSError):  # nothing to drain
            self._r.recv(4096)

    def close(self) -> None:
        self._r.close()
        self._w.close()


def make_event_driven(assoc: Association) -> None:
    """Replace the polling loops of acceptor ``assoc`` with event-driven ones. Must run
    before ``assoc.start()``: pynetdicom triggers ``EVT_CONN_OPEN`` just before it."""
    dul = assoc.dul
    waker = _Waker()
    ready = threading.Event()
    dul.to_provider_queue = _WakingQueue(waker.wake, dul.to_provider_queue)
    dul.event_queue = _WakingQueue(waker.wake, dul.event_queue)
    dul.to_user_queue = _WakingQueue(ready.set, dul.to_user_queue)
    assoc.dimse.msg_queue = _WakingQueue(ready.set, assoc.dimse.msg_queue)

    kill_dul = dul.kill_dul

    def kill_and_wake() -> None:
        kill_dul()
        waker.wake()

    # Instance attributes win over the class's methods: Thread.start() calls self.run(),
    # and pynetdicom's run_reactor looks up self._run_reactor on every start.
    setattr(dul, "kill_dul", kill_and_wake)  # noqa: B010
    setattr(dul, "run", functools.partial(_run_dul, dul, waker, ready))  # noqa: B010
    setattr(assoc, "_run_reactor", functools.partial(_assoc_loop, assoc, ready))  # noqa: B010


def _run_dul(dul: DULServiceProvider, waker: _Waker, ready: threading.Event) -> None:
    try:
        _dul_loop(dul, waker)
    finally:
        waker.close()
        ready.set()  # the association loop checks dul.is_alive() when it wakes


def _dul_loop(dul: DULServiceProvider, waker: _Waker) -> None:
    # pynetdicom 3.0.4 DULServiceProvider.run_reactor, with time.sleep() replaced by
    # waker.wait(); comments of the original left out.
    dul._idle_timer.start()
    sleep = False
    while True:
        if not dul.assoc._dul_ready.is_set():
            dul.assoc._dul_ready.set()
            sleep = True

        if sleep:
            closed = dul.state_machine.current_state == "Sta1"
            waker.wait(connected_socket(dul.assoc), CLOSED_WAKE if closed else IDLE_WAKE)

        if dul._kill_thread:
            break

        if dul.artim_timer.expired:
            dul.event_queue.put("Evt18")

        try:
            if dul._process_recv_primitive():
                pass
            elif dul._is_transport_event():
                dul._idle_timer.restart()
        except Exception as exc:
            LOGGER.error("Exception in DUL.run(), aborting association")
            LOGGER.exception(exc)
            _abort(dul)
            return

        try:
            event = dul.event_queue.get(block=False)
        except queue.Empty:
            sleep = True
            continue

        try:
            dul.state_machine.do_action(event)
        except InvalidEventError as exc:
            # The one departure from pynetdicom's loop, where this kills the DUL thread
            # with an unhandled exception (a peer sending a PDU its state does not allow,
            # e.g. bytes after an A-ASSOCIATE-RQ). A-ABORT instead, as for a bad PDU.
            LOGGER.warning("%s: aborting association", exc)
            _abort(dul)
            return
        sleep = False


def _abort(dul: DULServiceProvider) -> None:
    """Send A-ABORT and stop both loops, bypassing the state machine (pynetdicom's own
    handling of an exception in its DUL loop)."""
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    cast(Any, dul.socket).send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def _assoc_loop(assoc: Association, ready: threading.Event) -> None:
    # pynetdicom 3.0.4 Association._run_reactor, with time.sleep(0.001) replaced by a
    # wait for a put on the DIMSE message queue or the DUL's to-user queue.
    assoc._is_paused = False
    while not assoc._kill:
        # Serve queued messages back to back: one put may stand for several messages.
        if assoc.dimse.msg_queue.qsize() == 0:
            ready.wait(IDLE_WAKE)
        ready.clear()

        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, cast(int, context_id))

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            log_msg = "Association Aborted"
            if assoc.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()

            assoc.kill()
            return
