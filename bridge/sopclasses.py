"""Which SOP classes the SCP accepts, from names an operator can type.

A selection is a list of group names, SOP class keywords (pynetdicom's names such as
``CTImageStorage``) and UIDs. Groups:

``verification``  Verification (C-ECHO)
``storage``       every Storage and Non-Patient Object Storage SOP class (C-STORE)
``n-services``    every SOP class whose service uses DIMSE-N and that pynetdicom knows:
                  MPPS, Storage Commitment, UPS, Print Management, Instance Availability,
                  Media Creation, Application Event Logging, Display System, RT Machine
                  Verification, Inventory Creation
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pynetdicom import presentation, service_class_n
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.service_class import ServiceClass, StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from bridge.errors import ConfigError

VERIFICATION = "1.2.840.10008.1.1"

DEFAULT_SELECTION = ("verification", "storage", "n-services")

# Every service class pynetdicom implements with DIMSE-N: MPPS, Print, Storage Commitment...
N_SERVICE_CLASSES = tuple(
    value
    for value in vars(service_class_n).values()
    if isinstance(value, type) and issubclass(value, ServiceClass) and value is not ServiceClass
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


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
    # UPS Query is C-FIND only; the Q/R services are not bridged by the N-service group.
    return [
        uid
        for uid in _known_uids()
        if issubclass(uid_to_service_class(uid), N_SERVICE_CLASSES)
        and uid != "1.2.840.10008.5.1.4.34.6.5"
    ]


GROUPS = {
    "verification": lambda: [VERIFICATION],
    "storage": _storage,
    "n-services": _n_services,
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
        elif _UID.match(item) and len(item) <= 64:
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
