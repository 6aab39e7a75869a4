"""A small in-memory Query/Retrieve index for the example consumer.

The example consumer keeps what it receives by C-STORE in a directory (one DICOM Part 10
file per SOP Instance) and answers C-FIND, C-GET and C-MOVE from an in-memory index of
those instances::

    index = Index(Path("store"))
    index.add(request.dataset, request.file_meta)           # C-STORE
    model = query_model(request.sop_class_uid)              # C-FIND / C-GET / C-MOVE
    try:
        matches = list(index.find(request.identifier, model))   # C-FIND: one identifier each
        paths = index.retrieve(request.identifier, model)       # C-GET/C-MOVE: files to send
    except QueryError as exc:
        ...  # answer exc.status with Error Comment exc.comment

Every method is safe to call from several threads: one lock guards the index; ``find``
and ``retrieve`` work on a snapshot taken under it, and files are written beside their
final name and moved into place, so a reader never sees half a file.

What is supported (PS3.4 Annex C, baseline behaviour, no extended negotiation)
--------------------------------------------------------------------------------
Information models (C.6): Patient Root, Study Root and Patient/Study Only (FIND, GET,
MOVE); Composite Instance Root (GET, MOVE: STUDY, SERIES, IMAGE; not FRAME); Modality
Worklist (FIND; this index holds no worklist items, so every query has no match).

Hierarchical search (C.4.1.3.1.1) only: Query/Retrieve Level (0008,0052) is required and
must be a level of the model. Each level above it must be given by its Unique Key with a
single value (Patient ID; Study, Series Instance UID); any other key of a level above, a
missing or non-single unique key above, or a key known to belong to a level below is a
relational or malformed query and fails with 0xA900 (relational queries are not
supported). Attributes are placed on levels by the Patient, Study and Series modules of
PS3.3 (with the Patient attributes on the STUDY level in Study Root, C.6.2.1); any other
attribute belongs to the IMAGE level. At IMAGE level every attribute of the instance can
be matched; at higher levels an attribute that this module does not place on a level is
an unsupported optional key: not matched, returned with zero length. Instances with an
empty Patient ID form one patient at the PATIENT level, but Patient Root cannot reach
below it (a unique key above the level needs a value); Study Root can. A key value that
is not valid for its VR (a UID, date, time or number) fails with 0xA900.

Attribute matching (C.2.2.2):
- Single Value Matching (C.2.2.2.1): exact and case-sensitive, except PN: C.2.2.2.1 lets
  an SCP match PN "case-sensitive, or insensitive to some or all aspects of case"; this
  index matches PN case-insensitively (str.casefold), ignores trailing empty components
  and, for a key without "=", matches any one component group (alphabetic, ideographic,
  phonetic). Leading/trailing padding that PS3.5 calls insignificant is ignored. DA, TM
  and DT match by meaning, as a range with both ends equal (C.2.2.2.1 Note). IS, DS and
  the binary number VRs compare as numbers.
- List of UID Matching (C.2.2.2.2): a multi-valued UI key matches any of its UIDs.
- Universal Matching (C.2.2.2.3): a zero-length key matches everything, and so does a
  wild card key of only "*" (C.2.2.2.4 Note); an entity whose value is empty matches no
  other key value.
- Wild Card Matching (C.2.2.2.4): "*" and "?" on characters (not bytes) for AE, CS, LO,
  LT, PN, SH, ST, UC, UR and UT only (C.2.2.2.4 lists them); in AS they are plain
  characters, and a UID, date or time holding them is invalid (0xA900).
- Range Matching (C.2.2.2.5): DA, TM, DT as "a-b", "-b", "a-"; a value with less
  precision stands for its whole span ("2020" is all of that year), and an entity matches
  when its span meets the range. A DT value's UTC offset is honoured, else the Timezone
  Offset From UTC (0008,0201) of its dataset (for the key: of the identifier), else UTC.
  Combined DA/TM range matching needs extended negotiation: not supported, Study Date and
  Study Time are matched independently. A reversed range fails with 0xA900.
- Sequence Matching (C.2.2.2.6): one item of item keys, matched recursively with the
  rules above; a match needs one entity item that matches all item keys, and only the
  matching items, holding only the requested item attributes, are returned. No item or an
  empty item returns the whole sequence.
- Multiple values (C.2.2.3): an entity attribute with several values matches if any value
  matches, and all its values are returned. A key with several values (other than UI),
  whose meaning C.2.2.2.8 leaves undefined without extended negotiation, matches if any of
  them matches (e.g. Modalities in Study "CT\\MR").
- Not supported: Empty Value Matching (C.2.2.2.7, "" is a literal), Multiple Value
  Matching with AND semantics (C.2.2.2.8), fuzzy semantic matching of PN, timezone
  adjustment (C.4.1.1.3.1 note) of DA and TM, private attributes (ignored, not returned),
  bulk data VRs (OB, OD, OF, OL, OV, OW, UN: not indexed, not matched, returned empty),
  Query/Retrieve View (ignored) and relational queries and retrieves.

Responses (C.4.1.1.3.2): one identifier per matching entity with exactly the requested
keys (values of the entity; zero length where it has none), Query/Retrieve Level, and
Specific Character Set when the instance has one. Timezone Offset From UTC is returned
when requested and the instance has one. Computed on request: Number of Patient/Study/
Series Related Studies, Series, Instances, Modalities in Study, SOP Classes in Study,
Instance Availability ("ONLINE") and Available Transfer Syntax UID (how the file is
stored). Retrieve AE Title, Retrieve URL and Storage Media File-Set ID/UID are not known
to the index and come back empty: the consumer fills in Retrieve AE Title if it wants to.

Retrieve (C.4.2.1.4.1, C.4.3.1.3.1): the Unique Keys down to the level, a single value
above the level and a single value or a list of UIDs at the level (Patient ID: one
value). Other keys do not select anything and are ignored. The answer is every stored
file under the selected entities.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from enum import IntEnum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom import sop_class

from bridge.protocol.dicomjson import json_to_dataset
from bridge.protocol.values import is_loose_uid

log = logging.getLogger(__name__)

IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


class QueryModel(StrEnum):
    """A Query/Retrieve (or Worklist) information model."""

    PATIENT_ROOT = "patient-root"
    STUDY_ROOT = "study-root"
    PATIENT_STUDY_ONLY = "patient-study-only"
    MODALITY_WORKLIST = "modality-worklist"
    COMPOSITE_INSTANCE_ROOT = "composite-instance-root"


_MODEL_SOP_CLASSES = {
    QueryModel.PATIENT_ROOT: (
        "PatientRootQueryRetrieveInformationModelFind",
        "PatientRootQueryRetrieveInformationModelGet",
        "PatientRootQueryRetrieveInformationModelMove",
    ),
    QueryModel.STUDY_ROOT: (
        "StudyRootQueryRetrieveInformationModelFind",
        "StudyRootQueryRetrieveInformationModelGet",
        "StudyRootQueryRetrieveInformationModelMove",
    ),
    QueryModel.PATIENT_STUDY_ONLY: (
        "PatientStudyOnlyQueryRetrieveInformationModelFind",
        "PatientStudyOnlyQueryRetrieveInformationModelGet",
        "PatientStudyOnlyQueryRetrieveInformationModelMove",
    ),
    QueryModel.MODALITY_WORKLIST: ("ModalityWorklistInformationFind",),
    # Not CompositeInstanceRetrieveWithoutBulkDataGet: its files would have to be
    # stripped of bulk data, which the index does not do.
    QueryModel.COMPOSITE_INSTANCE_ROOT: (
        "CompositeInstanceRootRetrieveGet",
        "CompositeInstanceRootRetrieveMove",
    ),
}
_MODELS = {
    str(getattr(sop_class, name)): model
    for model, names in _MODEL_SOP_CLASSES.items()
    for name in names
}


def query_model(sop_class_uid: str) -> QueryModel | None:
    """The information model of a FIND, GET or MOVE SOP Class; ``None`` for any other."""
    return _MODELS.get(str(sop_class_uid).strip(" \0"))


class QueryError(Exception):
    """A request the index cannot answer: answer ``status`` with Error Comment ``comment``.

    The comment names attributes by tag, never by value, so it holds no patient data.
    """

    status: int
    """The DIMSE status: 0xA900 (Identifier does not match SOP Class), 0xC000 (Unable to
    process) or 0x0122 (SOP Class not supported)."""
    comment: str
    """The Error Comment (0000,0902): at most 64 characters."""

    def __init__(self, status: int, comment: str) -> None:
        comment = comment[:64]  # Error Comment (0000,0902) is LO
        super().__init__(f"0x{status:04X}: {comment}")
        self.status = status
        self.comment = comment


def _invalid(comment: str) -> QueryError:
    return QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment)


class _Level(IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


_MODEL_LEVELS = {
    QueryModel.PATIENT_ROOT: (_Level.PATIENT, _Level.STUDY, _Level.SERIES, _Level.IMAGE),
    QueryModel.STUDY_ROOT: (_Level.STUDY, _Level.SERIES, _Level.IMAGE),
    QueryModel.PATIENT_STUDY_ONLY: (_Level.PATIENT, _Level.STUDY),
    QueryModel.COMPOSITE_INSTANCE_ROOT: (_Level.STUDY, _Level.SERIES, _Level.IMAGE),
}


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:  # pragma: no cover - a typo in the tables below
            raise LookupError(keyword)
        tags.add(tag)
    return frozenset(tags)


def _tag(keyword: str) -> BaseTag:
    (tag,) = _tags(keyword)
    return Tag(tag)


PATIENT_ID = _tag("PatientID")
STUDY_INSTANCE_UID = _tag("StudyInstanceUID")
SERIES_INSTANCE_UID = _tag("SeriesInstanceUID")
SOP_INSTANCE_UID = _tag("SOPInstanceUID")
QUERY_RETRIEVE_LEVEL = _tag("QueryRetrieveLevel")
SPECIFIC_CHARACTER_SET = _tag("SpecificCharacterSet")
TIMEZONE_OFFSET = _tag("TimezoneOffsetFromUTC")

_UNIQUE = {
    _Level.PATIENT: PATIENT_ID,
    _Level.STUDY: STUDY_INSTANCE_UID,
    _Level.SERIES: SERIES_INSTANCE_UID,
    _Level.IMAGE: SOP_INSTANCE_UID,
}

# Patient module, Clinical Trial Subject module, patient identification and
# demographics (PS3.3 C.7.1.1, C.7.1.3; C.6.1.1.2 Table C.6-1).
_PATIENT_TAGS = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar",
    "PatientSex",
    "PatientSexNeutered",
    "PatientComments",
    "EthnicGroup",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "QualityControlSubject",
    "StrainDescription",
    "StrainNomenclature",
    "StrainAdditionalInformation",
    "StrainCodeSequence",
    "GeneticModificationsSequence",
    "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "PatientReligiousPreference",
    "MedicalRecordLocator",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
# General Study, Patient Study, Clinical Trial Study modules (PS3.3 C.7.2; Table C.6-2).
_STUDY_TAGS = _tags(
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "OtherStudyNumbers",
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientSizeCodeSequence",
    "PatientWeight",
    "PatientBodyMassIndex",
    "MeasuredAPDimension",
    "MeasuredLateralDimension",
    "Occupation",
    "AdditionalPatientHistory",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID",
    "IssuerOfServiceEpisodeIDSequence",
    "ServiceEpisodeDescription",
    "ReasonForVisit",
    "ReasonForVisitCodeSequence",
    "PatientState",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "ConsentForClinicalTrialUseSequence",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "AnatomicRegionsInStudyCodeSequence",
)
# General Series, Clinical Trial Series, General Equipment and Frame of Reference
# modules (PS3.3 C.7.3, C.7.5, C.7.4; Table C.6-3).
_SERIES_TAGS = _tags(
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "SeriesDescriptionCodeSequence",
    "Laterality",
    "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence",
    "OperatorsName",
    "OperatorIdentificationSequence",
    "ProtocolName",
    "BodyPartExamined",
    "PatientPosition",
    "AnatomicalOrientationType",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "RequestAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence",
    "CommentsOnThePerformedProcedureStep",
    "ReferencedPerformedProcedureStepSequence",
    "RelatedSeriesSequence",
    "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialSeriesID",
    "ClinicalTrialSeriesDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "NumberOfSeriesRelatedInstances",
)
# Well-known attributes of the composite instance itself (Table C.6-4). Every attribute
# in none of the tables is on the IMAGE level too; this list only lets a query at a
# higher level tell "below the query level" from "unknown".
_IMAGE_TAGS = _tags(
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ImageType",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ImageComments",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "SliceThickness",
    "ContentLabel",
    "ContentDescription",
    "ContentCreatorName",
    "ConceptNameCodeSequence",
    "CompletionFlag",
    "VerificationFlag",
    "AvailableTransferSyntaxUID",
)
# Return keys of every level (C.4.1.1.3.2); only Instance Availability is known here.
_ANY_LEVEL_TAGS = _tags(
    "RetrieveAETitle",
    "RetrieveURL",
    "StorageMediaFileSetID",
    "StorageMediaFileSetUID",
    "InstanceAvailability",
)
_COMPUTED_TAGS = _tags(
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "InstanceAvailability",
    "AvailableTransferSyntaxUID",
)
_NOT_KEYS = _tags("SpecificCharacterSet", "QueryRetrieveLevel", "QueryRetrieveView")


def _level_of(tag: int, model: QueryModel) -> _Level | None:
    """The level of an attribute in a model; ``None`` if this module does not know it."""
    if tag in _PATIENT_TAGS:
        return _Level.PATIENT if _Level.PATIENT in _MODEL_LEVELS[model] else _Level.STUDY
    if tag in _STUDY_TAGS:
        return _Level.STUDY
    if tag in _SERIES_TAGS:
        return _Level.SERIES
    if tag in _IMAGE_TAGS:
        return _Level.IMAGE
    return None


# --- values -----------------------------------------------------------------------------

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_TEXT_VRS = _WILDCARD_VRS | {"AS"}
# PS3.5 6.2: leading and trailing spaces are insignificant for these; trailing only
# for LT, ST, UT, UC, UR.
_STRIP_BOTH_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM"})
_NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _values(elem: DataElement | None) -> list[Any]:
    if elem is None or elem.is_empty:
        return []
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _text(value: Any) -> str:
    if isinstance(value, date | time):
        original = getattr(value, "original_string", None)
        if isinstance(original, str):
            return original
        if isinstance(value, datetime):
            return value.strftime("%Y%m%d%H%M%S.%f")
        return value.strftime("%Y%m%d") if isinstance(value, date) else value.strftime("%H%M%S.%f")
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _normalized(vr: str, text: str) -> str:
    if vr == "UI":
        return text.strip(" \0")
    text = text.strip(" ") if vr in _STRIP_BOTH_VRS else text.rstrip(" ")
    if vr == "PN":
        text = _person_name(text)
    return text


def _person_name(text: str) -> str:
    groups = []
    for group in text.split("="):
        components = [component.strip(" ") for component in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).casefold()


def _person_name_candidates(name: str) -> list[str]:
    return [name, *(group for group in name.split("=") if group)] if "=" in name else [name]


def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


# DA, TM, DT as spans of microseconds (DA in days) --------------------------------------

_SECOND = 1_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_DA_RE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TM_RE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?")
_OFFSET_RE = re.compile(r"([+-])(\d{2})(\d{2})")

Span = tuple[int, int]


def _offset(text: str) -> int | None:
    """A UTC offset "&HHMM" in minutes, or None if invalid."""
    match = _OFFSET_RE.fullmatch(text.strip(" "))
    if not match:
        return None
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3))
    value = hours * 60 + minutes
    if minutes > 59 or value > 14 * 60:
        return None
    return -value if sign == "-" else value


def _parse_da(text: str) -> Span | None:
    match = _DA_RE.fullmatch(text)
    if not match or ("." in text and text.count(".") != 2):
        return None
    try:
        day = date(int(match.group(1)), int(match.group(2)), int(match.group(3))).toordinal()
    except ValueError:
        return None
    return day, day


def _parse_tm(text: str) -> Span | None:
    match = _TM_RE.fullmatch(text)
    if not match:
        return None
    hour, minute, second, fraction = match.groups()
    values = [int(hour), int(minute or 0), int(second or 0)]
    if values[0] > 23 or values[1] > 59 or values[2] > 60:
        return None
    start = values[0] * _HOUR + values[1] * _MINUTE + min(values[2], 59) * _SECOND
    if fraction is not None:
        start += int(fraction.ljust(6, "0"))
        span = 10 ** (6 - len(fraction))
    else:
        span = _SECOND if second else _MINUTE if minute else _HOUR
    return start, start + span - 1


def _parse_dt(text: str, default_offset: int) -> Span | None:
    match = _DT_RE.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset_text = match.groups()
    if fraction is not None and second is None:
        return None
    offset = default_offset if offset_text is None else _offset(offset_text)
    if offset is None:
        return None
    y, mo, d = int(year), int(month or 1), int(day or 1)
    h, mi, s = int(hour or 0), int(minute or 0), int(second or 0)
    if h > 23 or mi > 59 or s > 60:
        return None
    try:
        first = date(y, mo, d).toordinal()
    except ValueError:
        return None
    start = first * _DAY + h * _HOUR + mi * _MINUTE + min(s, 59) * _SECOND
    if fraction is not None:
        start += int(fraction.ljust(6, "0"))
        span = 10 ** (6 - len(fraction))
    elif second is not None:
        span = _SECOND
    elif minute is not None:
        span = _MINUTE
    elif hour is not None:
        span = _HOUR
    elif day is not None:
        span = _DAY
    elif month is not None:
        span = calendar.monthrange(y, mo)[1] * _DAY
    else:
        span = (366 if calendar.isleap(y) else 365) * _DAY
    start -= offset * _MINUTE
    return start, start + span - 1


def _parse_point(vr: str, text: str, default_offset: int) -> Span | None:
    if vr == "DA":
        return _parse_da(text)
    if vr == "TM":
        return _parse_tm(text)
    return _parse_dt(text, default_offset)


def _parse_range(vr: str, text: str, default_offset: int) -> tuple[int | None, int | None]:
    """A DA/TM/DT key value as (first, last) microsecond (day for DA); None: open end."""
    if "-" in text and vr == "DT" and text[0] != "-" and text[-1] != "-":
        whole = _parse_dt(text, default_offset)  # a negative UTC offset, not a range
        if whole is not None:
            return whole
    if "-" not in text:
        point = _parse_point(vr, text, default_offset)
        if point is None:
            raise ValueError(text)
        return point
    # "a-b", "-b", "a-"; for DT try each "-" since an offset may contain one.
    for index, char in enumerate(text):
        if char != "-":
            continue
        low, high = text[:index].strip(" "), text[index + 1 :].strip(" ")
        if not low and not high:
            break
        first = _parse_point(vr, low, default_offset) if low else None
        last = _parse_point(vr, high, default_offset) if high else None
        if (low and first is None) or (high and last is None):
            continue
        if first is not None and last is not None and first[0] > last[0]:
            raise ValueError(text)  # C.2.2.2.5: <date1> shall be <= <date2>
        return (first[0] if first else None), (last[1] if last else None)
    raise ValueError(text)


# --- keys -------------------------------------------------------------------------------

Test = Callable[[DataElement | None, int], bool]
"""A compiled key: does an entity's element (None: absent) match, given the entity's
default UTC offset in minutes?"""


@dataclass(frozen=True)
class _Key:
    tag: BaseTag
    vr: str
    test: Test | None
    """None: universal matching (or an unsupported key): every entity matches."""
    items: tuple[_Key, ...] | None = None
    """For a sequence key with one item: the item keys (returned items hold only them)."""
    supported: bool = True
    """False: the index has no value for this key here; it comes back empty."""


def _compile(elem: DataElement, query_offset: int) -> _Key:
    """Compile one key of an identifier (C.2.2.2) into a test on entity elements."""
    tag, vr = Tag(elem.tag), str(elem.VR)
    if vr == "SQ":
        return _compile_sequence(elem, query_offset)
    if vr in _BULK_VRS:
        return _Key(tag, vr, None, supported=False)
    raw = [v for v in _values(elem) if v is not None]
    if not raw:
        return _Key(tag, vr, None)  # C.2.2.2.3 universal matching
    if vr in _NUMBER_VRS:
        try:
            numbers = {Decimal(_text(v).strip(" ")) for v in raw}
        except InvalidOperation:
            raise _invalid(f"invalid value in {tag}") from None
        return _Key(tag, vr, _number_test(numbers))
    if vr == "AT":
        return _Key(tag, vr, _set_test({int(v) for v in raw}, int))
    texts = [_normalized(vr, _text(v)) for v in raw]
    if vr == "UI":
        if not all(is_loose_uid(uid) for uid in texts):
            raise _invalid(f"invalid UID in {tag}")
        return _Key(tag, vr, _set_test(set(texts), lambda v: _normalized("UI", _text(v))))
    if vr in ("DA", "TM", "DT"):
        try:
            ranges = [_parse_range(vr, text, query_offset) for text in texts if text]
        except ValueError:
            raise _invalid(f"invalid date/time value in {tag}") from None
        return _Key(tag, vr, _range_test(vr, ranges) if ranges else None)
    return _Key(tag, vr, _text_test(vr, texts))


def _compile_sequence(elem: DataElement, query_offset: int) -> _Key:
    tag = Tag(elem.tag)
    items = list(elem.value or [])
    if not items:
        return _Key(tag, "SQ", None)
    if len(items) > 1:
        raise _invalid(f"sequence key {tag} must have one item")
    keys = []
    for raw in items[0].elements():
        item_tag = Tag(raw.tag)
        if item_tag.is_private or item_tag.element == 0 or item_tag in _NOT_KEYS:
            continue
        keys.append(_compile(_element(items[0], item_tag), query_offset))
    if not keys:
        return _Key(tag, "SQ", None)  # an empty item: the whole sequence, C.2.2.2.6
    item_keys = tuple(keys)
    if all(key.test is None for key in item_keys):
        return _Key(tag, "SQ", None, item_keys)

    def test(entity: DataElement | None, offset: int) -> bool:
        if entity is None or entity.VR != "SQ":
            return False
        return any(_item_matches(item_keys, item, offset) for item in entity.value or [])

    return _Key(tag, "SQ", test, item_keys)


def _item_matches(keys: tuple[_Key, ...], item: Dataset, offset: int) -> bool:
    return all(key.test is None or key.test(_get(item, key.tag), offset) for key in keys)


def _number_test(numbers: set[Decimal]) -> Test:
    def test(entity: DataElement | None, offset: int) -> bool:
        for value in _values(entity):
            try:
                if Decimal(_text(value).strip(" ")) in numbers:
                    return True
            except InvalidOperation:
                continue
        return False

    return test


def _set_test(wanted: set[Any], convert: Callable[[Any], Any]) -> Test:
    def test(entity: DataElement | None, offset: int) -> bool:
        return any(convert(value) in wanted for value in _values(entity))

    return test


def _range_test(vr: str, ranges: list[tuple[int | None, int | None]]) -> Test:
    def test(entity: DataElement | None, offset: int) -> bool:
        for value in _values(entity):
            span = _parse_point(vr, _normalized(vr, _text(value)), offset)
            if span is None:
                continue
            for first, last in ranges:
                if (first is None or span[1] >= first) and (last is None or span[0] <= last):
                    return True
        return False

    return test


def _text_test(vr: str, texts: list[str]) -> Test | None:
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for text in texts:
        if vr in _WILDCARD_VRS and ("*" in text or "?" in text):
            if text.strip("*") == "":
                return None  # "*" is universal matching (C.2.2.2.4 Note 1)
            patterns.append(_wildcard(text))
        elif text:
            exact.add(text)
    if not exact and not patterns:
        return None

    def test(entity: DataElement | None, offset: int) -> bool:
        for value in _values(entity):
            name = _normalized(vr, _text(value))
            for candidate in _person_name_candidates(name) if vr == "PN" else [name]:
                if candidate in exact or any(p.fullmatch(candidate) for p in patterns):
                    return True
        return False

    return test


def _get(dataset: Dataset, tag: int) -> DataElement | None:
    if tag not in dataset:
        return None
    elem = dataset[tag]
    return elem if isinstance(elem, DataElement) else None


def _element(dataset: Dataset, tag: BaseTag) -> DataElement:
    """An element of a request identifier; a value pydicom cannot decode fails 0xA900."""
    try:
        elem = dataset[tag]
        _ = elem.value
    except Exception:
        raise _invalid(f"invalid value in {tag}") from None
    return elem


def _answer(key: _Key, entity: DataElement | None, offset: int) -> DataElement:
    """The response element for a key: the entity's value, trimmed for sequences."""
    if not key.supported:
        entity = None
    if key.vr == "SQ":
        if entity is None or entity.VR != "SQ":
            return DataElement(key.tag, "SQ", Sequence())
        if key.items is None:
            return deepcopy(entity)
        items = Sequence()
        for item in entity.value or []:
            if key.test is not None and not _item_matches(key.items, item, offset):
                continue
            trimmed = Dataset()
            for sub in key.items:
                trimmed.add(_answer(sub, _get(item, sub.tag), offset))
            items.append(trimmed)
        return DataElement(key.tag, "SQ", items)
    if entity is None:
        return DataElement(key.tag, key.vr, None)
    return deepcopy(entity)


# --- the index --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    """One stored instance: never changed once made (a new add makes a new record)."""

    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    transfer_syntax: str
    path: Path
    make_summary: Callable[[], Dataset] = field(repr=False)
    offset: int
    """Its Timezone Offset From UTC in minutes (0 if none)."""

    @cached_property
    def summary(self) -> Dataset:
        """The instance's attributes without bulk data and private elements: decoded when
        a query first needs them, not when the instance is stored."""
        return self.make_summary()

    def key(self, level: _Level) -> str:
        if level is _Level.PATIENT:
            return self.patient_id
        if level is _Level.STUDY:
            return self.study_uid
        if level is _Level.SERIES:
            return self.series_uid
        return self.sop_instance_uid


def _summary(dataset: Dataset) -> Dataset:
    """A copy of a dataset without bulk data and private elements, all values decoded."""
    summary = Dataset()
    for raw in dataset.elements():
        tag = Tag(raw.tag)
        if tag.group in (0x0000, 0x0002, 0x7FE0) or tag.is_private or tag.element == 0:
            continue
        if 0x6000 <= tag.group <= 0x60FF and tag.element == 0x3000:  # overlay data
            continue
        elem = dataset[tag]
        if elem.VR in _BULK_VRS:
            continue
        if elem.VR == "SQ":
            items = Sequence([_summary(item) for item in elem.value or []])
            summary.add(DataElement(tag, "SQ", items))
        else:
            summary.add(deepcopy(elem))
    return summary


def _string(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \0")


def _new_record(
    text: Callable[[str], str],
    transfer_syntax: str,
    path: Path,
    make_summary: Callable[[], Dataset],
) -> _Record:
    """A record from ``text(keyword)``, an element's value as text ("" if none). Raises
    ValueError when a UID that places the instance in the hierarchy is missing or
    invalid."""
    uids = {}
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = text(keyword)
        if not is_loose_uid(uid):
            raise ValueError(f"the dataset has no valid {keyword}")
        uids[keyword] = uid
    return _Record(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        patient_id=text("PatientID"),
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        modality=text("Modality"),
        transfer_syntax=transfer_syntax,
        path=path,
        make_summary=make_summary,
        offset=_offset(text("TimezoneOffsetFromUTC")) or 0,
    )


def _record(dataset: Dataset, transfer_syntax: str, path: Path) -> _Record:
    summary = _summary(dataset)
    return _new_record(
        lambda keyword: _string(dataset, keyword), transfer_syntax, path, lambda: summary
    )


def _json_string(document: Mapping[str, Any], keyword: str) -> str:
    """The first value of a string element of a DICOM JSON dataset ("" if none)."""
    element = document.get(f"{_tag(keyword):08X}")
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not values or not isinstance(values[0], str | int | float):
        return ""
    return str(values[0]).strip(" \0")


def _json_summary(document: Mapping[str, Any]) -> dict[str, Any]:
    """A DICOM JSON dataset without bulk data and private elements (what
    :func:`_summary` keeps of a Dataset)."""
    summary: dict[str, Any] = {}
    for key, element in document.items():
        tag = int(key, 16)
        group, number = tag >> 16, tag & 0xFFFF
        if group in (0x0000, 0x0002, 0x7FE0) or group % 2 or number == 0:
            continue
        if 0x6000 <= group <= 0x60FF and number == 0x3000:  # overlay data
            continue
        vr = element.get("vr")
        if vr in _BULK_VRS:
            continue
        if vr == "SQ" and element.get("Value"):
            items = [_json_summary(item) if isinstance(item, Mapping) else item
                     for item in element["Value"]]  # fmt: skip
            summary[key] = {**element, "Value": items}
        else:
            summary[key] = element
    return summary


def record_from_json(document: Mapping[str, Any], transfer_syntax: str, path: Path) -> _Record:
    """The index record of an instance stored at ``path``, made from its DICOM JSON
    dataset (``bridge.protocol.dicomjson``) without decoding it: the attributes a query
    returns are decoded when one first needs them. Raises ValueError when a UID that
    places the instance in the hierarchy is missing or invalid."""
    summary = _json_summary(document)
    return _new_record(
        lambda keyword: _json_string(document, keyword),
        transfer_syntax,
        path,
        lambda: _summary(json_to_dataset(summary)),
    )


@dataclass
class _Entity:
    """A matching candidate at the query level: the records under one entity."""

    members: list[_Record]
    patients: Callable[[], dict[str, list[_Record]]]
    """The snapshot's records by Patient ID, made on first use."""
    computed: dict[int, DataElement] = field(default_factory=dict)

    @property
    def representative(self) -> _Record:
        return self.members[-1]  # the latest stored instance speaks for its entity

    def element(self, tag: int) -> DataElement | None:
        if tag in _COMPUTED_TAGS:
            if tag not in self.computed:
                self.computed[tag] = self._compute(Tag(tag))
            return self.computed[tag]
        return _get(self.representative.summary, tag)

    def _compute(self, tag: BaseTag) -> DataElement:
        rep = self.representative
        members = self.members
        value: Any
        if tag in _PATIENT_COUNTS:
            patient = self.patients()[rep.patient_id]
            value = _count(patient, _PATIENT_COUNTS[tag])
        elif tag in _ENTITY_COUNTS:
            value = _count(members, _ENTITY_COUNTS[tag])
        elif tag == MODALITIES_IN_STUDY:
            value = list(dict.fromkeys(r.modality for r in members if r.modality))
        elif tag == SOP_CLASSES_IN_STUDY:
            value = list(dict.fromkeys(r.sop_class_uid for r in members))
        elif tag == INSTANCE_AVAILABILITY:
            value = "ONLINE"
        else:  # AvailableTransferSyntaxUID
            value = rep.transfer_syntax
        return DataElement(tag, dictionary_VR(tag), value)


def _count(records: list[_Record], level: _Level) -> int:
    return len({record.key(level) for record in records})


_PATIENT_COUNTS = {
    _tag("NumberOfPatientRelatedStudies"): _Level.STUDY,
    _tag("NumberOfPatientRelatedSeries"): _Level.SERIES,
    _tag("NumberOfPatientRelatedInstances"): _Level.IMAGE,
}
_ENTITY_COUNTS = {
    _tag("NumberOfStudyRelatedSeries"): _Level.SERIES,
    _tag("NumberOfStudyRelatedInstances"): _Level.IMAGE,
    _tag("NumberOfSeriesRelatedInstances"): _Level.IMAGE,
}
MODALITIES_IN_STUDY = _tag("ModalitiesInStudy")
SOP_CLASSES_IN_STUDY = _tag("SOPClassesInStudy")
INSTANCE_AVAILABILITY = _tag("InstanceAvailability")


@dataclass(frozen=True)
class _Find:
    level: _Level
    keys: tuple[_Key, ...]
    above: tuple[tuple[_Level, str], ...]
    want_offset: bool


class Index:
    """Instances kept as DICOM files in ``directory``, indexed in memory for Q/R.

    Files already in the directory (``*.dcm``) are indexed when the index is made.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        """File name -> (inode, mtime in ns) of every ``*.dcm`` file indexed or skipped."""
        self.refresh()

    def refresh(self) -> int:
        """Index the ``*.dcm`` files in the directory that are new or changed since the
        index last looked (stored by another process sharing the directory); returns
        how many. Files that are gone leave the index."""
        found: dict[str, tuple[int, int]] = {}
        with os.scandir(self._directory) as entries:
            for entry in entries:
                if entry.name.endswith(".dcm") and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        info = entry.stat()
                        found[entry.name] = (info.st_ino, info.st_mtime_ns)
        with self._lock:
            changed = sorted(n for n, key in found.items() if self._seen.get(n) != key)
            gone = [n for n in self._seen if n not in found]
            for name in gone:
                del self._seen[name]
                path = self._directory / name
                for uid in [u for u, r in self._records.items() if r.path == path]:
                    del self._records[uid]
        indexed = 0
        for name in changed:
            path = self._directory / name
            try:
                dataset = dcmread(path, stop_before_pixels=True)
                syntax = str(dataset.file_meta.get("TransferSyntaxUID", "")).strip(" \0")
                record = _record(dataset, syntax, path)
            except Exception as exc:  # a foreign or broken file: leave it alone
                log.warning("qrindex: %s is not indexed: %s", name, type(exc).__name__)
                with self._lock:
                    self._seen[name] = found[name]
                continue
            with self._lock:
                self._seen[name] = found[name]
                self._records.pop(record.sop_instance_uid, None)
                self._records[record.sop_instance_uid] = record
            indexed += 1
        return indexed

    def path_for(self, sop_instance_uid: str) -> Path:
        """Where the instance with ``sop_instance_uid`` is stored. Raises ValueError for
        an invalid UID (it names the file)."""
        if not is_loose_uid(sop_instance_uid):
            raise ValueError("the dataset has no valid SOPInstanceUID")
        return self._directory / f"{sop_instance_uid}.dcm"

    def put(self, record: _Record) -> None:
        """Index an instance whose file is in place at ``record.path``; it replaces an
        instance with the same SOP Instance UID (whose file, if elsewhere, is deleted)."""
        try:
            info = record.path.stat()
            key = (info.st_ino, info.st_mtime_ns)
        except OSError:
            key = (0, 0)
        with self._lock:
            old = self._records.pop(record.sop_instance_uid, None)
            self._records[record.sop_instance_uid] = record
            self._seen[record.path.name] = key
            if old is not None and old.path != record.path:
                old.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def add(self, dataset: Dataset, file_meta: Dataset) -> Path:
        """Store an instance as ``<SOP Instance UID>.dcm`` and index it.

        A second instance with the same SOP Instance UID replaces the first, file and
        index entry both. Raises :class:`ValueError` if the dataset lacks one of the UIDs
        that place it in the hierarchy, or ``file_meta`` its Transfer Syntax UID.
        """
        syntax = str(file_meta.get("TransferSyntaxUID", "") or "").strip(" \0")
        if not syntax:
            raise ValueError("the file meta information has no TransferSyntaxUID")
        path = self._directory / f"{_string(dataset, 'SOPInstanceUID')}.dcm"
        record = _record(dataset, syntax, path)  # validates the UIDs (and so the name)

        meta = FileMetaDataset()
        for raw in file_meta.elements():
            if raw.tag.group == 0x0002 and raw.tag.element != 0:
                meta.add(deepcopy(file_meta[raw.tag]))
        meta.MediaStorageSOPClassUID = UID(record.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(record.sop_instance_uid)
        out = Dataset()
        for raw in dataset.elements():
            if raw.tag.group not in (0x0000, 0x0002):
                out.add(dataset[raw.tag])
        out.file_meta = meta

        handle, temporary = tempfile.mkstemp(dir=self._directory, prefix=".", suffix=".part")
        os.close(handle)
        try:
            dcmwrite(temporary, out, enforce_file_format=True)
            os.replace(temporary, path)
            self.put(record)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return path

    def find(self, identifier: Dataset, model: QueryModel) -> Iterator[Dataset]:
        """The C-FIND response identifiers for a request identifier, one per match.

        The identifier is checked before this returns (raising :class:`QueryError`);
        matches are then made lazily from a snapshot of the index.
        """
        if not isinstance(identifier, Dataset):
            raise _invalid("the identifier is not a dataset")
        model = _model(model)
        if model is QueryModel.MODALITY_WORKLIST:
            return iter(())  # the example holds no scheduled procedure steps
        if model is QueryModel.COMPOSITE_INSTANCE_ROOT:
            raise QueryError(SOP_CLASS_NOT_SUPPORTED, "the model supports no C-FIND")
        plan = self._plan_find(identifier, model)
        self.refresh()
        with self._lock:
            snapshot = list(self._records.values())
        return self._matches(plan, snapshot)

    def retrieve(self, identifier: Dataset, model: QueryModel) -> list[Path]:
        """The files a C-GET or C-MOVE request identifier selects, in storage order."""
        if not isinstance(identifier, Dataset):
            raise _invalid("the identifier is not a dataset")
        model = _model(model)
        if model is QueryModel.MODALITY_WORKLIST:
            raise QueryError(SOP_CLASS_NOT_SUPPORTED, "the model supports no retrieval")
        level = _query_level(identifier, model)
        selection: list[tuple[_Level, set[str]]] = []
        for above in _MODEL_LEVELS[model]:
            values = _unique_values(identifier, above, many=above is level)
            selection.append((above, values))
            if above is level:
                break
        self.refresh()
        with self._lock:
            snapshot = list(self._records.values())
        return [
            record.path
            for record in snapshot
            if all(record.key(lv) in values for lv, values in selection)
        ]

    # --- C-FIND ---------------------------------------------------------------------

    @staticmethod
    def _plan_find(identifier: Dataset, model: QueryModel) -> _Find:
        level = _query_level(identifier, model)
        levels = _MODEL_LEVELS[model]
        offset = 0  # C.4.1.1.3.1: the identifier's times are in this offset from UTC
        if TIMEZONE_OFFSET in identifier:
            text = _text(_element(identifier, TIMEZONE_OFFSET).value or "").strip(" ")
            parsed = _offset(text) if text else 0  # empty: only asked to return it
            if parsed is None:
                raise _invalid(f"invalid value in {TIMEZONE_OFFSET}")
            offset = parsed
        keys: list[_Key] = []
        for raw in identifier.elements():
            tag = Tag(raw.tag)
            if tag.is_private or tag.element == 0 or tag.group in (0x0000, 0x0002):
                continue
            if tag in _NOT_KEYS or tag == TIMEZONE_OFFSET:
                continue
            elem = _element(identifier, tag)
            tag_level = _level_of(tag, model)
            if tag_level is not None and tag_level < level and tag != _UNIQUE[tag_level]:
                raise _invalid(f"relational queries are not supported: {tag}")
            if tag_level is not None and tag_level > level:
                raise _invalid(f"{tag} is below the query level")
            key = _compile(elem, offset)
            unknown = tag_level is None and level is not _Level.IMAGE
            if (unknown and tag not in _ANY_LEVEL_TAGS) or (
                tag in _ANY_LEVEL_TAGS and tag not in _COMPUTED_TAGS
            ):
                key = _Key(key.tag, key.vr, None, key.items, supported=False)
            keys.append(key)
        above = []
        for above_level in levels[: levels.index(level)]:
            (value,) = _unique_values(identifier, above_level, many=False)
            above.append((above_level, value))
        return _Find(level, tuple(keys), tuple(above), TIMEZONE_OFFSET in identifier)

    @staticmethod
    def _matches(plan: _Find, snapshot: list[_Record]) -> Iterator[Dataset]:
        by_patient: dict[str, list[_Record]] = {}

        def patients() -> dict[str, list[_Record]]:
            if not by_patient:
                for record in snapshot:
                    by_patient.setdefault(record.patient_id, []).append(record)
            return by_patient

        entities: dict[str, list[_Record]] = {}
        for record in snapshot:
            if all(record.key(lv) == value for lv, value in plan.above):
                entities.setdefault(record.key(plan.level), []).append(record)
        for members in entities.values():
            entity = _Entity(members, patients)
            offset = entity.representative.offset
            if all(
                key.test is None or key.test(entity.element(key.tag), offset) for key in plan.keys
            ):
                yield _response(plan, entity)


def _response(plan: _Find, entity: _Entity) -> Dataset:
    rep = entity.representative
    response = Dataset()
    charset = _get(rep.summary, SPECIFIC_CHARACTER_SET)
    if charset is not None and not charset.is_empty:
        response.add(deepcopy(charset))
    response.QueryRetrieveLevel = plan.level.name
    for key in plan.keys:
        response.add(_answer(key, entity.element(key.tag), rep.offset))
    if plan.want_offset:
        offset = _get(rep.summary, TIMEZONE_OFFSET)
        if offset is not None and not offset.is_empty:
            response.add(deepcopy(offset))
    return response


def _model(model: QueryModel | str | None) -> QueryModel:
    """The model; also from its name (``"study-root"``), as the bridge's envelope has it."""
    try:
        return QueryModel(str(model))
    except ValueError:
        raise QueryError(SOP_CLASS_NOT_SUPPORTED, "the model is not supported") from None


def _query_level(identifier: Dataset, model: QueryModel) -> _Level:
    if QUERY_RETRIEVE_LEVEL not in identifier:
        raise _invalid("Query/Retrieve Level (0008,0052) is missing")
    values = _values(_element(identifier, QUERY_RETRIEVE_LEVEL))
    text = _text(values[0]).strip(" ") if len(values) == 1 else ""
    if model is QueryModel.COMPOSITE_INSTANCE_ROOT and text == "FRAME":
        raise QueryError(UNABLE_TO_PROCESS, "frame-level retrieval is not supported")
    level = _Level.__members__.get(text)
    if level is None or level not in _MODEL_LEVELS[model]:
        raise _invalid("Query/Retrieve Level is not a level of this model")
    return level


def _unique_values(identifier: Dataset, level: _Level, *, many: bool) -> set[str]:
    """The value(s) of a level's Unique Key: one value, or for ``many`` a UID list."""
    tag = _UNIQUE[level]
    many = many and level is not _Level.PATIENT
    need = "one or more UIDs" if many else "a single value (no relational query)"
    comment = f"unique key {tag} needs {need}"
    if tag not in identifier:
        raise _invalid(comment)
    elem = _element(identifier, tag)
    values = [_normalized(str(elem.VR), _text(v)) for v in _values(elem)]
    if not values or not all(values) or (len(values) > 1 and not many):
        raise _invalid(comment)
    for value in values:
        if level is _Level.PATIENT:
            if "*" in value or "?" in value:
                raise _invalid(comment)
        elif not is_loose_uid(value):
            raise _invalid(f"invalid UID in {tag}")
    return set(values)
