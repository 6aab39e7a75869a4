"""Tests of bridge.example.qrindex: the example consumer's Query/Retrieve index (PS3.4 Annex C).

The index under test holds pydicom's own test files plus made-up instances whose
hierarchy and values are chosen to tell each matching rule apart:

    PAT1 Doe^Jane        S1 20200115 101500  CT series (3 images), SR series (1)
                         S2 20210310 083000  MR series (2 images)
    PAT2 DOE^JOHN        S3 20200601 235959.5  CT series (1 image)
    PAT3 Müller^Jürgen   S4 20220202 09 (UTF-8, Timezone Offset From UTC +0100)
                                             OT series (1 image, DT 20200115101500)
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import sop_class

from bridge.example.qrindex import Index, QueryError, QueryModel, query_model

# pydicom warns about rtplan.dcm's UIDs (a component with a leading zero) and about the
# invalid key values that some tests send on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

PR = QueryModel.PATIENT_ROOT
SR = QueryModel.STUDY_ROOT
PSO = QueryModel.PATIENT_STUDY_ONLY
MWL = QueryModel.MODALITY_WORKLIST
CIR = QueryModel.COMPOSITE_INSTANCE_ROOT

ROOT = "1.2.826.0.1.3680043.10.543"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "JPEG2000.dcm")
TEST_SR = "test-SR.dcm"  # empty Patient ID


def uid(*parts: int) -> str:
    return ".".join([ROOT, *map(str, parts)])


S1, S2, S3, S4 = uid(1, 1), uid(1, 2), uid(2, 1), uid(3, 1)
S1_CT, S1_SR, S2_MR, S3_CT, S4_OT = (
    uid(1, 1, 1),
    uid(1, 1, 2),
    uid(1, 2, 1),
    uid(2, 1, 1),
    uid(3, 1, 1),
)


def instance(
    patient: tuple[str, str],
    study: dict[str, Any],
    series: dict[str, Any],
    number: int,
    **image: Any,
) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName = patient
    for keyword, value in {**study, **series, **image}.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.{number}"
    ds.InstanceNumber = number
    return ds


def meta(syntax: UID = ExplicitVRLittleEndian) -> FileMetaDataset:
    file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = syntax
    return file_meta


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "LOCAL", meaning
    return item


def made_up() -> list[Dataset]:
    pat1, pat2 = ("PAT1", "Doe^Jane"), ("PAT2", "DOE^JOHN")
    s1 = {
        "StudyInstanceUID": S1,
        "StudyDate": "20200115",
        "StudyTime": "101500",
        "AccessionNumber": "ACC1",
        "StudyID": "S1",
        "StudyDescription": "Chest CT",
        "ReferringPhysicianName": "Who^Doctor",
        "ProcedureCodeSequence": Sequence([code("CT-CHEST", "CT chest"), code("XR", "x-ray")]),
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
    }
    s2 = {
        "StudyInstanceUID": S2,
        "StudyDate": "20210310",
        "StudyTime": "083000",
        "AccessionNumber": "ACC2",
        "StudyDescription": "Brain MR",
    }
    s3 = {
        "StudyInstanceUID": S3,
        "StudyDate": "20200601",
        "StudyTime": "235959.5",
        "AccessionNumber": "acc1",
        "StudyDescription": "Head",
    }
    s4 = {
        "StudyInstanceUID": S4,
        "StudyDate": "20220202",
        "StudyTime": "09",
        "SpecificCharacterSet": "ISO_IR 192",
        "TimezoneOffsetFromUTC": "+0100",
        "ProcedureCodeSequence": Sequence([code("XR-THX", "Röntgen Thorax")]),
    }
    ct1 = {"SeriesInstanceUID": S1_CT, "Modality": "CT", "SeriesNumber": 1, "SOPClassUID": CT_CLASS}
    sr1 = {"SeriesInstanceUID": S1_SR, "Modality": "SR", "SeriesNumber": 2, "SOPClassUID": SR_CLASS}
    mr2 = {"SeriesInstanceUID": S2_MR, "Modality": "MR", "SeriesNumber": 1, "SOPClassUID": MR_CLASS}
    ct3 = {"SeriesInstanceUID": S3_CT, "Modality": "CT", "SeriesNumber": 7, "SOPClassUID": CT_CLASS}
    ot4 = {"SeriesInstanceUID": S4_OT, "Modality": "OT", "SeriesNumber": 1, "SOPClassUID": SC_CLASS}
    axial = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return [
        *(instance(pat1, s1, ct1, n, ImageType=axial) for n in (1, 2, 3)),
        instance(pat1, s1, sr1, 1),
        *(instance(pat1, s2, mr2, n) for n in (1, 2)),
        instance(pat2, s3, ct3, 1, ImageComments=""),
        instance(("PAT3", "Müller^Jürgen"), s4, ot4, 1, AcquisitionDateTime="20200115101500"),
    ]


def read(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return dcmread(path)


def fill(index: Index) -> None:
    for name in (*TEST_FILES, TEST_SR):
        ds = read(name)
        index.add(ds, ds.file_meta)
    for ds in made_up():
        index.add(ds, meta())


ALL_INSTANCES = len(TEST_FILES) + 1 + 8


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """A shared, read-only index: tests that add make their own."""
    made = Index(tmp_path_factory.mktemp("store"))
    fill(made)
    return made


def identifier(level: str | None, **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(index: Index, model: QueryModel, level: str | None, **keys: Any) -> list[Dataset]:
    return list(index.find(identifier(level, **keys), model))


def values(responses: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(r.get(keyword, "")) for r in responses)


def fails(status: int, call: Any, *args: Any) -> QueryError:
    with pytest.raises(QueryError) as caught:
        list(call(*args))  # find checks before it returns, retrieve returns a list
    assert caught.value.status == status
    assert 0 < len(caught.value.comment) <= 64
    return caught.value


# --- SOP classes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("PatientRootQueryRetrieveInformationModelFind", PR),
        ("PatientRootQueryRetrieveInformationModelGet", PR),
        ("PatientRootQueryRetrieveInformationModelMove", PR),
        ("StudyRootQueryRetrieveInformationModelFind", SR),
        ("StudyRootQueryRetrieveInformationModelGet", SR),
        ("StudyRootQueryRetrieveInformationModelMove", SR),
        ("PatientStudyOnlyQueryRetrieveInformationModelFind", PSO),
        ("PatientStudyOnlyQueryRetrieveInformationModelGet", PSO),
        ("PatientStudyOnlyQueryRetrieveInformationModelMove", PSO),
        ("ModalityWorklistInformationFind", MWL),
        ("CompositeInstanceRootRetrieveGet", CIR),
        ("CompositeInstanceRootRetrieveMove", CIR),
        ("CompositeInstanceRetrieveWithoutBulkDataGet", None),
        ("CTImageStorage", None),
        ("Verification", None),
        ("HangingProtocolInformationModelFind", None),
    ],
)
def test_query_model_of_each_sop_class(name: str, model: QueryModel | None) -> None:
    assert query_model(str(getattr(sop_class, name))) is model


def test_query_model_of_junk() -> None:
    assert query_model("") is None
    assert query_model("1.2.3") is None


# --- storing ----------------------------------------------------------------------------


def test_add_stores_part10_files_and_indexes_them(index: Index) -> None:
    assert len(index) == ALL_INSTANCES
    original = read("CT_small.dcm")
    path = index.retrieve(identifier("IMAGE", **hierarchy_of(original)), SR)
    assert len(path) == 1
    assert path[0].name == f"{original.SOPInstanceUID}.dcm"
    stored = dcmread(path[0])
    assert stored.preamble is not None
    assert stored.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert stored.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert stored.PixelData == original.PixelData
    assert stored.PatientName == original.PatientName


def hierarchy_of(ds: Dataset) -> dict[str, str]:
    return {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
    }


def test_add_overwrites_the_same_sop_instance(tmp_path: Path) -> None:
    store = Index(tmp_path)
    explicit, implicit = read("MR_small.dcm"), read("MR_small_implicit.dcm")
    assert explicit.SOPInstanceUID == implicit.SOPInstanceUID
    first = store.add(explicit, explicit.file_meta)
    second = store.add(implicit, implicit.file_meta)
    assert first == second
    assert len(store) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left
    (only,) = find(store, SR, "IMAGE", AvailableTransferSyntaxUID="", **hierarchy_of(explicit))
    assert only.AvailableTransferSyntaxUID == ImplicitVRLittleEndian
    assert dcmread(first).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    moved = read("MR_small.dcm")  # the same instance, now filed under another study
    moved.StudyInstanceUID = uid(9, 9)
    store.add(moved, moved.file_meta)
    assert len(store) == 1
    assert find(store, SR, "STUDY", StudyInstanceUID=explicit.StudyInstanceUID) == []
    assert len(find(store, SR, "STUDY", StudyInstanceUID=uid(9, 9))) == 1


def test_add_does_not_change_the_callers_datasets(tmp_path: Path) -> None:
    ds, file_meta = made_up()[0], meta()
    before = (list(ds.keys()), list(file_meta.keys()), hasattr(ds, "file_meta"))
    Index(tmp_path).add(ds, file_meta)
    assert (list(ds.keys()), list(file_meta.keys()), hasattr(ds, "file_meta")) == before


@pytest.mark.parametrize("bad", [None, "", "../../etc/passwd", "1.2.3/4", "1.2.3.x"])
def test_add_refuses_an_instance_without_a_usable_sop_instance_uid(
    tmp_path: Path, bad: str | None
) -> None:
    ds = made_up()[0]
    if bad is None:
        del ds.SOPInstanceUID
    else:
        ds.SOPInstanceUID = bad
    store = Index(tmp_path / "store")
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        store.add(ds, meta())
    assert len(store) == 0
    assert list((tmp_path / "store").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_add_refuses_an_instance_outside_the_hierarchy_or_without_transfer_syntax(
    tmp_path: Path,
) -> None:
    store = Index(tmp_path)
    ds = made_up()[0]
    del ds.SeriesInstanceUID
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        store.add(ds, meta())
    with pytest.raises(ValueError, match="TransferSyntaxUID"):
        store.add(made_up()[0], FileMetaDataset())
    assert len(store) == 0


def test_an_index_reads_the_files_already_in_its_directory(tmp_path: Path) -> None:
    first = Index(tmp_path)
    fill(first)
    (tmp_path / "junk.dcm").write_bytes(b"not DICOM")
    again = Index(tmp_path)
    assert len(again) == len(first) == ALL_INSTANCES
    query = identifier(
        "STUDY",
        StudyInstanceUID="",
        NumberOfStudyRelatedInstances="",
        PatientName="",
        ProcedureCodeSequence=Sequence(),
    )
    assert sorted(str(r.to_json_dict()) for r in again.find(query, SR)) == sorted(
        str(r.to_json_dict()) for r in first.find(query, SR)
    )
    # Values read back from the files are decoded with their character set, nested ones too.
    (s4,) = find(again, SR, "STUDY", StudyInstanceUID=S4, PatientName="", **code_key("X*"))
    assert str(s4.PatientName) == "Müller^Jürgen"
    assert s4.ProcedureCodeSequence[0].CodeMeaning == "Röntgen Thorax"


def code_key(value: str) -> dict[str, Sequence]:
    item = Dataset()
    item.CodeValue, item.CodeMeaning = value, ""
    return {"ProcedureCodeSequence": Sequence([item])}


# --- levels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "level", "keys", "count"),
    [
        (PR, "PATIENT", {"PatientID": ""}, 3 + 5 + 1),  # made up, files, the empty ID
        (PR, "STUDY", {"PatientID": "PAT1", "StudyInstanceUID": ""}, 2),
        (PR, "SERIES", {"PatientID": "PAT1", "StudyInstanceUID": S1, "SeriesInstanceUID": ""}, 2),
        (
            PR,
            "IMAGE",
            {
                "PatientID": "PAT1",
                "StudyInstanceUID": S1,
                "SeriesInstanceUID": S1_CT,
                "SOPInstanceUID": "",
            },
            3,
        ),
        (SR, "STUDY", {"StudyInstanceUID": ""}, 4 + 6),
        (SR, "SERIES", {"StudyInstanceUID": S1, "SeriesInstanceUID": ""}, 2),
        (SR, "IMAGE", {"StudyInstanceUID": S2, "SeriesInstanceUID": S2_MR}, 2),
        (PSO, "PATIENT", {"PatientName": "D*"}, 2),
        (PSO, "STUDY", {"PatientID": "PAT1", "StudyDate": ""}, 2),
    ],
)
def test_each_level_of_each_model(
    index: Index, model: QueryModel, level: str, keys: dict[str, Any], count: int
) -> None:
    responses = find(index, model, level, **keys)
    assert len(responses) == count
    assert {r.QueryRetrieveLevel for r in responses} == {level}


def test_patient_level_counts_an_empty_patient_id_as_one_patient(index: Index) -> None:
    ids = values(find(index, PR, "PATIENT", PatientID=""), "PatientID")
    assert ids.count("") == 1
    assert {"PAT1", "PAT2", "PAT3", "1CT1", "4MR1", "id00001", "id11111", "8NM1"} <= set(ids)


def test_modality_worklist_has_no_items(index: Index) -> None:
    query = identifier(None, PatientName="", ScheduledProcedureStepSequence=Sequence())
    assert list(index.find(query, MWL)) == []
    fails(0xA900, index.find, "not a dataset", MWL)


def test_a_model_may_be_given_by_name(index: Index) -> None:
    query = identifier("STUDY", StudyInstanceUID=S1)
    assert len(list(index.find(query, "study-root"))) == 1  # type: ignore[arg-type]
    assert len(index.retrieve(query, "composite-instance-root")) == 4  # type: ignore[arg-type]
    for name in ("hanging-protocol", None):
        fails(0x0122, index.find, query, name)
        fails(0x0122, index.retrieve, query, name)


def test_composite_instance_root_has_no_find(index: Index) -> None:
    fails(0x0122, index.find, identifier("STUDY", StudyInstanceUID=""), CIR)


@pytest.mark.parametrize(
    ("model", "level"),
    [
        (PR, None),
        (PR, ""),
        (PR, "FOO"),
        (PR, "study"),
        (PR, "FRAME"),
        (PR, ["STUDY", "SERIES"]),
        (SR, "PATIENT"),
        (PSO, "SERIES"),
        (PSO, "IMAGE"),
    ],
)
def test_invalid_query_retrieve_levels_fail_with_a900(
    index: Index, model: QueryModel, level: Any
) -> None:
    query = identifier(level, StudyInstanceUID="")
    fails(0xA900, index.find, query, model)
    fails(0xA900, index.retrieve, query, model)


@pytest.mark.parametrize("model", [PR, SR, PSO, MWL, CIR])
def test_an_identifier_that_is_no_dataset_fails_with_a900(index: Index, model: QueryModel) -> None:
    fails(0xA900, index.find, {"QueryRetrieveLevel": "STUDY"}, model)


def test_frame_level_retrieval_is_unable_to_process(index: Index) -> None:
    query = identifier("FRAME", StudyInstanceUID=S1, SeriesInstanceUID=S1_CT)
    error = fails(0xC000, index.retrieve, query, CIR)
    assert "frame" in error.comment


# --- hierarchical keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (PR, "STUDY", {"StudyInstanceUID": ""}),  # no Patient ID
        (PR, "STUDY", {"PatientID": "", "StudyInstanceUID": ""}),  # universal above
        (PR, "STUDY", {"PatientID": "PAT*", "StudyInstanceUID": ""}),  # wild card above
        (PR, "STUDY", {"PatientID": ["PAT1", "PAT2"]}),  # more than one value above
        (PR, "STUDY", {"PatientID": "PAT1", "PatientName": ""}),  # non-unique key above
        (PR, "SERIES", {"PatientID": "PAT1", "SeriesInstanceUID": ""}),  # no Study UID
        (PR, "SERIES", {"PatientID": "PAT1", "StudyInstanceUID": [S1, S2]}),  # UID list above
        (SR, "SERIES", {"StudyInstanceUID": S1, "PatientID": "PAT1"}),  # patient key above
        (SR, "SERIES", {"StudyInstanceUID": S1, "StudyDate": ""}),  # study key above
        (SR, "IMAGE", {"StudyInstanceUID": S1, "SOPInstanceUID": ""}),  # no Series UID
        (SR, "STUDY", {"Modality": "CT"}),  # series key below the level
        (SR, "STUDY", {"SOPInstanceUID": ""}),  # image key below the level
        (SR, "SERIES", {"StudyInstanceUID": S1, "InstanceNumber": ""}),
        (PSO, "STUDY", {"PatientID": "PAT1", "SeriesInstanceUID": ""}),
        (PR, "PATIENT", {"StudyDate": ""}),
        (PR, "PATIENT", {"NumberOfStudyRelatedInstances": ""}),
    ],
)
def test_relational_and_misplaced_keys_fail_with_a900(
    index: Index, model: QueryModel, level: str, keys: dict[str, Any]
) -> None:
    error = fails(0xA900, index.find, identifier(level, **keys), model)
    assert "PAT" not in error.comment  # tags, never values


def test_unique_keys_above_the_level_must_match(index: Index) -> None:
    assert len(find(index, PR, "STUDY", PatientID="PAT1", StudyInstanceUID=S1)) == 1
    assert find(index, PR, "STUDY", PatientID="PAT2", StudyInstanceUID=S1) == []
    assert find(index, PR, "SERIES", PatientID="PAT1", StudyInstanceUID=S3) == []
    assert find(index, SR, "IMAGE", StudyInstanceUID=S2, SeriesInstanceUID=S1_CT) == []
    assert find(index, PR, "STUDY", PatientID="pat1") == []  # LO: case-sensitive
    assert len(find(index, PR, "STUDY", PatientID=" PAT1 ")) == 2  # LO padding


def test_study_root_places_patient_keys_on_the_study_level(index: Index) -> None:
    responses = find(index, SR, "STUDY", PatientID="PAT1", PatientName="", StudyDate="")
    assert values(responses, "StudyDate") == ["20200115", "20210310"]
    assert values(responses, "PatientName") == ["Doe^Jane", "Doe^Jane"]


# --- matching ---------------------------------------------------------------------------


def studies(index: Index, **keys: Any) -> list[str]:
    """The Study Instance UIDs that a Study Root STUDY query matches."""
    return values(find(index, SR, "STUDY", StudyInstanceUID="", **keys), "StudyInstanceUID")


def made_up_studies(index: Index, **keys: Any) -> list[str]:
    return [s for s in studies(index, **keys) if s.startswith(ROOT)]


def test_single_value_matching_is_exact_and_case_sensitive(index: Index) -> None:
    assert made_up_studies(index, AccessionNumber="ACC1") == [S1]
    assert made_up_studies(index, AccessionNumber="acc1") == [S3]
    assert made_up_studies(index, AccessionNumber="ACC") == []
    assert made_up_studies(index, StudyDescription="chest ct") == []
    assert made_up_studies(index, StudyDescription="Chest CT ") == [S1]  # LO padding
    assert made_up_studies(index, ModalitiesInStudy="ct") == []  # CS is case-sensitive


def test_person_names_match_case_insensitively_as_c_2_2_2_1_allows(index: Index) -> None:
    assert made_up_studies(index, PatientName="Doe^Jane") == [S1, S2]
    assert made_up_studies(index, PatientName="DOE^JANE") == [S1, S2]
    assert made_up_studies(index, PatientName="Doe^Jane^^^") == [S1, S2]  # empty components
    assert made_up_studies(index, PatientName="Doe") == []  # not a prefix match
    assert made_up_studies(index, PatientName="müller^JÜRGEN") == [S4]
    assert made_up_studies(index, ReferringPhysicianName="who^doctor") == [S1]


def test_universal_matching_returns_the_value_of_every_entity(index: Index) -> None:
    responses = find(index, SR, "STUDY", StudyInstanceUID="", AccessionNumber="")
    assert len(responses) == 10
    assert {"ACC1", "ACC2", "acc1"} <= set(values(responses, "AccessionNumber"))


def test_wild_card_matching(index: Index) -> None:
    assert made_up_studies(index, PatientName="doe*") == [S1, S2, S3]
    assert made_up_studies(index, PatientName="D?E^J*") == [S1, S2, S3]
    assert made_up_studies(index, PatientName="*^John") == [S3]
    assert made_up_studies(index, StudyDescription="*CT") == [S1]
    assert made_up_studies(index, StudyDescription="c*") == []  # LO is case-sensitive
    assert made_up_studies(index, AccessionNumber="ACC?") == [S1, S2]
    assert made_up_studies(index, PatientName="M?ller*") == [S4]  # characters, not bytes
    assert len(studies(index, StudyDescription="*")) == 10  # "*" is universal matching
    assert len(studies(index, StudyDescription="?*")) < 10  # an empty value needs "*"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyInstanceUID", f"{ROOT}.*"), ("StudyDate", "2020*"), ("StudyTime", "10*")],
)
def test_no_wild_cards_in_uids_dates_and_times(index: Index, keyword: str, value: str) -> None:
    fails(0xA900, index.find, identifier("STUDY", **{keyword: value}), SR)


def test_list_of_uid_matching(index: Index) -> None:
    listed = find(index, SR, "STUDY", StudyInstanceUID=[S1, S3, uid(7)])
    assert values(listed, "StudyInstanceUID") == [S1, S3]
    images = find(
        index,
        SR,
        "IMAGE",
        StudyInstanceUID=S1,
        SeriesInstanceUID=S1_CT,
        SOPInstanceUID=[f"{S1_CT}.1", f"{S1_CT}.3"],
    )
    assert values(images, "SOPInstanceUID") == [f"{S1_CT}.1", f"{S1_CT}.3"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("20200101-20201231", [S1, S3]),
        ("20200115-20200115", [S1]),
        ("20200115", [S1]),
        ("-20200131", [S1]),
        ("20210101-", [S2, S4]),
        ("20200116-20200531", []),
    ],
)
def test_date_range_matching(index: Index, key: str, expected: list[str]) -> None:
    assert made_up_studies(index, StudyDate=key) == expected


def test_date_range_includes_older_files(index: Index) -> None:
    assert len(studies(index, StudyDate="-20041231")) == 5  # not test-SR: it has no date


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("100000-110000", [S1]),
        ("-0900", [S2, S4]),  # S4's "09" is the whole hour from 09:00
        ("0900-0900", [S4]),
        ("10", [S1]),  # one hour: 10:00:00 to 10:59:59.999999
        ("1015", [S1]),
        ("101500.000", [S1]),
        ("101501", []),
        ("235959.5-", [S3]),
        ("23:59:59-", [S3]),  # the ACR-NEMA form
    ],
)
def test_time_range_matching_by_meaning(index: Index, key: str, expected: list[str]) -> None:
    assert made_up_studies(index, StudyTime=key) == expected


@pytest.mark.parametrize(
    ("key", "offset", "hit"),
    [
        ("20200115091500+0000", None, True),  # 10:15 at +0100 is 09:15 UTC
        ("20200115041500-0500", None, True),  # a negative offset is no range
        ("20200115101500", "+0100", True),  # the identifier's Timezone Offset From UTC
        ("20200115101500", None, False),  # taken as UTC: an hour later
        ("2020", None, True),
        ("202001-202001", None, True),
        ("20200115000000-0500-20200115050000-0500", None, True),  # 05:00 to 10:00 UTC
        ("20200115102000+0100-", None, False),
        ("-20200115091459+0000", None, False),
        ("-20200115091500+0000", None, True),
    ],
)
def test_datetime_matching_honours_utc_offsets(
    index: Index, key: str, offset: str | None, hit: bool
) -> None:
    keys: dict[str, Any] = {"AcquisitionDateTime": key}
    if offset is not None:
        keys["TimezoneOffsetFromUTC"] = offset
    responses = find(index, SR, "IMAGE", StudyInstanceUID=S4, SeriesInstanceUID=S4_OT, **keys)
    assert len(responses) == int(hit)
    if hit:
        assert responses[0].AcquisitionDateTime == "20200115101500"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "20201231-20200101"),  # reversed
        ("StudyDate", "20201301"),
        ("StudyDate", "-"),
        ("StudyDate", "2020-01-01"),
        ("StudyTime", "2500"),
        ("StudyTime", "1200-1100"),
        ("TimezoneOffsetFromUTC", "0100"),
    ],
)
def test_invalid_range_or_value_fails_with_a900(index: Index, keyword: str, value: str) -> None:
    fails(0xA900, index.find, identifier("STUDY", **{keyword: value}), SR)


def test_numbers_match_by_value(index: Index) -> None:
    series = find(index, SR, "SERIES", StudyInstanceUID=S1, SeriesNumber="2", Modality="")
    assert values(series, "Modality") == ["SR"]
    images = find(index, SR, "IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=S1_CT)
    assert len(images) == 3
    query = {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT, "InstanceNumber": "002"}
    assert len(find(index, SR, "IMAGE", **query)) == 1


def test_multi_valued_attributes_match_on_any_value_and_return_all(index: Index) -> None:
    query = {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT}
    responses = find(index, SR, "IMAGE", ImageType="AXIAL", **query)
    assert len(responses) == 3
    assert list(responses[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert find(index, SR, "IMAGE", ImageType="SECONDARY", **query) == []
    assert made_up_studies(index, ModalitiesInStudy="SR") == [S1]
    assert made_up_studies(index, ModalitiesInStudy=["MR", "OT"]) == [S2, S4]  # any of them


def test_an_empty_value_matches_only_universal_and_star(index: Index) -> None:
    query = {"StudyInstanceUID": S3, "SeriesInstanceUID": S3_CT}
    assert len(find(index, SR, "IMAGE", ImageComments="", **query)) == 1
    assert len(find(index, SR, "IMAGE", ImageComments="*", **query)) == 1
    assert find(index, SR, "IMAGE", ImageComments="?*", **query) == []
    assert find(index, SR, "IMAGE", ImageComments='""', **query) == []  # no C.2.2.2.7


def procedure_key(*items: dict[str, str]) -> Sequence:
    made = []
    for keys in items:
        item = Dataset()
        for keyword, value in keys.items():
            setattr(item, keyword, value)
        made.append(item)
    return Sequence(made)


def test_sequence_matching_returns_only_matching_items_with_requested_keys(
    index: Index,
) -> None:
    key = procedure_key({"CodeValue": "CT-CHEST", "CodingSchemeDesignator": ""})
    (response,) = find(index, SR, "STUDY", StudyInstanceUID="", ProcedureCodeSequence=key)
    assert response.StudyInstanceUID == S1
    (item,) = response.ProcedureCodeSequence
    assert (item.CodeValue, item.CodingSchemeDesignator) == ("CT-CHEST", "LOCAL")
    assert "CodeMeaning" not in item
    key = procedure_key({"CodeValue": "CT-*"})  # item keys follow the same rules
    assert made_up_studies(index, ProcedureCodeSequence=key) == [S1]
    assert made_up_studies(index, ProcedureCodeSequence=procedure_key({"CodeValue": "MR"})) == []


def test_sequence_universal_matching_returns_the_whole_sequence(index: Index) -> None:
    for key in (Sequence(), procedure_key({})):
        responses = find(index, SR, "STUDY", StudyInstanceUID="", ProcedureCodeSequence=key)
        assert len(responses) == 10
        (s1,) = [r for r in responses if r.StudyInstanceUID == S1]
        assert [item.CodeMeaning for item in s1.ProcedureCodeSequence] == ["CT chest", "x-ray"]
        others = [r for r in responses if r.StudyInstanceUID not in (S1, S4)]
        assert all(len(r.ProcedureCodeSequence) == 0 for r in others)
    key = procedure_key({"CodeValue": ""})
    (s1,) = find(index, SR, "STUDY", StudyInstanceUID=S1, ProcedureCodeSequence=key)
    assert [list(item.keys()) for item in s1.ProcedureCodeSequence] == [[0x00080100]] * 2


def test_a_sequence_key_has_at_most_one_item(index: Index) -> None:
    key = procedure_key({"CodeValue": "A"}, {"CodeValue": "B"})
    fails(0xA900, index.find, identifier("STUDY", ProcedureCodeSequence=key), SR)


# --- responses ----------------------------------------------------------------------------


def test_a_response_holds_exactly_the_requested_keys(index: Index) -> None:
    query = identifier(
        "STUDY",
        StudyInstanceUID=S2,
        PatientName="",
        StudyDescription="",
        PatientComments="",  # the instance has none: comes back empty
        RetrieveAETitle="",  # not known to the index: comes back empty
        InstanceAvailability="",
        SpecificCharacterSet="ISO_IR 100",  # never matched, not echoed
    )
    query.add_new(0x00091010, "LO", "private")  # private: ignored
    (response,) = index.find(query, SR)
    assert sorted(e.keyword for e in response) == sorted(
        [
            "QueryRetrieveLevel",
            "StudyInstanceUID",
            "PatientName",
            "StudyDescription",
            "PatientComments",
            "RetrieveAETitle",
            "InstanceAvailability",
        ]
    )
    assert response.QueryRetrieveLevel == "STUDY"
    assert response.StudyDescription == "Brain MR"
    assert response["PatientComments"].is_empty
    assert response["RetrieveAETitle"].is_empty
    assert response.InstanceAvailability == "ONLINE"


def test_a_response_carries_the_instances_character_set(index: Index) -> None:
    (response,) = find(index, SR, "STUDY", StudyInstanceUID=S4, PatientName="")
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert str(response.PatientName) == "Müller^Jürgen"
    (plain,) = find(index, SR, "STUDY", StudyInstanceUID=S1, PatientName="")
    assert "SpecificCharacterSet" not in plain


@pytest.mark.parametrize("implicit", [True, False])
def test_responses_encode_and_decode(index: Index, implicit: bool) -> None:
    query = identifier(
        "STUDY",
        StudyInstanceUID="",
        PatientName="",
        PatientID="",
        StudyDate="",
        StudyTime="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
        ProcedureCodeSequence=procedure_key({"CodeMeaning": ""}),
        RetrieveAETitle="",
    )
    responses = list(index.find(query, SR))
    assert len(responses) == 10
    for response in responses:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, response)
        decoded = read_dataset(BytesIO(buffer.getvalue()), implicit, True)
        assert decoded.to_json_dict() == response.to_json_dict()


def test_timezone_offset_is_returned_when_requested_and_known(index: Index) -> None:
    (s4,) = find(index, SR, "STUDY", StudyInstanceUID=S4, TimezoneOffsetFromUTC="+0000")
    assert s4.TimezoneOffsetFromUTC == "+0100"  # a request's offset is no matching key
    (s1,) = find(index, SR, "STUDY", StudyInstanceUID=S1, TimezoneOffsetFromUTC="+0000")
    assert "TimezoneOffsetFromUTC" not in s1


def test_unknown_attributes_are_unsupported_above_the_image_level(index: Index) -> None:
    # Contrast/Bolus Agent is on no level this module knows: not matched, returned empty.
    (response,) = find(index, SR, "STUDY", StudyInstanceUID=S1, ContrastBolusAgent="X")
    assert response["ContrastBolusAgent"].is_empty
    # At the IMAGE level every attribute of the instance is a key.
    query = {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT}
    assert find(index, SR, "IMAGE", ContrastBolusAgent="X", **query) == []


def test_computed_attributes(index: Index) -> None:
    (patient,) = find(
        index,
        PR,
        "PATIENT",
        PatientID="PAT1",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    assert patient.NumberOfPatientRelatedStudies == 2
    assert patient.NumberOfPatientRelatedSeries == 3
    assert patient.NumberOfPatientRelatedInstances == 6
    (study,) = find(
        index,
        SR,
        "STUDY",
        StudyInstanceUID=S1,
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
        SOPClassesInStudy="",
        NumberOfPatientRelatedStudies="",  # a patient attribute of Study Root's STUDY level
    )
    assert study.NumberOfStudyRelatedSeries == 2
    assert study.NumberOfStudyRelatedInstances == 4
    assert list(study.ModalitiesInStudy) == ["CT", "SR"]
    assert list(study.SOPClassesInStudy) == [CT_CLASS, SR_CLASS]
    assert study.NumberOfPatientRelatedStudies == 2
    series = find(
        index, SR, "SERIES", StudyInstanceUID=S1, Modality="", NumberOfSeriesRelatedInstances=""
    )
    assert {(s.Modality, s.NumberOfSeriesRelatedInstances) for s in series} == {
        ("CT", 3),
        ("SR", 1),
    }
    (pso,) = find(index, PSO, "STUDY", PatientID="PAT2", NumberOfStudyRelatedInstances="1")
    assert pso.NumberOfStudyRelatedInstances == 1
    assert made_up_studies(index, NumberOfStudyRelatedInstances="2") == [S2]


# --- retrieve -----------------------------------------------------------------------------


def names(paths: list[Path]) -> list[str]:
    assert all(path.is_file() for path in paths)
    return sorted(path.name.removesuffix(".dcm") for path in paths)


def sops(series: str, *numbers: int) -> list[str]:
    return [f"{series}.{n}" for n in numbers]


@pytest.mark.parametrize(
    ("model", "level", "keys", "expected"),
    [
        (
            PR,
            "PATIENT",
            {"PatientID": "PAT1"},
            sops(S1_CT, 1, 2, 3) + sops(S1_SR, 1) + sops(S2_MR, 1, 2),
        ),
        (PR, "STUDY", {"PatientID": "PAT1", "StudyInstanceUID": S2}, sops(S2_MR, 1, 2)),
        (PR, "STUDY", {"PatientID": "PAT2", "StudyInstanceUID": S2}, []),
        (
            PR,
            "SERIES",
            {"PatientID": "PAT1", "StudyInstanceUID": S1, "SeriesInstanceUID": [S1_SR, S2_MR]},
            sops(S1_SR, 1),
        ),
        (
            PR,
            "IMAGE",
            {
                "PatientID": "PAT1",
                "StudyInstanceUID": S1,
                "SeriesInstanceUID": S1_CT,
                "SOPInstanceUID": sops(S1_CT, 1, 3),
                "PatientName": "ignored*",  # not a unique key: selects nothing
            },
            sops(S1_CT, 1, 3),
        ),
        (SR, "STUDY", {"StudyInstanceUID": [S2, S3]}, sops(S2_MR, 1, 2) + sops(S3_CT, 1)),
        (SR, "SERIES", {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_SR}, sops(S1_SR, 1)),
        (
            SR,
            "IMAGE",
            {"StudyInstanceUID": S2, "SeriesInstanceUID": S2_MR, "SOPInstanceUID": f"{S2_MR}.2"},
            sops(S2_MR, 2),
        ),
        (PSO, "PATIENT", {"PatientID": "PAT2"}, sops(S3_CT, 1)),
        (
            PSO,
            "STUDY",
            {"PatientID": "PAT1", "StudyInstanceUID": [S1]},
            sops(S1_CT, 1, 2, 3) + sops(S1_SR, 1),
        ),
        (CIR, "STUDY", {"StudyInstanceUID": S4}, sops(S4_OT, 1)),
        (CIR, "SERIES", {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT}, sops(S1_CT, 1, 2, 3)),
        (
            CIR,
            "IMAGE",
            {
                "StudyInstanceUID": S1,
                "SeriesInstanceUID": S1_CT,
                "SOPInstanceUID": [f"{S1_CT}.2", uid(8)],
            },
            sops(S1_CT, 2),
        ),
    ],
)
def test_retrieve_at_each_level_of_each_model(
    index: Index, model: QueryModel, level: str, keys: dict[str, Any], expected: list[str]
) -> None:
    assert names(index.retrieve(identifier(level, **keys), model)) == sorted(expected)


def test_retrieve_a_pydicom_file_by_patient(index: Index) -> None:
    ct = read("CT_small.dcm")
    assert names(index.retrieve(identifier("PATIENT", PatientID="1CT1"), PR)) == [ct.SOPInstanceUID]


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (PR, "PATIENT", {}),
        (PR, "PATIENT", {"PatientID": ""}),
        (PR, "PATIENT", {"PatientID": "PAT*"}),
        (PR, "PATIENT", {"PatientID": ["PAT1", "PAT2"]}),  # one patient at a time
        (PR, "STUDY", {"StudyInstanceUID": S1}),  # no Patient ID
        (SR, "STUDY", {"StudyInstanceUID": ""}),
        (SR, "STUDY", {"PatientID": "PAT1"}),
        (SR, "SERIES", {"StudyInstanceUID": [S1, S2], "SeriesInstanceUID": S1_CT}),
        (SR, "IMAGE", {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT}),
        (
            SR,
            "IMAGE",
            {"StudyInstanceUID": S1, "SeriesInstanceUID": S1_CT, "SOPInstanceUID": "1.*"},
        ),
        (CIR, "SERIES", {"SeriesInstanceUID": S1_CT}),
    ],
)
def test_retrieve_needs_the_unique_keys(
    index: Index, model: QueryModel, level: str, keys: dict[str, Any]
) -> None:
    fails(0xA900, index.retrieve, identifier(level, **keys), model)


def test_a_worklist_has_nothing_to_retrieve(index: Index) -> None:
    fails(0x0122, index.retrieve, identifier("STUDY", StudyInstanceUID=S1), MWL)


# --- threads ------------------------------------------------------------------------------


def test_concurrent_add_find_and_retrieve(tmp_path: Path) -> None:
    store = Index(tmp_path)
    writers, per_writer = 4, 15
    errors: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            patient = (f"W{n}", f"Writer^{n}")
            study = {"StudyInstanceUID": uid(50, n), "StudyDate": "20240101"}
            series = {"SeriesInstanceUID": uid(50, n, 1), "Modality": "OT", "SOPClassUID": SC_CLASS}
            for k in range(1, per_writer + 1):
                store.add(instance(patient, study, series, k), meta())
                store.add(instance(patient, study, series, k), meta())  # and overwrite it
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read_all() -> None:
        try:
            while not done.is_set():
                for response in store.find(
                    identifier("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=""), SR
                ):
                    assert 1 <= response.NumberOfStudyRelatedInstances <= per_writer
                for n in range(writers):
                    query = identifier("STUDY", StudyInstanceUID=uid(50, n))
                    assert all(p.is_file() for p in store.retrieve(query, SR))
                assert len(store) <= writers * per_writer
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    readers = [threading.Thread(target=read_all) for _ in range(2)]
    for thread in readers + threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    for thread in readers:
        thread.join(timeout=60)
    assert errors == []
    assert len(store) == writers * per_writer
    responses = find(store, SR, "STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="")
    assert [r.NumberOfStudyRelatedInstances for r in responses] == [per_writer] * writers
    assert len(list(tmp_path.iterdir())) == writers * per_writer


# --- properties ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A made-up archive: per patient, per study, the number of images of each series."""

    patients: tuple[tuple[tuple[int, ...], ...], ...]


layouts = st.builds(
    Layout,
    st.lists(
        st.lists(
            st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple), min_size=1, max_size=2
        ).map(tuple),
        min_size=1,
        max_size=3,
    ).map(tuple),
)


def build(layout: Layout) -> Iterator[Dataset]:
    for p, studies_ in enumerate(layout.patients):
        patient = (f"P{p}", f"Name{p}^Given")
        for s, series_ in enumerate(studies_):
            study = {"StudyInstanceUID": uid(60, p, s), "StudyDate": "20240101"}
            for r, count in enumerate(series_):
                series = {
                    "SeriesInstanceUID": uid(60, p, s, r),
                    "Modality": "OT",
                    "SOPClassUID": SC_CLASS,
                }
                for k in range(1, count + 1):
                    yield instance(patient, study, series, k)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts)
def test_image_level_with_universal_keys_finds_every_instance_once(layout: Layout) -> None:
    expected = sorted(ds.SOPInstanceUID for ds in build(layout))
    with tempfile.TemporaryDirectory() as directory:
        store = Index(Path(directory))
        for ds in build(layout):
            store.add(ds, meta())
        assert len(store) == len(expected)
        found: list[str] = []  # walk the Patient Root hierarchy, universal keys throughout
        for patient in find(store, PR, "PATIENT", PatientID=""):
            pid = patient.PatientID
            for study in find(store, PR, "STUDY", PatientID=pid, StudyInstanceUID=""):
                suid = study.StudyInstanceUID
                for series in find(
                    store, PR, "SERIES", PatientID=pid, StudyInstanceUID=suid, SeriesInstanceUID=""
                ):
                    for image in find(
                        store,
                        PR,
                        "IMAGE",
                        PatientID=pid,
                        StudyInstanceUID=suid,
                        SeriesInstanceUID=series.SeriesInstanceUID,
                        SOPInstanceUID="",
                        InstanceNumber="",
                    ):
                        found.append(image.SOPInstanceUID)
                        assert image.SOPInstanceUID.endswith(f".{image.InstanceNumber}")
        assert sorted(found) == expected  # every instance, exactly once
        counted = sum(
            p.NumberOfPatientRelatedInstances
            for p in find(store, PR, "PATIENT", PatientID="", NumberOfPatientRelatedInstances="")
        )
        assert counted == len(expected)
        everything = store.retrieve(
            identifier(
                "STUDY", StudyInstanceUID=sorted({ds.StudyInstanceUID for ds in build(layout)})
            ),
            SR,
        )
        assert sorted(p.name.removesuffix(".dcm") for p in everything) == expected


days = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(days, days, days, st.sampled_from(["range", "from", "until", "single"]))
def test_date_range_matching_agrees_with_date_order(
    tmp_path: Path, study: date, low: date, high: date, shape: str
) -> None:
    if low > high:
        low, high = high, low
    store = Index(tmp_path / study.isoformat())
    if len(store) == 0:
        ds = made_up()[4]
        ds.StudyDate = study.strftime("%Y%m%d")
        store.add(ds, meta())
    fmt = "%Y%m%d"
    key, hit = {
        "range": (f"{low:{fmt}}-{high:{fmt}}", low <= study <= high),
        "from": (f"{low:{fmt}}-", low <= study),
        "until": (f"-{high:{fmt}}", study <= high),
        "single": (f"{low:{fmt}}", study == low),
    }[shape]
    assert len(find(store, SR, "STUDY", StudyDate=key)) == int(hit)
    adjacent = study + timedelta(days=1) if study < date(2100, 12, 31) else study
    assert len(find(store, SR, "STUDY", StudyDate=f"{adjacent:{fmt}}")) == int(adjacent == study)
