"""C-STORE data sets sent from Part 10 files as they are, never decoded and re-encoded.

pynetdicom's ``send_c_store`` takes a path as well as a Dataset. With
``_config.STORE_SEND_CHUNKED_DATASET`` it sends a file's data set bytes as they are, in
chunks no larger than the peer's PDU (so a large instance never sits in memory), on an
accepted context with exactly the file's transfer syntax, and raises ValueError when
there is none. Without it, pynetdicom decodes the file and re-encodes it. Datasets are
sent as before either way.

pynetdicom's C-GET and C-MOVE SCPs (``QueryRetrieveServiceClass._get_scp`` and
``_move_scp``) take only a Dataset from the handler (anything else counts as a failed
sub-operation) and pass it to ``send_c_store`` of the association they send on: the
peer's own for C-GET, the one to the Move Destination for C-MOVE.
:func:`route_c_stores` puts a function of the bridge between the two, so that a Dataset
standing in for a file can be sent as the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pynetdicom import _config

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association

SendCStore = Callable[..., "Dataset"]
"""An association's own ``send_c_store``: ``(dataset or path, msg_id=..., ...)``."""


class Route(Protocol):
    def __call__(
        self, assoc: Association, send: SendCStore, dataset: Dataset, /, *args: Any, **kwargs: Any
    ) -> Dataset:
        """Send ``dataset`` (what the handler yielded) with ``send``, passing ``args`` and
        ``kwargs`` (message ID, Move Originator) on; return the C-STORE response status."""
        ...


def send_files_as_they_are() -> None:
    """Make ``send_c_store(path)`` send the file's data set bytes unchanged, for the whole
    process (pynetdicom has one switch)."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def route_c_stores(assoc: Association, route: Route) -> None:
    """Send every C-STORE request ``assoc`` sends through ``route``: the C-STORE
    sub-operations of a C-GET answered on ``assoc``, or of a C-MOVE when ``assoc`` is the
    association to the Move Destination (route it in an ``EVT_CONN_OPEN`` handler, which
    runs before ``AE.associate`` returns it). Shadows ``assoc.send_c_store`` with an
    instance attribute; a second call for the same association does nothing."""
    if "send_c_store" in vars(assoc):
        return
    send: SendCStore = assoc.send_c_store

    def send_c_store(dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        return route(assoc, send, dataset, *args, **kwargs)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign,assignment]
