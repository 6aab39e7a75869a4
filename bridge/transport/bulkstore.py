"""Claim-check store for bulk data too large to travel inside a broker message.

The bridge and its consumers share a directory (a volume in Kubernetes, mounted at the
same path everywhere). A value above the threshold is written there once and the
envelope or reply carries its ``file://`` URI as ``BulkDataURI`` (PS3.18 F.2.6), which any
language can open. The interface is small so that an object store can stand in later.

Ownership: the side that reads a value deletes it when done (the bridge deletes what it
wrote for a request once the request is answered, and what a consumer wrote for a reply
once it is sent on); :meth:`DirectoryStore.sweep` removes leftovers of crashed processes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from bridge.errors import CodecError

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
"""Bytes per read and write when a range is copied through user space: the memory a copy
takes at most."""


class BulkStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data``; return its URI."""
        ...

    def put_range(self, source: int, offset: int, length: int) -> str:
        """Store ``length`` bytes of the open file ``source`` (a file descriptor) from
        ``offset`` without holding them in memory; return the URI. Raises OSError, also
        when the file ends before the range does."""
        ...

    def put_file(self, path: Path, *, owned: bool = False) -> str:
        """Store the whole file at ``path``, sharing its blocks where the store can (a
        hard link) and copying them in the kernel where it cannot; return the URI. The
        file's bytes are left as they are; so is its mode, unless ``owned`` (a file the
        caller made for the store, whose mode may become the store's). Raises OSError."""
        ...

    def get(self, uri: str) -> bytes:
        """The bytes behind ``uri``. Raises CodecError when it is unknown or unreadable."""
        ...

    def local_path(self, uri: str) -> Path:
        """A local file holding the bytes behind ``uri``, to read without holding them in
        memory (the store's own: do not change or delete it; :meth:`delete` does).
        Raises CodecError when ``uri`` is not one of the store's."""
        ...

    def delete(self, uri: str) -> None:
        """Forget ``uri``; a missing one is not an error. Never raises: callers delete
        while they clean up; a file that cannot be deleted is logged and left to
        :meth:`DirectoryStore.sweep`."""
        ...


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every
    thread, for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def path_of(uri: str) -> Path:
    """The local path of a ``file://`` URI. Raises CodecError for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise CodecError("BulkDataURI is not a local file:// URI")
    return Path(unquote(parsed.path))


def read_uri(uri: str) -> bytes:
    """Read a ``file://`` BulkDataURI (consumers in any process can do the same)."""
    try:
        return path_of(uri).read_bytes()
    except OSError:
        raise CodecError("BulkDataURI cannot be read") from None


class DirectoryStore:
    """Files named by random UUIDs under ``root``; written via a temporary name and an
    atomic rename, so a reader never sees half a value."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._mode = 0o666 & ~_umask()  # what open() gives the files put() writes

    def ensure(self) -> None:
        """Create the directory; raises OSError when it cannot be created or written."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()

    def put(self, data: bytes) -> str:
        return self._write(lambda out: out.write(data))

    def put_range(self, source: int, offset: int, length: int) -> str:
        return self._write(lambda out: copy_range(source, out.fileno(), offset, length))

    def put_file(self, path: Path, *, owned: bool = False) -> str:
        name = uuid.uuid4().hex
        target = self.root / name
        # A link shares the inode, mode included: readers need the mode put() gives its
        # files, and someone else's file (a consumer's archive) keeps its own.
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if owned or mode & self._mode == self._mode:
            try:
                # Same filesystem (the receive directory is inside the store by
                # default): no byte is copied.
                os.link(path, target)
            except OSError:
                pass
            else:
                if owned and mode != self._mode:
                    try:
                        os.chmod(target, self._mode)
                    except OSError:
                        target.unlink(missing_ok=True)
                        raise
                return target.as_uri()
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            return self._write(lambda out: copy_range(source.fileno(), out.fileno(), 0, size))

    def _write(self, fill: Callable[[Any], object]) -> str:
        name = uuid.uuid4().hex
        target = self.root / name
        partial = self.root / f".{name}.partial"
        try:
            with open(partial, "wb") as handle:
                fill(handle)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk must not keep half a value
            raise
        return target.as_uri()

    def get(self, uri: str) -> bytes:
        path = self.local_path(uri)
        try:
            return path.read_bytes()
        except OSError:
            raise CodecError("BulkDataURI cannot be read") from None

    def local_path(self, uri: str) -> Path:
        # Only files of this store: a reply must not make the bridge read /etc/shadow.
        path = path_of(uri)
        if path.parent != self.root or path.name.startswith("."):
            raise CodecError("BulkDataURI is outside the bulk data directory")
        return path

    def delete(self, uri: str) -> None:
        try:
            path = path_of(uri)
        except CodecError:
            return
        if path.parent == self.root:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("claim-check file not deleted: %s", exc.strerror)

    def sweep(self, max_age: float) -> int:
        """Delete files older than ``max_age`` seconds; returns how many."""
        return sweep_files(self.root, max_age)


def sweep_files(directory: Path, max_age: float, prefixes: tuple[str, ...] = ("",)) -> int:
    """Delete the files in ``directory`` whose names start with one of ``prefixes`` and
    that were last written more than ``max_age`` seconds ago; returns how many. A file
    that cannot be examined or deleted is left; a missing directory has none."""
    cutoff = time.time() - max_age
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
        except OSError:
            continue
    return removed


# copy_file_range cannot serve this pair of files (another filesystem on older kernels,
# filesystems without support, special files): copy through user space instead.
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.ETXTBSY}
)


def copy_range(source: int, target: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of file descriptor ``source`` from ``offset`` to
    ``target`` at its current position. In the kernel where it can
    (``os.copy_file_range``: no copy through user space, a reflink on filesystems that
    share extents), else in :data:`COPY_CHUNK` pieces. Raises OSError, ``EIO`` when
    ``source`` ends before the range does."""
    position, remaining = offset, length
    if hasattr(os, "copy_file_range"):
        try:
            while remaining:
                copied = os.copy_file_range(source, target, remaining, position)
                if not copied:
                    raise OSError(errno.EIO, "file ends before the value does")
                position += copied
                remaining -= copied
            return
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
    buffer = bytearray(min(COPY_CHUNK, remaining))
    view = memoryview(buffer)
    while remaining:
        got = os.preadv(source, [view[: min(remaining, len(buffer))]], position)
        if not got:
            raise OSError(errno.EIO, "file ends before the value does")
        written = 0
        while written < got:
            written += os.write(target, view[written:got])
        position += got
        remaining -= got
