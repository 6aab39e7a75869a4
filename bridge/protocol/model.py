"""The bridge's vocabulary: DIMSE services, their status tables, routing keys.

Pure data and small pure functions; no I/O. The status tables are pynetdicom's handler
documentation (``pynetdicom._handlers.doc_handle_*``), which is the contract for what a
handler may return; ``tests/test_model.py`` checks that they still cover it. Additions from
PS3.7 are marked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bridge.errors import Failure

ENVELOPE_VERSION = 1
"""Version of the envelope and reply documents (``"version"`` in both)."""


class Category(StrEnum):
    """Status category of PS3.7 Annex C."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


class Service(StrEnum):
    """A DIMSE service; the value is the first word of its routing key."""

    C_ECHO = "c-echo"
    C_STORE = "c-store"
    C_FIND = "c-find"
    C_GET = "c-get"
    C_MOVE = "c-move"
    N_EVENT_REPORT = "n-event-report"
    N_GET = "n-get"
    N_SET = "n-set"
    N_ACTION = "n-action"
    N_CREATE = "n-create"
    N_DELETE = "n-delete"

    @property
    def spec(self) -> ServiceSpec:
        return SPECS[self]

    @property
    def dimse_name(self) -> str:
        """``C-STORE``, ``N-EVENT-REPORT``, ..."""
        return self.value.upper()

    @property
    def event_name(self) -> str:
        """The pynetdicom intervention event: ``EVT_C_STORE``, ``EVT_N_EVENT_REPORT``, ..."""
        return "EVT_" + self.value.upper().replace("-", "_")


@dataclass(frozen=True)
class StatusTable:
    """Statuses a consumer may return for one service, by category."""

    codes: Mapping[int, Category]
    ranges: tuple[tuple[int, int, Category], ...] = ()

    def category(self, code: int) -> Category | None:
        """The category of ``code`` for this service, or None when it is not allowed."""
        found = self.codes.get(code)
        if found is not None:
            return found
        for low, high, category in self.ranges:
            if low <= code <= high:
                return category
        return None

    def allows(self, code: int) -> bool:
        return self.category(code) is not None


def _table(
    *,
    warning: Iterable[int] = (),
    failure: Iterable[int] = (),
    failure_ranges: Iterable[tuple[int, int]] = (),
    pending: Iterable[int] = (),
    cancel: bool = False,
) -> StatusTable:
    codes: dict[int, Category] = {0x0000: Category.SUCCESS}
    codes.update(dict.fromkeys(failure, Category.FAILURE))
    codes.update(dict.fromkeys(warning, Category.WARNING))
    codes.update(dict.fromkeys(pending, Category.PENDING))
    if cancel:
        codes[0xFE00] = Category.CANCEL
    ranges = tuple((low, high, Category.FAILURE) for low, high in failure_ranges)
    return StatusTable(codes=codes, ranges=ranges)


# Failure statuses the bridge sends itself, per service. C-STORE and the Q/R services use
# the "unable to process" range C000-CFFF with distinct codes so an operator can tell the
# causes apart from the peer's log alone; A7xx tells a modality to retry later.
_C_FAILURES = {
    Failure.UNAVAILABLE: 0xA700,
    Failure.UNROUTABLE: 0xA700,
    Failure.BAD_REQUEST: 0xC000,
    Failure.TIMEOUT: 0xC001,
    Failure.BAD_REPLY: 0xC002,
    Failure.INTERNAL: 0xC211,
}
_RETRIEVE_FAILURES = {
    **_C_FAILURES,
    Failure.UNAVAILABLE: 0xA701,
    Failure.UNROUTABLE: 0xA701,
    Failure.BAD_REQUEST: 0xA900,
}
_N_FAILURES = {
    Failure.UNAVAILABLE: 0x0213,
    Failure.UNROUTABLE: 0x0213,
    Failure.BAD_REQUEST: 0x0110,
    Failure.TIMEOUT: 0x0110,
    Failure.BAD_REPLY: 0x0110,
    Failure.INTERNAL: 0x0110,
}
# C-ECHO's own table has no processing failure; 0x0110 is the general one (PS3.7 C.4).
_ECHO_FAILURES = dict.fromkeys(Failure, 0x0110)


@dataclass(frozen=True)
class ServiceSpec:
    """What the bridge needs to know about one service."""

    service: Service
    statuses: StatusTable
    failures: Mapping[Failure, int]
    request_datasets: tuple[str, ...] = ()
    """Datasets of the request: the names of pynetdicom's ``Event`` properties, which are
    also their keys in the envelope."""
    reply_dataset: str | None = None
    """The name PS3.7 gives the response dataset, or None when the response has none."""
    status_elements: tuple[str, ...] = ()
    """Optional status elements (PS3.7 Annex C) the response may carry: DICOM keywords."""
    streamed: bool = False
    """True when the consumer answers with several replies (Pending ones, then a final)."""
    reply_fields: tuple[str, ...] = ()
    """Extra reply fields that set response command elements (keywords)."""
    stream_fields: tuple[str, ...] = ()
    """Reply fields of a streamed service that steer the bridge (``sub_operations``...)."""

    def failure_status(self, failure: Failure) -> int:
        return self.failures[failure]


def _retrieve(
    service: Service,
    statuses: StatusTable,
    failures: Mapping[Failure, int],
    stream_fields: tuple[str, ...] = (),
) -> ServiceSpec:
    """C-FIND, C-GET, C-MOVE: an Identifier in, a stream of replies out."""
    return ServiceSpec(
        service,
        statuses,
        failures,
        request_datasets=("identifier",),
        reply_dataset="Identifier",
        status_elements=("ErrorComment", "OffendingElement"),
        streamed=True,
        stream_fields=stream_fields,
    )


# The first reply of a C-GET or C-MOVE announces the sub-operations (and for C-MOVE may
# name the destination and the contexts to propose); each instance is a dataset that names
# its transfer syntax, or a Part 10 file sent as it is.
_GET_FIELDS = ("sub_operations", "transfer_syntax_uid", "part10")
_MOVE_FIELDS = (*_GET_FIELDS, "destination", "presentation_contexts")


def _n_service(
    service: Service,
    statuses: StatusTable,
    *,
    request: tuple[str, ...] = (),
    reply: str | None = None,
    elements: tuple[str, ...] = ("ErrorComment", "ErrorID"),
    reply_fields: tuple[str, ...] = (),
) -> ServiceSpec:
    return ServiceSpec(
        service,
        statuses,
        _N_FAILURES,
        request_datasets=request,
        reply_dataset=reply,
        status_elements=elements,
        reply_fields=reply_fields,
    )


# Status codes as pynetdicom's handler docs list them, one service per line.
# fmt: off
_N_COMMON = (0x0110, 0x0112, 0x0117, 0x0118, 0x0119, 0x0210, 0x0211, 0x0212, 0x0213)
_MOVE_FAILED = (0x0122, 0x0124, 0x0210, 0x0211, 0x0212, 0xA701, 0xA702, 0xA801, 0xA900,
                0xAA00, 0xAA01, 0xAA02, 0xAA03, 0xAA04)
_GET_FAILED = (0xA701, 0xA702, 0xA900, 0xAA00, 0xAA01, 0xAA02, 0xAA03, 0xAA04)
_N_SET_WARNED = (0x0001, 0xB305, 0xB600, 0xB604, 0xB605, 0xB609, 0xB60A)
_N_SET_FAILED = (*_N_COMMON, 0x0105, 0x0106, 0x0116, 0x0121, 0x0124, 0xC112, 0xC224, 0xC225,
                 0xC226, 0xC300, 0xC301, 0xC307, 0xC310, 0xC603, 0xC605, 0xC613, 0xC616)
_N_ACTION_WARNED = (0xB101, 0xB102, 0xB104, 0xB301, 0xB304, 0xB306, 0xB601, 0xB602, 0xB603,
                    0xB604, 0xB609, 0xB60A)
# 0x0110 is in _N_COMMON: missing from pynetdicom's N-ACTION table, but in PS3.7 10.1.4.1.10.
_N_ACTION_FAILED = (*_N_COMMON, 0x0114, 0x0115, 0x0123, 0x0124, 0xC101, 0xC102, 0xC103,
                    0xC104, 0xC10E, 0xC110, 0xC111, 0xC112, 0xC300, 0xC301, 0xC302, 0xC303,
                    0xC304, 0xC307, 0xC308, 0xC310, 0xC311, 0xC312, 0xC313, 0xC314, 0xC315,
                    0xC600, 0xC601, 0xC602, 0xC603, 0xC613)
_N_CREATE_FAILED = (*_N_COMMON, 0x0105, 0x0106, 0x0107, 0x0111, 0x0116, 0x0120, 0x0121,
                    0x0124, 0xA510, 0xC221, 0xC222, 0xC223, 0xC227, 0xC309, 0xC616)
# fmt: on
_UNABLE = ((0xC000, 0xCFFF),)

SPECS: dict[Service, ServiceSpec] = {
    Service.C_ECHO: ServiceSpec(
        Service.C_ECHO,
        _table(failure=(0x0122, 0x0210, 0x0211, 0x0212)),
        _ECHO_FAILURES,
        status_elements=("ErrorComment",),
    ),
    Service.C_STORE: ServiceSpec(
        Service.C_STORE,
        _table(
            warning=(0xB000, 0xB006, 0xB007),
            failure=(0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212),
            failure_ranges=((0xA700, 0xA7FF), (0xA900, 0xA9FF), *_UNABLE),
        ),
        _C_FAILURES,
        request_datasets=("dataset", "file_meta"),
        status_elements=("ErrorComment", "OffendingElement"),
    ),
    Service.C_FIND: _retrieve(
        Service.C_FIND,
        _table(
            failure=(0xA700, 0xA900), failure_ranges=_UNABLE, pending=(0xFF00, 0xFF01), cancel=True
        ),
        {**_C_FAILURES, Failure.BAD_REQUEST: 0xA900},
    ),
    Service.C_GET: _retrieve(
        Service.C_GET,
        _table(
            warning=(0xB000,),
            failure=_GET_FAILED,
            failure_ranges=_UNABLE,
            pending=(0xFF00,),
            cancel=True,
        ),
        _RETRIEVE_FAILURES,
        _GET_FIELDS,
    ),
    Service.C_MOVE: _retrieve(
        Service.C_MOVE,
        _table(failure=_MOVE_FAILED, failure_ranges=_UNABLE, pending=(0xFF00,), cancel=True),
        _RETRIEVE_FAILURES,
        _MOVE_FIELDS,
    ),
    Service.N_EVENT_REPORT: _n_service(
        Service.N_EVENT_REPORT,
        _table(failure=(*_N_COMMON, 0x0113, 0x0114, 0x0115)),
        request=("event_information",),
        reply="Event Reply",
    ),
    Service.N_GET: _n_service(
        Service.N_GET,
        _table(warning=(0x0001, 0x0107), failure=(*_N_COMMON, 0x0124, 0xC112, 0xC307)),
        reply="Attribute List",
        elements=("ErrorComment", "ErrorID", "AttributeIdentifierList"),
    ),
    Service.N_SET: _n_service(
        Service.N_SET,
        _table(warning=_N_SET_WARNED, failure=_N_SET_FAILED),
        request=("modification_list",),
        reply="Attribute List",
        elements=("ErrorComment", "ErrorID", "AttributeIdentifierList"),
    ),
    Service.N_ACTION: _n_service(
        Service.N_ACTION,
        _table(warning=_N_ACTION_WARNED, failure=_N_ACTION_FAILED),
        request=("action_information",),
        reply="Action Reply",
        elements=("ErrorComment", "ErrorID", "AttributeIdentifierList"),
    ),
    Service.N_CREATE: _n_service(
        Service.N_CREATE,
        _table(warning=(0xB300, 0xB600, 0xB605), failure=_N_CREATE_FAILED),
        request=("attribute_list",),
        reply="Attribute List",
        reply_fields=("AffectedSOPInstanceUID",),
    ),
    Service.N_DELETE: _n_service(Service.N_DELETE, _table(failure=(*_N_COMMON, 0x0124))),
}

# The services this release bridges; the Q/R ones have specs for their statuses already.
SINGLE_REPLY_SERVICES = tuple(s for s in Service if not SPECS[s].streamed)


_UNSAFE_WORD = re.compile(r"[^A-Za-z0-9_-]")


def routing_word(text: str) -> str:
    """Percent-encode every byte that is not ``[A-Za-z0-9_-]``, so a word holds no '.'."""
    return _UNSAFE_WORD.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


def routing_key(service: Service, sop_class_uid: str, calling_ae: str) -> str:
    """``<service>.<sop-class>.<calling-ae>``: always three words.

    The SOP Class UID has its dots replaced by underscores (``1_2_840_10008_1_1``); the
    calling AE title is stripped of padding and percent-encoded outside ``[A-Za-z0-9_-]``
    (``MY.AE`` -> ``MY%2EAE``). An empty value becomes ``-``.
    """
    uid_word = sop_class_uid.strip().replace(".", "_") or "-"
    ae_word = routing_word(calling_ae.strip()) or "-"
    return f"{service.value}.{routing_word(uid_word)}.{ae_word}"


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: ``*`` is one word, ``#`` zero or more."""
    return topic_words_match(pattern.split("."), key.split("."))


def topic_words_match(pattern: Sequence[str], words: Sequence[str | None]) -> bool:
    """``None`` in ``words`` stands for any word (matches literals and ``*``)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(topic_words_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    word = words[0]
    if head == "*" or word is None or head == word:
        return topic_words_match(rest, words[1:])
    return False
