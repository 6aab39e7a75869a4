"""Which SOP classes the SCP accepts, from names an operator can type.

A selection is a list of group names, SOP class keywords (pynetdicom's names such as
``CTImageStorage``) and UIDs. Groups:

``verification``  Verification (C-ECHO)
``storage``       every Storage and Non-Patient Object Storage SOP class (C-STORE)
``n-services``    every SOP class whose service uses DIMSE-N and that pynetdicom knows:
                  MPPS, Storage Commitment, UPS, Print Management, Instance Availability,
                  Media Creation, Application Event Logging, Display System, RT Machine
                  Verification, Inventory Creation
``query-retrieve`` every C-FIND, C-GET and C-MOVE information model pynetdicom knows:
                  Patient Root, Study Root, Patient/Study Only, Composite Instance Root,
                  Modality Worklist, UPS Query, Relevant Patient Information, Hanging
                  Protocol, Color Palette, Implant Template, Protocol Approval, Inventory...
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from pynetdicom import presentation, service_class_n
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.service_class import (
    QueryRetrieveServiceClass,
    RelevantPatientInformationQueryServiceClass,
    ServiceClass,
    StorageServiceClass,
    VerificationServiceClass,
)
from pynetdicom.service_class_n import UnifiedProcedureStepServiceClass
from pynetdicom.sop_class import uid_to_service_class

from bridge.errors import ConfigError
from bridge.protocol.model import Service
from bridge.protocol.values import is_uid

VERIFICATION = "1.2.840.10008.1.1"

DEFAULT_SELECTION = ("verification", "storage", "n-services", "query-retrieve")

# Every service class pynetdicom implements with DIMSE-N: MPPS, Print, Storage Commitment...
N_SERVICE_CLASSES = tuple(
    value
    for value in vars(service_class_n).values()
    if isinstance(value, type) and issubclass(value, ServiceClass) and value is not ServiceClass
)


@functools.cache
def _known_uids() -> list[str]:
    return sorted(
        {
            str(value)
            for name in dir(pynetdicom_sop_class)
            if isinstance(
                value := getattr(pynetdicom_sop_class, name), pynetdicom_sop_class.SOPClass
            )
        }
    )


def _storage() -> list[str]:
    contexts = [
        *presentation.AllStoragePresentationContexts,
        *presentation.NonPatientObjectPresentationContexts,
    ]
    return [str(cx.abstract_syntax) for cx in contexts]


def _n_services() -> list[str]:
    # UPS Query is C-FIND only: it belongs to the query-retrieve group.
    return [
        uid
        for uid in _known_uids()
        if issubclass(uid_to_service_class(uid), N_SERVICE_CLASSES) and uid != UPS_QUERY
    ]


UPS_QUERY = "1.2.840.10008.5.1.4.34.6.5"


@functools.cache
def _query_retrieve() -> list[str]:
    query_classes = (QueryRetrieveServiceClass, RelevantPatientInformationQueryServiceClass)
    return [
        uid
        for uid in _known_uids()
        if issubclass(uid_to_service_class(uid), query_classes) or uid == UPS_QUERY
    ]


GROUPS: dict[str, Callable[[], list[str]]] = {
    "verification": lambda: [VERIFICATION],
    "storage": _storage,
    "n-services": _n_services,
    "query-retrieve": _query_retrieve,
}


def resolve(selection: Iterable[str]) -> list[str]:
    """The SOP class UIDs a selection names, in first-mention order, without repeats.

    Raises :class:`~bridge.errors.ConfigError` for a name that is no group, no known
    keyword and no well-formed UID.
    """
    uids: dict[str, None] = {}
    for raw in selection:
        item = raw.strip()
        if not item:
            continue
        group = GROUPS.get(item.lower())
        if group is not None:
            uids.update(dict.fromkeys(group()))
            continue
        value = getattr(pynetdicom_sop_class, item, None)
        if isinstance(value, pynetdicom_sop_class.SOPClass):
            uids[str(value)] = None
        elif is_uid(item) and "." in item:  # a bare number is no SOP class UID
            uids[item] = None
        else:
            raise ConfigError(
                f"unknown SOP class {item!r}: use a group ({', '.join(GROUPS)}), "
                "a keyword such as CTImageStorage, or a UID"
            )
    if not uids:
        raise ConfigError("no SOP class selected")
    return list(uids)


def is_storage(uid: str) -> bool:
    return issubclass(uid_to_service_class(uid), StorageServiceClass)


def is_verification(uid: str) -> bool:
    return uid_to_service_class(uid) is VerificationServiceClass


_MODEL_SUFFIX = re.compile(
    r"(QueryRetrieveInformationModel|InformationModel|Information|Retrieve)?(Find|Move|Get)$"
    r"|Query$"
)
_WORD = re.compile(r"(?<!^)(?=[A-Z])")

# The Query/Retrieve Levels (0008,0052) each hierarchical model allows (PS3.4 C.6).
LEVELS = {
    "patient-root": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study-root": ("STUDY", "SERIES", "IMAGE"),
    "patient-study-only": ("PATIENT", "STUDY"),
    "composite-instance-root": ("STUDY", "SERIES", "IMAGE", "FRAME"),
}


@functools.cache
def query_model(uid: str) -> str | None:
    """The information model of a C-FIND/C-GET/C-MOVE SOP class, as a kebab-case name
    (``patient-root``, ``study-root``, ``modality-worklist``, ``unified-procedure-step``...);
    None for SOP classes that are not query or retrieve models."""
    if uid not in _query_retrieve() and not issubclass(
        uid_to_service_class(uid), UnifiedProcedureStepServiceClass
    ):
        return None
    name = next(
        (n for n in dir(pynetdicom_sop_class) if getattr(pynetdicom_sop_class, n) == uid), ""
    )
    if name.startswith("UnifiedProcedureStep"):
        return "unified-procedure-step"
    return _WORD.sub("-", _MODEL_SUFFIX.sub("", name)).lower() or None


# Services of the DIMSE-N service classes pynetdicom implements (its SCP() methods).
_ALL_N = tuple(service for service in Service if service.value.startswith("n-"))
_N_SERVICES: dict[str, tuple[Service, ...]] = {
    "ApplicationEventLoggingServiceClass": (Service.N_ACTION,),
    "DisplaySystemManagementServiceClass": (Service.N_GET,),
    "InstanceAvailabilityNotificationServiceClass": (Service.N_CREATE,),
    "MediaCreationManagementServiceClass": (Service.N_CREATE, Service.N_GET, Service.N_ACTION),
    "PrintManagementServiceClass": _ALL_N,
    "ProcedureStepServiceClass": (
        Service.N_CREATE,
        Service.N_SET,
        Service.N_GET,
        Service.N_EVENT_REPORT,
    ),
    "RTMachineVerificationServiceClass": _ALL_N,
    "StorageCommitmentServiceClass": (Service.N_EVENT_REPORT, Service.N_ACTION),
    "StorageManagementServiceClass": (Service.N_EVENT_REPORT, Service.N_ACTION),
    "UnifiedProcedureStepServiceClass": (
        Service.N_CREATE,
        Service.N_EVENT_REPORT,
        Service.N_GET,
        Service.N_SET,
        Service.N_ACTION,
    ),
}


@functools.cache
def _keyword(uid: str) -> str:
    return next(
        (n for n in dir(pynetdicom_sop_class) if getattr(pynetdicom_sop_class, n) == uid), ""
    )


def services_of(uid: str) -> tuple[Service, ...]:
    """The DIMSE services a peer may use on a presentation context of SOP class ``uid``."""
    if is_verification(uid):
        return (Service.C_ECHO,)
    if is_storage(uid):
        return (Service.C_STORE,)
    if uid in GROUPS["query-retrieve"]():
        keyword = _keyword(uid)
        for suffix, service in (("Get", Service.C_GET), ("Move", Service.C_MOVE)):
            if keyword.endswith(suffix):
                return (service,)
        return (Service.C_FIND,)
    # pynetdicom serves no request on a SOP class it has no service class for: ().
    return _N_SERVICES.get(uid_to_service_class(uid).__name__, ())


def accepted_services(uids: Iterable[str]) -> dict[Service, list[str]]:
    """Service -> the accepted SOP classes it can arrive on, in Service order."""
    found: dict[Service, list[str]] = {}
    for uid in uids:
        for service in services_of(uid):
            found.setdefault(service, []).append(uid)
    return {service: found[service] for service in Service if service in found}
