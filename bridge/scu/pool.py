"""The SCU side's associations to peers, pooled per destination.

Runs in worker threads only (pynetdicom blocks); nothing here touches the event loop.

:class:`AssociationPool` keeps up to ``per_destination_limit`` associations per destination
(host, port, called and calling AE title). A request reuses an idle association whose
accepted presentation contexts (and roles) fit it, else opens one proposing what it needs;
idle associations are released after ``idle_timeout``. C-STOREs of Part 10 files are
sent as they are (:func:`bridge._pynetdicom.send.send_files_as_they_are`, switched on for
the process when a pool is made). Opening is retried on connection
failure with capped exponential backoff shared by everyone using the destination: while
it fails, one request at a time probes it, and every failed probe counts as an attempt
for all who wait, so a dead peer costs a bounded number of connection attempts, never a
storm. A permanent rejection is not retried.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt

from bridge._pynetdicom.send import send_files_as_they_are
from bridge.protocol.command import CommandError, Reason

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
    from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128
"""Presentation contexts one association may propose (PS3.8 9.3.2.2: odd IDs 1-255)."""


@dataclass(frozen=True)
class Peer:
    """A destination: where to connect and which AE titles the association carries."""

    host: str
    port: int
    called_ae: str
    calling_ae: str

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Need:
    """A presentation context a request needs: abstract syntax, acceptable transfer
    syntaxes, and whether the bridge must be the SCP of the class (role selection).

    ``exact``, one of the transfer syntaxes, is the one the request would rather have
    (a Part 10 file's, to send its bytes as they are): it is proposed in a context of its
    own, so that the peer cannot pick another syntax of the same context instead, and
    the others in a second one."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = UNCOMPRESSED
    as_scp: bool = False
    exact: str | None = None

    def contexts(self) -> list[PresentationContext]:
        """The presentation contexts to propose for the need."""
        if self.exact is None:
            return [build_context(self.abstract_syntax, list(self.transfer_syntaxes))]
        others = [syntax for syntax in self.transfer_syntaxes if syntax != self.exact]
        return [build_context(self.abstract_syntax, [self.exact])] + (
            [build_context(self.abstract_syntax, others)] if others else []
        )

    def role(self) -> SCP_SCU_RoleSelectionNegotiation | None:
        if not self.as_scp:
            return None
        return build_role(self.abstract_syntax, scu_role=False, scp_role=True)

    def met_by(self, assoc: Association, *, strict_role: bool = True) -> bool:
        """Whether ``assoc`` accepted a context for the need (in the role it needs, with
        ``strict_role``). With ``exact``, one of its other syntaxes only does when
        ``exact`` was proposed on its own on ``assoc`` too (the peer refused it):
        else a new association, which proposes it, may do better."""
        fallback = False
        for cx in assoc.accepted_contexts:
            if str(cx.abstract_syntax) != self.abstract_syntax:
                continue
            syntax = str(cx.transfer_syntax[0])
            if syntax not in self.transfer_syntaxes:
                continue
            if strict_role and not (cx.as_scp if self.as_scp else cx.as_scu):
                continue
            if self.exact is None or syntax == self.exact:
                return True
            fallback = True
        return fallback and any(
            str(cx.abstract_syntax) == self.abstract_syntax
            and [str(t) for t in cx.transfer_syntax] == [self.exact]
            for cx in assoc.requestor.requested_contexts
        )


@dataclass
class PoolStats:
    """Counters for operators and tests."""

    opened: int = 0
    reused: int = 0
    released: int = 0
    discarded: int = 0
    connect_attempts: int = 0
    connect_failures: int = 0
    rejected: int = 0
    max_busy: dict[str, int] = field(default_factory=dict)
    """Most associations in use at once, per destination (``str(peer)``)."""


class _Pooled:
    """An association and what the pool knows about it."""

    def __init__(self, assoc: Association, peer: Peer) -> None:
        self.assoc = assoc
        self.peer = peer
        self.idle_since = time.monotonic()
        self.last_response: Dataset | None = None
        self._message_id = 0

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def on_received(self, event: Event) -> None:
        # pynetdicom's send_* return only the status elements; N-CREATE's created
        # instance UID is in the response's command set.
        self.last_response = event.message.command_set


@dataclass
class _Destination:
    idle: list[_Pooled] = field(default_factory=list)
    busy: int = 0
    pending: int = 0
    failures: int = 0
    """Consecutive failed connection attempts."""
    failed_total: int = 0
    retry_at: float = 0.0
    probing: bool = False
    last_error: CommandError | None = None
    known: dict[Need, None] = field(default_factory=dict)
    """Contexts requests to this destination needed, most recent last."""

    @property
    def open(self) -> int:
        return len(self.idle) + self.busy + self.pending


class Lease:
    """One association lent to one request; a context manager that gives it back.

    The association returns to the pool unless it is no longer established or
    :meth:`discard` was called.
    """

    def __init__(self, pool: AssociationPool, pooled: _Pooled) -> None:
        self._pool = pool
        self._pooled = pooled
        self._keep = True

    @property
    def assoc(self) -> Association:
        return self._pooled.assoc

    @property
    def last_response(self) -> Dataset | None:
        return self._pooled.last_response

    def next_message_id(self) -> int:
        return self._pooled.next_message_id()

    def discard(self) -> None:
        """Do not pool the association again: it is aborted if still established (its
        state is unknown, a stream may be half read)."""
        self._keep = False

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool._give_back(self._pooled, self._keep)


class _Tries:
    def __init__(self, used: int) -> None:
        self.used = used


class AssociationPool:
    """Associations per destination, reused while busy, released when idle."""

    def __init__(
        self,
        ae_title: str,
        *,
        per_destination_limit: int = 4,
        idle_timeout: float = 10.0,
        acse_timeout: float = 10.0,
        dimse_timeout: float = 30.0,
        network_timeout: float = 60.0,
        retries: int = 3,
        retry_delay: float = 0.5,
        retry_max_delay: float = 5.0,
        max_pdu: int = 65536,
    ) -> None:
        if per_destination_limit < 1:
            raise ValueError("per_destination_limit must be at least 1")
        self.ae_title = ae_title
        self.limit = per_destination_limit
        self.idle_timeout = idle_timeout
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.max_pdu = max_pdu
        self.stats = PoolStats()
        self._lock = threading.Condition()
        self._destinations: dict[Peer, _Destination] = {}
        self._aes: dict[str, AE] = {}
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name="scu-pool-reaper", daemon=True)
        self._reaper.start()
        send_files_as_they_are()

    # -- public ---------------------------------------------------------------------------

    def lease(self, peer: Peer, needs: list[Need], *, give_up_at: float | None = None) -> Lease:
        """An established association to ``peer`` whose contexts meet ``needs``.

        Waits for a free slot when ``per_destination_limit`` associations are busy, and
        gives up with ``expired`` at ``give_up_at`` (``time.monotonic()``). Raises
        :class:`CommandError`: ``refused`` (rejected, or no context accepted),
        ``unavailable`` (no association after the retries), ``expired``.
        """
        destination = self._destination(peer)
        tries = _Tries(min(destination.failures, self.retries))
        while True:
            reused, victims = self._take_or_reserve(peer, destination, needs, give_up_at, tries)
            for victim in victims:
                self._close(victim)
            if reused is not None:
                return Lease(self, reused)
            try:
                pooled = self._connect(peer, needs, self._proposal(destination, needs))
            except CommandError as exc:
                retry = self._connect_failed(destination, exc, tries)
                if not retry:
                    raise
                continue
            with self._lock:
                destination.pending -= 1
                destination.probing = False
                destination.failures = 0
                destination.retry_at = 0.0
                destination.busy += 1
                self._note_busy(peer, destination)
                self._lock.notify_all()
            return Lease(self, pooled)

    def open_associations(self, peer: Peer | None = None) -> int:
        """Associations open now (idle and busy), for one destination or all."""
        with self._lock:
            chosen = [self._destinations.get(peer)] if peer else self._destinations.values()
            return sum(len(d.idle) + d.busy for d in chosen if d is not None)

    def close(self) -> None:
        """Release idle associations; busy ones are released when given back. Requests
        waiting for a slot fail with ``unavailable``. Blocks up to the ACSE timeout."""
        with self._lock:
            self._closed = True
            idle = [p for d in self._destinations.values() for p in d.idle]
            for destination in self._destinations.values():
                destination.idle.clear()
            self._lock.notify_all()
        for pooled in idle:
            self._close(pooled)
        self._reaper.join(timeout=2.0)

    def abort_all(self) -> None:
        """Abort every association, busy ones included (their requests fail with
        ``aborted``). For shutdown after the drain deadline."""
        self.close()
        for ae in list(self._aes.values()):
            for assoc in list(ae.active_associations):
                assoc.abort()

    # -- slots ----------------------------------------------------------------------------

    def _destination(self, peer: Peer) -> _Destination:
        with self._lock:
            return self._destinations.setdefault(peer, _Destination())

    def _note_busy(self, peer: Peer, destination: _Destination) -> None:
        key = str(peer)
        self.stats.max_busy[key] = max(self.stats.max_busy.get(key, 0), destination.busy)

    def _take_or_reserve(
        self,
        peer: Peer,
        destination: _Destination,
        needs: list[Need],
        give_up_at: float | None,
        tries: _Tries,
    ) -> tuple[_Pooled | None, list[_Pooled]]:
        """(an idle association that fits, []) or (None, idle ones to close first): then a
        connection slot is reserved for the caller.

        Idle associations that do not fit are closed before a new one opens: the new one
        proposes every context the destination was used with, so they are redundant, and
        many simple SCPs (DCMTK's storescp) serve one association at a time."""
        with self._lock:
            seen_failures = destination.failed_total
            while True:
                if self._closed:
                    raise CommandError(Reason.UNAVAILABLE, "bridge is shutting down")
                tries.used += destination.failed_total - seen_failures
                seen_failures = destination.failed_total
                if tries.used > self.retries and destination.last_error is not None:
                    raise _exhausted(destination.last_error, tries.used)
                stale = [p for p in destination.idle if not p.assoc.is_established]
                for pooled in stale:
                    destination.idle.remove(pooled)
                    self._count("discarded")
                fit = next(
                    (
                        p
                        for p in reversed(destination.idle)
                        if all(n.met_by(p.assoc) for n in needs)
                    ),
                    None,
                )
                if fit is not None:
                    destination.idle.remove(fit)
                    destination.busy += 1
                    self.stats.reused += 1
                    self._note_busy(peer, destination)
                    return fit, []
                now = time.monotonic()
                room = destination.open < self.limit or bool(destination.idle)
                if room and not destination.probing and now >= destination.retry_at:
                    victims, destination.idle = destination.idle, []
                    destination.pending += 1
                    destination.probing = destination.failures > 0
                    return None, victims
                wake = give_up_at
                if now < destination.retry_at and not destination.probing:
                    if give_up_at is not None and destination.retry_at > give_up_at:
                        raise _exhausted(destination.last_error, tries.used, expired=True)
                    wake = destination.retry_at if wake is None else min(wake, destination.retry_at)
                if give_up_at is not None and now >= give_up_at:
                    raise CommandError(
                        Reason.EXPIRED,
                        f"deadline passed while waiting for an association to {peer}",
                    )
                self._lock.wait(None if wake is None else max(wake - now, 0.0))

    def _proposal(self, destination: _Destination, needs: list[Need]) -> list[Need]:
        """``needs`` first, then the other contexts this destination was used with (the
        most recent ones, up to pynetdicom's 128)."""
        with self._lock:
            for need in needs:
                destination.known.pop(need, None)
                destination.known[need] = None
            while len(destination.known) > MAX_CONTEXTS:
                destination.known.pop(next(iter(destination.known)))
            recent = list(reversed(destination.known))
        # Role selection is per abstract syntax: the first role proposed for one wins.
        roles: dict[str, bool] = {}
        proposal: list[Need] = []
        for need in [*needs, *recent]:
            if roles.setdefault(need.abstract_syntax, need.as_scp) == need.as_scp:
                proposal.append(need)
        return list(dict.fromkeys(proposal))[:MAX_CONTEXTS]

    def _connect_failed(self, destination: _Destination, exc: CommandError, tries: _Tries) -> bool:
        """Book a failed connection attempt; True when the caller may try again."""
        with self._lock:
            destination.pending -= 1
            destination.probing = False
            self._lock.notify_all()
            if exc.permanent:
                return False
            tries.used += 1
            destination.failures += 1
            destination.failed_total += 1
            destination.last_error = exc
            delay = min(self.retry_delay * 2 ** (destination.failures - 1), self.retry_max_delay)
            destination.retry_at = time.monotonic() + delay * random.uniform(0.8, 1.0)  # noqa: S311
            if tries.used > self.retries:
                raise _exhausted(exc, tries.used) from None
            return True

    def _give_back(self, pooled: _Pooled, keep: bool) -> None:
        with self._lock:
            destination = self._destinations[pooled.peer]
            destination.busy -= 1
            reusable = keep and not self._closed and pooled.assoc.is_established
            if reusable:
                pooled.idle_since = time.monotonic()
                destination.idle.append(pooled)
            self._lock.notify_all()
        if reusable:
            return
        if not keep and pooled.assoc.is_established:
            pooled.assoc.abort()
        if pooled.assoc.is_established:
            self._close(pooled)
        else:
            self._count("discarded")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- associations ---------------------------------------------------------------------

    def _ae(self, calling_ae: str) -> AE:
        with self._lock:
            ae = self._aes.get(calling_ae)
            if ae is None:
                ae = AE(ae_title=calling_ae)
                ae.acse_timeout = self.acse_timeout
                ae.dimse_timeout = self.dimse_timeout
                ae.network_timeout = self.network_timeout
                ae.maximum_pdu_size = self.max_pdu
                self._aes[calling_ae] = ae
            return ae

    def _connect(self, peer: Peer, needs: list[Need], proposal: list[Need]) -> _Pooled:
        """Open an association proposing ``proposal`` (which starts with ``needs``);
        raises CommandError (``refused`` permanent or transient, ``unavailable``) unless
        ``needs`` are accepted."""
        self._count("connect_attempts")
        contexts: dict[tuple[str, ...], PresentationContext] = {}
        for need in proposal:
            for cx in need.contexts():
                contexts.setdefault((str(cx.abstract_syntax), *map(str, cx.transfer_syntax)), cx)
        roles = {n.abstract_syntax: r for n in proposal if (r := n.role()) is not None}
        placeholder: list[_Pooled] = []

        def on_received(event: Event) -> None:
            if placeholder:
                placeholder[0].on_received(event)

        assoc = self._ae(peer.calling_ae).associate(
            peer.host,
            peer.port,
            list(contexts.values())[:MAX_CONTEXTS],
            ae_title=peer.called_ae,
            max_pdu=self.max_pdu,
            ext_neg=list(roles.values()) or None,
            evt_handlers=[(evt.EVT_DIMSE_RECV, on_received)],
        )
        if assoc.is_established:
            missing = [n for n in needs if not n.met_by(assoc, strict_role=False)]
            if missing:
                assoc.release()
                self._count("rejected")
                raise CommandError(
                    Reason.REFUSED,
                    f"{peer} accepted no presentation context for {missing[0].abstract_syntax}",
                    permanent=True,
                )
            pooled = _Pooled(assoc, peer)
            placeholder.append(pooled)
            self._count("opened")
            log.info("association opened to %s", peer)
            return pooled
        self._count("connect_failures")
        if assoc.is_rejected:
            self._count("rejected")
            raise _rejection(peer, assoc)
        if not assoc.accepted_contexts and assoc.rejected_contexts:
            self._count("rejected")
            raise CommandError(
                Reason.REFUSED,
                f"{peer} accepted no presentation context for {needs[0].abstract_syntax}",
                permanent=True,
            )
        raise CommandError(Reason.UNAVAILABLE, f"cannot open an association to {peer}")

    def _close(self, pooled: _Pooled) -> None:
        try:
            if pooled.assoc.is_established:
                pooled.assoc.release()
        except Exception:  # a peer that misbehaves on release: abort instead
            log.warning("release of an association to %s failed; aborting", pooled.peer)
            pooled.assoc.abort()
        self._count("released")

    def _reap(self) -> None:
        interval = max(min(self.idle_timeout / 4, 1.0), 0.05)
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed, interval)
                if self._closed:
                    return
                cutoff = time.monotonic() - self.idle_timeout
                expired: list[_Pooled] = []
                for destination in self._destinations.values():
                    for pooled in list(destination.idle):
                        if pooled.idle_since <= cutoff or not pooled.assoc.is_established:
                            destination.idle.remove(pooled)
                            expired.append(pooled)
            for pooled in expired:
                self._close(pooled)


def _rejection(peer: Peer, assoc: Association) -> CommandError:
    primitive = assoc.acceptor.primitive
    result = getattr(primitive, "result", None)
    reason = str(getattr(primitive, "reason_str", "") or "no reason given")
    transient = result == 0x02
    kind = "transient" if transient else "permanent"
    return CommandError(
        Reason.REFUSED,
        f"{peer} rejected the association ({kind}): {reason}",
        permanent=not transient,
    )


def _exhausted(last: CommandError | None, tries: int, *, expired: bool = False) -> CommandError:
    reason = last.reason if last is not None else Reason.UNAVAILABLE
    message = last.message if last is not None else "destination unavailable"
    suffix = "; next attempt after the deadline" if expired else f" ({tries} attempts)"
    return CommandError(reason, f"{message}{suffix}"[:256], permanent=False)
