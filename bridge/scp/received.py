"""C-STORE data sets received into files, so that a large instance never sits in memory.

With :func:`enable`, pynetdicom writes the fragments of every C-STORE data set to a file
object as they arrive instead of joining them in memory
(:mod:`bridge._pynetdicom.receive`); the handler then finds ``event.request.DataSet``
empty. For an association of the bridge's AE that object is a :class:`Spool`: it keeps the
data set in memory up to a limit (the bulk threshold) and moves it to a file in the
receive directory on the first write past it, so a small instance costs no file and a
large one is never whole in memory. A spool holds the data set bytes only, as received:
pynetdicom's File Meta Information (built from the request, 0.2 ms of CPU per store) is
not made for it. For any other association pynetdicom makes its own file (pynetdicom
3.0.4, ``DIMSEMessage.decode_msg``): a 128-byte preamble, ``DICM``, File Meta Information
(Explicit VR Little Endian, group length first, the accepted transfer syntax) and then the
data set bytes.

pynetdicom deletes the file after the handler returns (one that a spool never made is
fine: it ignores the error); the bridge deletes it, or drops the spool's memory, sooner,
once the envelope is built. Two pynetdicom never deletes: a data set whose association ends
while it is still arriving (an abort, the size guard of :mod:`bridge.scp.guard`), and a
complete request still queued when the association ends. :func:`discard_partial` and
:func:`discard_queued` delete those; :func:`sweep` removes files a killed process left.

:class:`ReceivedDataSet` parses a spool or such a file as pynetdicom parses the received
bytes (``pydicom.filereader.read_dataset`` with the context's transfer syntax), except that
values longer than ``defer_size`` stay in the file. It is the
:class:`~bridge.protocol.dicomjson.DeferredValues` of the dataset it returns, so the DICOM JSON is
the one of the in-memory path, and a large binary value goes to the claim-check store by
a copy in the kernel, never through the bridge's memory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import struct
import tempfile
import threading
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedReader, BufferedWriter, BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.fileutil import read_undefined_length_value
from pydicom.tag import SequenceDelimiterTag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from bridge._pynetdicom import receive
from bridge.errors import CodecError
from bridge.protocol import part10
from bridge.transport.bulkstore import sweep_files

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

PREFIX: Final = "c-store-"
"""Names of the files pynetdicom receives data sets into (then random, then ``.dcm``)."""
SWEEP_AGE: Final = 3600.0
"""Seconds after its last write a file in the receive directory counts as left behind: a
data set being received is written to at least every PDU, and a received one is deleted
within the reply timeout."""

_UNDEFINED: Final = 0xFFFFFFFF
# Preamble, "DICM", then (0002,0000) UL with length 4: the first 144 bytes of every file.
_HEAD: Final = 144
_GROUP_LENGTH: Final = b"\x02\x00\x00\x00UL\x04\x00"

# Receive directory and spool limit of each bridge's AE. Weak: a stopped bridge's AE goes.
_directories: weakref.WeakKeyDictionary[AE, tuple[Path, int]] = weakref.WeakKeyDictionary()
_installed = threading.Lock()


def enable(ae: AE, directory: Path, memory_limit: int = 0) -> None:
    """Receive C-STORE data sets on every association ``ae`` accepts into a :class:`Spool`
    each: in memory up to ``memory_limit`` bytes, past that in a file in ``directory``.
    Raises OSError when ``directory`` cannot be created or written.

    pynetdicom has one switch for the process: once any bridge enables this, every
    association of the process receives C-STORE data sets into files. An association of
    another AE (a test's peer, say) gets them in the system's temporary directory, where
    pynetdicom puts them by default, and pynetdicom's ``event.dataset`` reads them from
    there; only ``event.request.DataSet`` is empty.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
        pass
    with _installed:
        _directories[ae] = (directory, max(0, memory_limit))
    receive.receive_into_files(_spool_for)


def _spool_for(assoc: Association) -> Spool | None:
    """A :class:`Spool` for a data set arriving on an association of a bridge's AE; None
    (pynetdicom's own file) for any other AE."""
    ae = assoc.ae
    where = _directories.get(ae)
    if where is None:
        return None
    return Spool(
        *where,
        source_ae=getattr(getattr(assoc, "requestor", None), "ae_title", None),
        implementation_class_uid=str(ae.implementation_class_uid),
        implementation_version=ae.implementation_version_name,
    )


class Spool(receive.DataSetFile):
    """One C-STORE data set as pynetdicom receives it, as a Part 10 file: :meth:`begin`
    writes the preamble, ``DICM`` and File Meta Information made from the request and the
    association (:func:`bridge.protocol.part10.header`; pynetdicom's own preamble and
    ``DICM`` before it are dropped), then the data set's bytes follow unchanged. The file
    stays in memory while its data set is at most ``limit`` bytes; the first write past
    the limit creates the file :attr:`name` (new, mode 0600) in ``directory``, moves the
    bytes there and goes on there.

    Raises OSError from ``write`` when the file cannot be created or written. Not
    thread-safe: pynetdicom's DUL thread writes it, then one thread at a time reads or
    discards it.
    """

    __slots__ = (
        "_buffer",
        "_file",
        "_implementation",
        "_limit",
        "_source_ae",
        "_started",
        "header_length",
        "meta",
        "name",
        "spilled",
    )

    def __init__(
        self,
        directory: Path,
        limit: int,
        *,
        source_ae: str | None = None,
        implementation_class_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version: str | None = None,
    ) -> None:
        # 128 random bits: no other spool picks it; O_EXCL makes sure at creation.
        self.name = os.path.join(directory, f"{PREFIX}{secrets.token_hex(16)}.dcm")
        self._limit = limit
        self._source_ae = source_ae
        self._implementation = (implementation_class_uid, implementation_version)
        self._buffer: BytesIO | None = BytesIO()
        self._file: BufferedWriter | None = None
        self._started = False
        self.header_length = 0
        """Bytes of preamble, ``DICM`` and File Meta Information: where the data set
        starts."""
        self.meta: receive.DataSetMeta | None = None
        self.spilled = False  # the data set went to the file (which then exists)

    def begin(self, meta: receive.DataSetMeta) -> None:
        """Write the Part 10 header for ``meta``; the data set starts with the next
        write."""
        uid, version = self._implementation
        head = part10.header(
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=meta.sop_instance_uid,
            transfer_syntax=meta.transfer_syntax,
            implementation_class_uid=uid,
            implementation_version=version,
            source_ae=self._source_ae,
        )
        self.meta = meta
        self.header_length = len(head)
        self._started = True
        assert self._buffer is not None
        self._buffer.write(head)

    def write(self, data: bytes) -> int:
        if not self._started:
            return len(data)
        buffer = self._buffer
        if buffer is not None:
            if buffer.tell() + len(data) <= self._limit + self.header_length:
                return buffer.write(data)
            self._spill(buffer)
        if self._file is None:
            raise ValueError("write to a closed spool")
        return self._file.write(data)

    def _spill(self, buffer: BytesIO) -> None:
        fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.spilled = True
        self._file = handle = open(fd, "wb")  # noqa: SIM115 - closed by close()
        self._buffer = None
        handle.write(buffer.getbuffer())

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Close the file; the bytes in memory stay for :meth:`memory` (see
        :meth:`discard`)."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def memory(self) -> BytesIO | None:
        """The Part 10 file when it stayed in memory (None when it went to the file or
        was discarded)."""
        return self._buffer

    def discard(self) -> None:
        """Close, drop the bytes in memory and delete the file if there is one."""
        self._buffer = None
        with contextlib.suppress(OSError, ValueError):  # a failed flush: deleted anyway
            self.close()
        if self.spilled:
            remove(Path(self.name))


def remove(path: Path) -> None:
    """Delete a received file; one already gone is fine, other errors are logged."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("received data set file not deleted: %s", exc.strerror)


def _discard(handle: Any) -> None:
    if handle is None:
        return
    if isinstance(handle, Spool):
        handle.discard()
        return
    with contextlib.suppress(OSError, ValueError):  # a failed flush: deleted anyway
        handle.close()
    remove(Path(handle.name))


def discard_partial(assoc: Association) -> None:
    """Delete the file of a data set still arriving on ``assoc``; call it once the
    connection is closed (``EVT_CONN_CLOSE``, in the thread that wrote the file), when no
    more of it can arrive."""
    _discard(receive.arriving_file(assoc))


def discard_queued(assoc: Association) -> None:
    """Delete the files of complete C-STORE requests that ``assoc`` will never handle;
    call it when the association has ended (``EVT_RELEASED``, ``EVT_ABORTED``)."""
    for handle in receive.queued_files(assoc):
        _discard(handle)


def source_of(event: Event) -> Path | Spool | None:
    """Where the C-STORE data set of ``event`` was received: a :class:`Spool`, the path
    of pynetdicom's own file, or None when it is in ``event.request.DataSet``."""
    found = receive.received_file(event)
    return found if isinstance(found, Path | Spool) else None


def sweep(directory: Path, max_age: float = SWEEP_AGE) -> int:
    """Delete received files not written for ``max_age`` seconds (left by a process that
    was killed); returns how many."""
    return sweep_files(directory, max_age, (PREFIX, ".probe-"))


REFERENCE_MIN: Final = 1024
"""Values longer than this many bytes that are in the Part 10 file as the JSON Model has
them (little endian, not deflated) go into the envelope's ``dataset`` as references into
the file (:func:`bridge.protocol.part10.reference`, about 40 bytes of JSON) instead of
base64 copies (4/3 of their size)."""


@dataclass(frozen=True)
class FileRange:
    """A value still in the received file: ``length`` bytes at ``offset`` of the open file
    descriptor ``fileno`` (valid until :meth:`ReceivedDataSet.close`)."""

    fileno: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        data = os.pread(self.fileno, self.length, self.offset)
        if len(data) != self.length:
            raise OSError(errno.EIO, "received data set file is shorter than when it was read")
        return data


@dataclass(frozen=True)
class MemoryRange:
    """A value of a Part 10 file held in memory: ``length`` bytes at ``offset``."""

    view: memoryview
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        return bytes(self.view[self.offset : self.offset + self.length])


Claim = Callable[[int, str, FileRange], str | None]
"""``(tag, vr, value) -> BulkDataURI`` or None to inline the value: the claim-check of a
value in the file (``bridge.protocol.dicomjson.DeferredValues.claim``)."""


class ReceivedDataSet:
    """One received data set as a Part 10 file: a :class:`Spool`, pynetdicom's file, or
    the bytes of a Part 10 file. :meth:`load` parses it; the dataset's large values stay
    where they are until :meth:`close`.

    With ``references``, every value left in place becomes a reference into the Part 10
    file (:func:`bridge.protocol.part10.reference`): the message carries the file
    (:meth:`part10_memory`, :meth:`part10_path`), so the JSON need not repeat it. Without,
    a value left in a file goes to ``claim`` (a copy into the claim-check store), and a
    Part 10 file in memory is read whole. Not thread-safe: one handler thread.
    """

    def __init__(
        self,
        source: Path | Spool | bytes,
        transfer_syntax: UID,
        *,
        defer_size: int | None,
        claim: Claim | None = None,
        references: bool = False,
    ) -> None:
        self._spool = source if isinstance(source, Spool) else None
        self._bytes = source if isinstance(source, bytes) else None
        self.path = Path(source.name) if isinstance(source, Spool) else source
        self._syntax = transfer_syntax
        self._defer_size = defer_size
        self._claim = claim
        self._references = references
        self._file: BufferedReader | None = None
        self._view: memoryview | None = None
        self._size = 0
        self.dataset_offset = 0
        """Where the data set starts in the Part 10 file (known after :meth:`load`)."""

    def part10_memory(self) -> memoryview | None:
        """The whole Part 10 file when it is in memory (None when it is in a file)."""
        if self._bytes is not None:
            return memoryview(self._bytes)
        spool = self._spool
        if spool is not None and not spool.spilled:
            memory = spool.memory()
            if memory is None:
                raise CodecError("received data set was discarded")
            return memory.getbuffer()
        return None

    def file_meta(self) -> Dataset:
        """The File Meta Information of the Part 10 file (group 0002), read from its
        bytes: what the consumer finds in front of the data set. Call after :meth:`load`.
        Raises OSError when the file cannot be read."""
        start = self.dataset_offset
        memory = self.part10_memory()
        if memory is not None:
            head = bytes(memory[:start])
        else:
            with open(cast(Path, self.path), "rb") as handle:
                head = os.pread(handle.fileno(), start, 0)
        return read_dataset(BytesIO(head[len(part10.PREAMBLE) :]), False, True)

    def part10_path(self) -> Path | None:
        """The Part 10 file when it is on disk (None when it is in memory)."""
        if self.part10_memory() is not None:
            return None
        return cast(Path, self.path)

    def load(self) -> Dataset | None:
        """The data set, read as pynetdicom reads received bytes, with values longer than
        ``defer_size`` left where they are (none for deflated and big endian transfer
        syntaxes, which are read whole as before, nor, without ``references``, for a
        file in memory); None when the request's data set is empty. Raises OSError when
        the file cannot be read, CodecError when pynetdicom's file has no File Meta, and
        what pydicom raises for malformed data."""
        self.close()
        view = self.part10_memory()
        if view is not None:
            spool = self._spool
            if spool is not None:
                start = spool.header_length
            else:
                start = part10.read_meta(view).dataset_offset
            self.dataset_offset = start
            self._size = len(view)
            if start >= self._size:
                return None
            if not self._references or not self._deferrable(start):
                # pynetdicom's in-memory path: the same bytes, read whole (decode()).
                return self._read_whole(BytesIO(view[start:]))
            self._view = view
            stream = BytesIO(view)
            stream.seek(start)
            syntax = self._syntax
            return read_dataset(
                stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=self._defer_size
            )
        self._file = handle = open(cast(Path, self.path), "rb")  # noqa: SIM115 - closed by close()
        self._size = os.fstat(handle.fileno()).st_size
        if self._spool is not None:
            start = self._spool.header_length
        else:
            head = os.pread(handle.fileno(), _HEAD, 0)
            if len(head) < _HEAD or head[128:132] != b"DICM" or head[132:140] != _GROUP_LENGTH:
                raise CodecError("received data set file has no File Meta Information")
            start = _HEAD + int.from_bytes(head[140:144], "little")
        self.dataset_offset = start
        if start >= self._size:
            return None
        handle.seek(start)
        if not self._deferrable(start):
            # Read whole, as pynetdicom does: a data set no larger than defer_size has no
            # value to defer, and parsing it from memory spares a seek per element. Big
            # endian values would need their words swapped on the way to the store: the
            # retired transfer syntax is read whole, as it was before.
            return self._read_whole(BytesIO(handle.read()))
        syntax = self._syntax
        return read_dataset(
            handle, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=self._defer_size
        )

    def _deferrable(self, start: int) -> bool:
        syntax = self._syntax
        defer = self._defer_size
        return not (
            syntax.is_deflated
            or defer is None
            or self._size - start <= defer
            or not syntax.is_little_endian
        )

    def _read_whole(self, data: BytesIO) -> Dataset:
        """``data`` parsed as pynetdicom's ``dsutils.decode`` parses a received data set."""
        syntax = self._syntax
        data.seek(0)
        if syntax.is_deflated:
            # Inflated in memory, Explicit VR Little Endian.
            inflated = zlib.decompress(data.getbuffer(), -zlib.MAX_WBITS)
            return read_dataset(BytesIO(inflated), False, True)
        return read_dataset(data, syntax.is_implicit_VR, syntax.is_little_endian)

    def discard(self) -> None:
        """:meth:`close`, and delete the received data: the spool's memory and file, or
        the file (see :func:`remove`)."""
        self.close()
        if self._spool is not None:
            self._spool.discard()
        elif self._bytes is None:
            remove(cast(Path, self.path))

    def close(self) -> None:
        """Close the file (it is not deleted: see :func:`remove`)."""
        self._view = None
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    # -- bridge.protocol.dicomjson.DeferredValues ------------------------------------------------

    def _pread(self, size: int, offset: int) -> bytes:
        if self._view is not None:
            return bytes(self._view[offset : offset + size])
        assert self._file is not None, "load() first"
        return os.pread(self._file.fileno(), size, offset)

    def _range(self, offset: int, length: int) -> FileRange | MemoryRange:
        if self._view is not None:
            return MemoryRange(self._view, offset, length)
        assert self._file is not None, "load() first"
        return FileRange(self._file.fileno(), offset, length)

    def value(self, raw: RawDataElement) -> bytes | FileRange | MemoryRange:
        """Where the deferred value of ``raw`` is in the file, as pydicom would have read
        it: a defined length up to the end of the file (a shorter value is an error the
        encoder reports), an undefined length up to its Sequence Delimitation Item."""
        start = raw.value_tell
        if raw.length != _UNDEFINED:
            return self._range(start, max(0, min(raw.length, self._size - start)))
        end = self._fragments_end(start, raw.is_little_endian)
        if end is not None:
            return self._range(start, end - start)
        # Not encapsulated fragments: pydicom scans the bytes for the delimiter; read the
        # value the same way (in memory: only malformed data gets here).
        stream: Any = BytesIO(self._view) if self._view is not None else self._file
        stream.seek(start)
        data = read_undefined_length_value(stream, raw.is_little_endian, SequenceDelimiterTag)
        return cast(bytes, data)

    def claim(self, tag: int, vr: str, value: Any) -> str | None:
        if self._references and isinstance(value, FileRange | MemoryRange):
            return part10.reference(value.offset, value.length)
        if self._claim is None or not isinstance(value, FileRange):
            return None
        return self._claim(tag, vr, value)

    def _fragments_end(self, start: int, little: bool) -> int | None:
        """Where the Sequence Delimitation Item after the items from ``start`` is, walking
        the items as pydicom's ``_try_read_encapsulated_pixel_data`` does (it falls back to
        a byte scan exactly where this returns None)."""
        order = "<" if little else ">"
        item = struct.pack(f"{order}HH", 0xFFFE, 0xE000)
        delimiter = struct.pack(f"{order}HH", 0xFFFE, 0xE0DD)
        position = start
        while True:
            header = self._pread(8, position)
            if len(header) < 4:
                return None
            if header[:4] == delimiter:
                return position
            if header[:4] != item or len(header) < 8:
                return None
            position += 8 + struct.unpack(f"{order}L", header[4:])[0]
