"""pynetdicom's private internals that bridge._pynetdicom relies on are still the ones it
was written against (the list, with what breaks: bridge/_pynetdicom/__init__.py).

Three kinds of check: the source digest of every pynetdicom function or method whose
inside the bridge copies, calls or counts on; the type of every private attribute or
module name it reads or replaces, on objects made as pynetdicom's server makes them; and
which pynetdicom functions use each module name the bridge replaces. A failure names the
internal and the bridge module that depends on it: read that module against the new
pynetdicom, then update the expectation here and the list in the package docstring.
"""

from __future__ import annotations

import hashlib
import inspect
import queue
import socket
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import filewriter
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config, dimse_messages, dsutils
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.fsm import StateMachine
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, StorageServiceClass
from pynetdicom.timer import Timer
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

from bridge._pynetdicom import receive

REACTOR = "bridge._pynetdicom.reactor"
COMMANDSET = "bridge._pynetdicom.commandset"
RECEIVE = "bridge._pynetdicom.receive (bridge.scp.received, bridge.scp.conversation)"
SOCKETS = "bridge._pynetdicom.sockets (bridge.scp.guard, bridge.scp.netopt, the reactor)"
CALLING = "bridge._pynetdicom.calling (bridge.scp.guard)"
CONTEXTS = "bridge._pynetdicom.contexts (bridge.scp.server)"
LOGHANDLERS = "bridge._pynetdicom.loghandlers (bridge.scp.server)"
SEND = (
    "bridge._pynetdicom.send (bridge.scu.pool, bridge.scu.perform, bridge.scp.sending, "
    "bridge.scp.streams)"
)


# -- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A pynetdicom function whose source the bridge was written against."""

    function: Callable[..., Any]
    sha256: str
    users: str
    reliance: str


SOURCES: dict[str, Source] = {
    "DULServiceProvider.run_reactor": Source(
        DULServiceProvider.run_reactor,
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
        REACTOR,
        "copied, call for call, as the event-driven DUL loop",
    ),
    "Association._run_reactor": Source(
        Association._run_reactor,
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
        REACTOR,
        "copied, call for call, as the event-driven association loop",
    ),
    "Association.run_reactor": Source(
        Association.run_reactor,
        "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
        f"{REACTOR}, {CALLING}",
        "looks up self._run_reactor after negotiating, which negotiates in the association's "
        "own thread",
    ),
    "DULServiceProvider.__init__": Source(
        DULServiceProvider.__init__,
        "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
        REACTOR,
        "the DUL thread's target is run_reactor (the reactor shadows Thread.run); the queues "
        "it makes are the ones replaced by waking queues",
    ),
    "DULServiceProvider._process_recv_primitive": Source(
        DULServiceProvider._process_recv_primitive,
        "4c0ebbb3e646e35e8e5bbc27ee2f1e6b2c82bbf619232f47639a6cbae092ed39",
        REACTOR,
        "called by the copied DUL loop",
    ),
    "DULServiceProvider._is_transport_event": Source(
        DULServiceProvider._is_transport_event,
        "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253",
        REACTOR,
        "called by the copied DUL loop",
    ),
    "Association._serve_request": Source(
        Association._serve_request,
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877",
        REACTOR,
        "called by the copied association loop",
    ),
    "RequestHandler.handle": Source(
        RequestHandler.handle,
        "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
        f"{REACTOR}, {SOCKETS}",
        "triggers EVT_CONN_OPEN before assoc.start(): loops and socket reads are replaced "
        "before the association runs",
    ),
    "DULServiceProvider._read_pdu_data": Source(
        DULServiceProvider._read_pdu_data,
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
        SOCKETS,
        "reads each PDU through socket.recv as recv(6) then recv(declared length), and "
        "takes an OSError there for a closed connection",
    ),
    "AssociationSocket.recv": Source(
        AssociationSocket.recv,
        "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
        SOCKETS,
        "the read wrapped by the size guard and quick ACKs",
    ),
    "ACSE._negotiate_as_acceptor": Source(
        ACSE._negotiate_as_acceptor,
        "fffd360957c42a8ed89284cf1b1b734527c9be60253950777a0330c0f2be692e",
        CALLING,
        "checks the calling AE title by iterating ae.require_calling_aet when it is truthy",
    ),
    "AE.require_calling_aet (getter)": Source(
        AE.require_calling_aet.fget,  # type: ignore[attr-defined]
        "8adadf35b53b1d767548185e02c07effa4faebdd25cc683d78f6c5554f45722f",
        CALLING,
        "returns AE._require_calling_aet as it is",
    ),
    "RequestHandler._create_association": Source(
        RequestHandler._create_association,
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
        CONTEXTS,
        "deep-copies the server's supported contexts for every association",
    ),
    "PresentationContext.transfer_syntax (getter)": Source(
        PresentationContext.transfer_syntax.fget,  # type: ignore[attr-defined]
        "469b45a2f34fd9f5fc253354d325714e77e67f878f0c0b8c913fba7ee21035a0",
        CONTEXTS,
        "the transfer syntaxes are the list PresentationContext._transfer_syntax",
    ),
    "DIMSEMessage.decode_msg": Source(
        DIMSEMessage.decode_msg,
        "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
        RECEIVE,
        "makes the data set's file with NamedTemporaryFile, writes the preamble, then "
        "write_file_meta_info(create_file_meta(...)), then the fragments with file.flush()",
    ),
    "DIMSEMessage.message_to_primitive": Source(
        DIMSEMessage.message_to_primitive,
        "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac",
        RECEIVE,
        "hands the file to the request primitive as _dataset_file and _dataset_path",
    ),
    "DIMSEServiceProvider.receive_primitive": Source(
        DIMSEServiceProvider.receive_primitive,
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
        RECEIVE,
        "decodes in the DUL thread into self.message; queues complete requests on msg_queue",
    ),
    "StorageServiceClass.SCP": Source(
        StorageServiceClass.SCP,
        "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40",
        RECEIVE,
        "closes the request's file after the handler and deletes it, ignoring OSError",
    ),
    "Event.dataset_path (getter)": Source(
        Event.dataset_path.fget,  # type: ignore[attr-defined]
        "7eba7552ff800249a475c9789cd02b1c7e2e8f89208e91c71636b05fdcdb53b8",
        RECEIVE,
        "the request's _dataset_path; AttributeError when there is none",
    ),
    "DIMSEMessage.encode_msg": Source(
        DIMSEMessage.encode_msg,
        "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57",
        COMMANDSET,
        "encodes the command set with the module's encode(ds, True, True)",
    ),
    "DIMSEMessage._set_command_group_length": Source(
        DIMSEMessage._set_command_group_length,
        "c3057c97344d5db3dc7a084ca5520ff7e04bbc8a07f3738295362c97718e3085",
        COMMANDSET,
        "encodes the command set with the module's encode(ds, True, True)",
    ),
    "dsutils.encode": Source(
        dsutils.encode,
        "0d29ffd5d358c45a6b20436a9a45ec4ea003631dd4323e827c87365624c71cf0",
        COMMANDSET,
        "the fallback for what the command-set encoder does not handle, same signature",
    ),
    "Association.send_c_store": Source(
        Association.send_c_store,
        "fa5a8127f349f8e75698f4cdf2b4dbe3f38e3e9e320a8cf45c15bf8333f9c283",
        SEND,
        "with _config.STORE_SEND_CHUNKED_DATASET a path's data set is not decoded: it is "
        "sent from the file (_dataset_path) on a context with exactly the file's transfer "
        "syntax (allow_conversion=False), ValueError when there is none",
    ),
    "Association._bind_defaults": Source(
        Association._bind_defaults,
        "4cada43c3a1937240a09fdb33edfe2eeb1924a627b13a4e4471cd26f41fd2bf8",
        LOGHANDLERS,
        "binds the standard log handlers only when _config.LOG_HANDLER_LEVEL is 'standard'",
    ),
    "QueryRetrieveServiceClass._get_scp": Source(
        QueryRetrieveServiceClass._get_scp,
        "8ca1538e3e56c4f7317f3d8bd0d0e009d596e9f3c57027db3128ec7e728e46a6",
        SEND,
        "takes a Pending (status, dataset) only with a non-empty Dataset, strips bulk data "
        "only on Composite Instance Retrieve Without Bulk Data, passes the Dataset to "
        "self.assoc.send_c_store(dataset, msg_id=...) and lists its SOPInstanceUID when "
        "that fails",
    ),
    "QueryRetrieveServiceClass._move_scp": Source(
        QueryRetrieveServiceClass._move_scp,
        "5c14d1be3d737befcc148893bcd529a03695e82f8f943f19b640ff4f32382742",
        SEND,
        "associates with self.ae.associate(addr, port, ae_title=..., **the handler's kwargs) "
        "(evt_handlers among them) and passes a Pending Dataset to that association's "
        "send_c_store(dataset, msg_id=..., originator_aet=..., originator_id=...)",
    ),
    "AssociationSocket.connect": Source(
        AssociationSocket.connect,
        "aeeeae413bd339dcc18230a6c0926993a824fd6ec31479febfbe21734911482f",
        SEND,
        "triggers EVT_CONN_OPEN once connected, before the association is negotiated: the "
        "association to a C-MOVE destination is routed before AE.associate returns it",
    ),
}


def _sha256(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_is_the_one_relied_on(name: str) -> None:
    source = SOURCES[name]
    digest = _sha256(source.function)
    assert digest == source.sha256, (
        f"pynetdicom's {name} changed (sha256 now {digest}). {source.users} relies on it: "
        f"{source.reliance}. Review that module against the new source, then update the "
        "digest in tests/test_pynetdicom_contract.py and the list in "
        "bridge/_pynetdicom/__init__.py."
    )


# -- attributes and module names --------------------------------------------------------------


@dataclass(frozen=True)
class Specimens:
    """pynetdicom objects as its server makes them for an association it accepts."""

    ae: AE
    assoc: Association
    sock: AssociationSocket
    context: PresentationContext


@pytest.fixture(scope="module")
def specimens() -> Iterator[Specimens]:
    ae = AE()
    ae.add_supported_context(
        "1.2.840.10008.1.1", [ExplicitVRLittleEndian], scu_role=True, scp_role=True
    )
    ours, peer = socket.socketpair()
    assoc = Association(ae, "acceptor")
    sock = AssociationSocket(assoc, client_socket=ours)
    assoc.set_socket(sock)
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 11112)
    try:
        yield Specimens(ae, assoc, sock, ae.supported_contexts[0])
    finally:
        ours.close()
        peer.close()


@dataclass(frozen=True)
class Internal:
    """A private attribute or module name, and what it must be."""

    get: Callable[[Specimens], Any]
    expected: str
    check: Callable[[Any], bool]
    users: str


def _typed(kind: type | tuple[type, ...], users: str, get: Callable[[Specimens], Any]) -> Internal:
    names = kind if isinstance(kind, tuple) else (kind,)
    return Internal(
        get, " or ".join(k.__name__ for k in names), lambda v: isinstance(v, kind), users
    )


def _bridge_command_set_encoder(value: Any) -> bool:
    return value is dsutils.encode or getattr(value, "__wrapped_by_bridge__", False) is True


def _immutable_but_transfer_syntaxes(context: PresentationContext) -> bool:
    others = {k: v for k, v in vars(context).items() if k != "_transfer_syntax"}
    return all(v is None or isinstance(v, bool | int | str | UID) for v in others.values())


INTERNALS: dict[str, Internal] = {
    # the reactor's loops
    "Association._kill": _typed(bool, REACTOR, lambda s: s.assoc._kill),
    "Association._is_paused": _typed(bool, REACTOR, lambda s: s.assoc._is_paused),
    "Association._dul_ready": _typed(threading.Event, REACTOR, lambda s: s.assoc._dul_ready),
    "Association._reactor_checkpoint": _typed(
        threading.Event, REACTOR, lambda s: s.assoc._reactor_checkpoint
    ),
    "Association._run_reactor": _typed(types.MethodType, REACTOR, lambda s: s.assoc._run_reactor),
    "DIMSEServiceProvider.msg_queue": _typed(
        queue.Queue, f"{REACTOR}, {RECEIVE}", lambda s: s.assoc.dimse.msg_queue
    ),
    "DULServiceProvider._idle_timer": _typed(Timer, REACTOR, lambda s: s.assoc.dul._idle_timer),
    "DULServiceProvider._kill_thread": _typed(bool, REACTOR, lambda s: s.assoc.dul._kill_thread),
    "DULServiceProvider.artim_timer": _typed(Timer, REACTOR, lambda s: s.assoc.dul.artim_timer),
    "DULServiceProvider.state_machine": _typed(
        StateMachine, REACTOR, lambda s: s.assoc.dul.state_machine
    ),
    "StateMachine.current_state": _typed(
        str, REACTOR, lambda s: s.assoc.dul.state_machine.current_state
    ),
    "DULServiceProvider.event_queue": _typed(
        queue.Queue, REACTOR, lambda s: s.assoc.dul.event_queue
    ),
    "DULServiceProvider.to_provider_queue": _typed(
        queue.Queue, REACTOR, lambda s: s.assoc.dul.to_provider_queue
    ),
    "DULServiceProvider.to_user_queue": _typed(
        queue.Queue, REACTOR, lambda s: s.assoc.dul.to_user_queue
    ),
    "DULServiceProvider.run is Thread.run": Internal(
        lambda _: DULServiceProvider.run,
        "threading.Thread.run (the reactor shadows it per instance)",
        lambda v: v is threading.Thread.run,
        REACTOR,
    ),
    # the socket
    "DULServiceProvider.socket": Internal(
        lambda s: s.assoc.dul.socket is s.sock, "the association's socket", bool, SOCKETS
    ),
    "AssociationSocket.socket": _typed(socket.socket, SOCKETS, lambda s: s.sock.socket),
    "AssociationSocket._is_connected": _typed(bool, SOCKETS, lambda s: s.sock._is_connected),
    # the threads the hooks find their association from
    "DULServiceProvider: a Thread whose .assoc is its association": Internal(
        lambda s: (s.assoc.dul, s.assoc),
        "a Thread with .assoc",
        lambda v: isinstance(v[0], threading.Thread) and getattr(v[0], "assoc", None) is v[1],
        RECEIVE,
    ),
    "Association: a Thread whose .requestor has .address": Internal(
        lambda s: (s.assoc, s.assoc.requestor.address),
        "a Thread with .requestor.address, a str",
        lambda v: isinstance(v[0], threading.Thread) and isinstance(v[1], str),
        CALLING,
    ),
    # the calling-AE check
    "AE._require_calling_aet": _typed(list, CALLING, lambda s: s.ae._require_calling_aet),
    # the supported contexts
    "PresentationContext._transfer_syntax": _typed(
        list, CONTEXTS, lambda s: s.context._transfer_syntax
    ),
    "PresentationContext: nothing else mutable": Internal(
        lambda s: s.context,
        "only None, bool, int, str and UID besides _transfer_syntax",
        _immutable_but_transfer_syntaxes,
        CONTEXTS,
    ),
    # chunked receive
    "_config.STORE_RECV_CHUNKED_DATASET": _typed(
        bool, RECEIVE, lambda _: _config.STORE_RECV_CHUNKED_DATASET
    ),
    "DIMSEServiceProvider.message": _typed(type(None), RECEIVE, lambda s: s.assoc.dimse.message),
    "DIMSEMessage._data_set_file": _typed(
        type(None), RECEIVE, lambda _: DIMSEMessage()._data_set_file
    ),
    "C_STORE._dataset_file": _typed(type(None), RECEIVE, lambda _: C_STORE()._dataset_file),
    "C_STORE._dataset_path": _typed(type(None), RECEIVE, lambda _: C_STORE()._dataset_path),
    # the log handlers
    "_config.LOG_HANDLER_LEVEL": _typed(str, LOGHANDLERS, lambda _: _config.LOG_HANDLER_LEVEL),
    # files sent as they are
    "_config.STORE_SEND_CHUNKED_DATASET": _typed(
        bool, SEND, lambda _: _config.STORE_SEND_CHUNKED_DATASET
    ),
    "Association.send_c_store: a method an instance attribute shadows": Internal(
        lambda s: (vars(Association).get("send_c_store"), "send_c_store" in vars(s.assoc)),
        "a plain function of the class, no instance attribute of that name",
        lambda v: inspect.isfunction(v[0]) and not v[1],
        SEND,
    ),
}


def _replaced(name: str, users: str, *values: Any) -> Internal:
    """A name in ``pynetdicom.dimse_messages`` that the bridge replaces: pynetdicom's own
    value, or the bridge's (another test of this process may have installed it)."""
    return Internal(
        lambda _: vars(dimse_messages)[name],
        " or ".join(f"{v.__module__}.{v.__qualname__}" for v in values),
        lambda v: any(v is value for value in values),
        users,
    )


INTERNALS |= {
    "dimse_messages.encode": Internal(
        lambda _: vars(dimse_messages)["encode"],
        "pynetdicom.dsutils.encode or bridge._pynetdicom.commandset's",
        _bridge_command_set_encoder,
        COMMANDSET,
    ),
    "dimse_messages.NamedTemporaryFile": _replaced(
        "NamedTemporaryFile", RECEIVE, tempfile.NamedTemporaryFile, receive.named_temporary_file
    ),
    "dimse_messages.create_file_meta": _replaced(
        "create_file_meta", RECEIVE, dsutils.create_file_meta, receive.file_meta_arguments
    ),
    "dimse_messages.write_file_meta_info": _replaced(
        "write_file_meta_info", RECEIVE, filewriter.write_file_meta_info, receive.write_file_meta
    ),
}


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_internal_is_there_as_expected(name: str, specimens: Specimens) -> None:
    internal = INTERNALS[name]
    try:
        value = internal.get(specimens)
    except (AttributeError, KeyError) as exc:
        pytest.fail(f"pynetdicom's {name} is gone ({exc!r}). {internal.users} relies on it.")
    assert internal.check(value), (
        f"pynetdicom's {name} is {value!r}, not {internal.expected}. {internal.users} "
        "relies on it: review that module, then update tests/test_pynetdicom_contract.py "
        "and the list in bridge/_pynetdicom/__init__.py."
    )


# -- where the replaced module names are used -------------------------------------------------

USED_BY: dict[str, tuple[set[str], str]] = {
    "encode": ({"DIMSEMessage.encode_msg", "DIMSEMessage._set_command_group_length"}, COMMANDSET),
    "NamedTemporaryFile": ({"DIMSEMessage.decode_msg"}, RECEIVE),
    "create_file_meta": ({"DIMSEMessage.decode_msg"}, RECEIVE),
    "write_file_meta_info": ({"DIMSEMessage.decode_msg"}, RECEIVE),
}


def _names(code: types.CodeType) -> set[str]:
    """Global and attribute names ``code`` and the code nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _functions_of(module: types.ModuleType) -> Iterator[tuple[str, Callable[..., Any]]]:
    for name, value in vars(module).items():
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            yield name, value
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            for attr, member in vars(value).items():
                function = member.fget if isinstance(member, property) else member
                if inspect.isfunction(function):
                    yield f"{name}.{attr}", function


@pytest.mark.parametrize("name", sorted(USED_BY))
def test_replaced_module_names_are_used_only_where_relied_on(name: str) -> None:
    users = {
        qualified
        for qualified, function in _functions_of(dimse_messages)
        if name in _names(function.__code__)
    }
    expected, bridge_users = USED_BY[name]
    assert users == expected, (
        f"pynetdicom.dimse_messages.{name} is now used by {sorted(users)}, not only "
        f"{sorted(expected)}. {bridge_users} replaces that name in the module: review "
        "what the new users pass it."
    )
