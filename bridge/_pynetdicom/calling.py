"""pynetdicom's calling-AE check, per peer.

An acceptor rejects an association (A-ASSOCIATE-RJ rejected-permanent, service-user,
"calling AE title not recognized") when ``ae.require_calling_aet`` is non-empty and the
calling AE title is not among the titles it iterates (``ACSE._negotiate_as_acceptor``,
run in the association's own thread). The property's setter copies into a plain list;
:func:`require_calling_titles` puts a list of its own in the attribute behind it
(``AE._require_calling_aet``, which the getter returns as it is), whose iteration asks
which titles the peer negotiating in the current thread may use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom import AE

TitlesFor = Callable[[str | None], Sequence[str]]
"""``titles_for(peer address)``: the calling AE titles allowed from there (the address is
None when the thread knows no peer)."""


def require_calling_titles(ae: AE, titles: Sequence[str], titles_for: TitlesFor) -> None:
    """Make ``ae`` accept a calling AE title from a peer only if ``titles_for(address)``
    lists it. ``titles`` is every title that may be allowed from anywhere; it must not be
    empty (pynetdicom checks only a non-empty list)."""
    if not titles:
        raise ValueError("no calling AE titles: pynetdicom would check nothing")
    ae._require_calling_aet = _TitlesForThisPeer(titles, titles_for)


class _TitlesForThisPeer(list[str]):
    """What pynetdicom iterates to check the calling AE title: the titles allowed for the
    peer of the association negotiating in the current thread (an acceptor negotiates in
    its own Association thread, whose ``requestor`` is the peer)."""

    def __init__(self, titles: Sequence[str], titles_for: TitlesFor) -> None:
        super().__init__(titles)  # truthy: pynetdicom then checks at all
        self._titles_for = titles_for

    def __iter__(self) -> Iterator[str]:
        requestor = getattr(threading.current_thread(), "requestor", None)
        address = getattr(requestor, "address", None)
        return iter(self._titles_for(address))
