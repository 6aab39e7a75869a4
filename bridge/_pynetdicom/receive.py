"""Where pynetdicom receives C-STORE data sets: in files, made by the caller's factory.

With ``_config.STORE_RECV_CHUNKED_DATASET``, pynetdicom's ``DIMSEMessage.decode_msg``
writes the fragments of every C-STORE data set to a file as they arrive instead of
joining them in memory (in the DUL thread of the association): it makes the file with
``NamedTemporaryFile`` (a name in ``pynetdicom.dimse_messages``), writes a 128-byte
preamble and ``DICM``, builds File Meta Information with ``create_file_meta`` and writes
it with ``write_file_meta_info`` (both names in that module too), then each fragment,
flushing ``file.file`` after each. ``message_to_primitive`` hands the file to the request
primitive (``C_STORE._dataset_file``, its path in ``_dataset_path``: ``event.dataset_path``),
whose handler finds ``event.request.DataSet`` empty; the Storage SCP closes the file and
deletes it (ignoring errors) once the handler returns.

:func:`receive_into_files` turns that on for the process and replaces the three names,
for ``decode_msg`` only: a file for an association of an AE the factory knows is the
factory's :class:`DataSetFile`, which gets no pydicom File Meta Information (building it
costs 0.2 ms of CPU per store) but :meth:`DataSetFile.begin` with its facts (SOP class and
instance, transfer syntax) where it would be written; any other association gets
pynetdicom's own file, exactly as pynetdicom makes it.
:func:`arriving_file`, :func:`queued_files` and :func:`received_file` find the files
pynetdicom holds.
"""

from __future__ import annotations

import abc
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydicom import filewriter
from pynetdicom import _config, dimse_messages, dsutils

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event


class DataSetFile(abc.ABC):
    """A file pynetdicom receives a C-STORE data set into, in place of its
    ``NamedTemporaryFile``. What pynetdicom uses of it: :attr:`name` (a path, chosen at
    once: the file may never exist), ``write``, ``file.flush()``, ``close()`` and truth.
    Bytes written before :meth:`begin` are pynetdicom's preamble and ``DICM``; the data set
    follows it."""

    __slots__ = ()

    name: str

    def __bool__(self) -> bool:
        return True  # pynetdicom writes the data set here only when its file is truthy

    @property
    def file(self) -> DataSetFile:
        """What pynetdicom flushes after every fragment (the wrapped file of a
        NamedTemporaryFile)."""
        return self

    @abc.abstractmethod
    def begin(self, meta: DataSetMeta) -> None:
        """The data set starts with the next write; ``meta`` is what pynetdicom would have
        put in its File Meta Information."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DataSetMeta:
    """The facts of an arriving C-STORE data set that pynetdicom passes to
    ``create_file_meta``: from the request's command set and the accepted context."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


FileFactory = Callable[["Association"], DataSetFile | None]
"""``factory(assoc)``: the file for a data set arriving on ``assoc``, or None for
pynetdicom's own file. Called in the association's DUL thread."""

_lock = threading.Lock()
_factory: FileFactory | None = None
# What the hooks below stand in for (taken from their home modules, never patched there).
_create_file_meta: Final = dsutils.create_file_meta
_write_file_meta_info: Final = filewriter.write_file_meta_info


def receive_into_files(factory: FileFactory) -> None:
    """Make pynetdicom receive every C-STORE data set of the process into a file: the
    one ``factory`` makes, or pynetdicom's own file in the system's temporary directory
    (which pynetdicom's ``event.dataset`` reads from). pynetdicom has one switch for the
    whole process; the last factory given serves every association."""
    global _factory  # noqa: PLW0603 - the one factory of pynetdicom's one switch
    with _lock:
        _factory = factory
        # pynetdicom names these in its module: patched there, for decode_msg only.
        dimse_messages.NamedTemporaryFile = named_temporary_file  # type: ignore[attr-defined]
        dimse_messages.create_file_meta = file_meta_arguments  # type: ignore[attr-defined]
        dimse_messages.write_file_meta_info = write_file_meta  # type: ignore[attr-defined]
        _config.STORE_RECV_CHUNKED_DATASET = True


def named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile`` in ``decode_msg``: the factory's file for an
    association of an AE it knows, pynetdicom's own file for any other.

    pynetdicom calls it in its DUL thread, which knows its association.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    factory = _factory
    made = factory(assoc) if assoc is not None and factory is not None else None
    if made is not None:
        return made
    return tempfile.NamedTemporaryFile(*args, **kwargs)


@dataclass(frozen=True)
class _FileMetaArguments:
    """pynetdicom's ``create_file_meta`` call, made only if the File Meta is written."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def file_meta_arguments(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``create_file_meta`` in ``decode_msg``, whose only use is the argument
    of ``write_file_meta_info`` next: deferred to :func:`write_file_meta`."""
    return _FileMetaArguments(args, kwargs)


def write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    """pynetdicom's ``write_file_meta_info`` in ``decode_msg``: :meth:`DataSetFile.begin`
    for a :class:`DataSetFile`, pydicom's for any other file."""
    if isinstance(fp, DataSetFile):
        arguments = file_meta.kwargs if isinstance(file_meta, _FileMetaArguments) else {}
        fp.begin(
            DataSetMeta(
                sop_class_uid=str(arguments.get("sop_class_uid") or ""),
                sop_instance_uid=str(arguments.get("sop_instance_uid") or ""),
                transfer_syntax=str(arguments.get("transfer_syntax") or ""),
            )
        )
        return
    if isinstance(file_meta, _FileMetaArguments):
        file_meta = _create_file_meta(*file_meta.args, **file_meta.kwargs)
    _write_file_meta_info(fp, file_meta, *args, **kwargs)


def arriving_file(assoc: Association) -> Any | None:
    """The file of the C-STORE data set still arriving on ``assoc`` (None if none).
    pynetdicom never deletes it when the association ends before the data set is
    complete."""
    message = getattr(assoc.dimse, "message", None)
    return getattr(message, "_data_set_file", None)


def queued_files(assoc: Association) -> list[Any]:
    """The files of the complete C-STORE requests queued on ``assoc``, not handled yet.
    pynetdicom never deletes them when the association ends first."""
    queue = assoc.dimse.msg_queue
    with queue.mutex:
        items = list(queue.queue)
    files = (getattr(primitive, "_dataset_file", None) for _, primitive in items)
    return [f for f in files if f is not None]


def received_file(event: Event) -> DataSetFile | Path | None:
    """The file the C-STORE request of ``event`` was received into: a
    :class:`DataSetFile`, or the path of pynetdicom's own file; None when the data set
    was received into memory (or ``event`` is no C-STORE)."""
    made = getattr(event.request, "_dataset_file", None)
    if isinstance(made, DataSetFile):
        return made
    try:
        # Typed Path, but None when pynetdicom received the data set into memory.
        path: Path | None = event.dataset_path
    except AttributeError:
        return None
    return path
