"""C-STORE data sets sent from Part 10 files as they are, never decoded and re-encoded.

pynetdicom's ``send_c_store`` takes a path as well as a Dataset. With
``_config.STORE_SEND_CHUNKED_DATASET`` it sends a file's data set bytes as they are, in
chunks no larger than the peer's PDU (so a large instance never sits in memory), on an
accepted context with exactly the file's transfer syntax, and raises ValueError when
there is none. Without it, pynetdicom decodes the file and re-encodes it. Datasets are
sent as before either way.
"""

from __future__ import annotations

from pynetdicom import _config


def send_files_as_they_are() -> None:
    """Make ``send_c_store(path)`` send the file's data set bytes unchanged, for the whole
    process (pynetdicom has one switch)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
