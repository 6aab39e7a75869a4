"""The README demo with real DCMTK peers: storescu -> findscu -> getscu -> movescu,
answered by the example consumer through the bridge."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bridge.config import ConsumerSettings
from bridge.example.consumer import build
from tests.conftest import BridgeFactory
from tests.harness import AMQP_URL, BridgeHarness, LoopThread, free_port
from tests.waiting import eventually

pytestmark = pytest.mark.process  # every test here starts a process

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} missing: install dcmtk"
    return path


def _run(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture
def pacs(
    make_bridge: BridgeFactory, exchange: str, tmp_path: Path
) -> Iterator[tuple[BridgeHarness, int]]:
    """Bridge + example consumer + a DCMTK storescp as C-MOVE destination; the three
    test files already stored through the bridge with storescu."""
    destination_port = free_port()
    table = tmp_path / "ae-table.json"
    table.write_text(f'{{"STORESCP": {{"host": "127.0.0.1", "port": {destination_port}}}}}')
    bridge = make_bridge(ae_table=str(table), bulk_dir=str(tmp_path / "bulk"))
    bridge.wait_ready()
    settings = ConsumerSettings(
        amqp_url=AMQP_URL,
        exchange=exchange,
        queue=f"test-example-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "store",
        bulk_dir=tmp_path / "bulk",
    )  # type: ignore[call-arg]
    consumer = build(settings, exclusive=True)
    loop = LoopThread("example-consumer")
    loop.run(consumer.start())
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(
        [_tool("storescp"), "-aet", "STORESCP", "-od", str(received), str(destination_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        files = []
        for name in FILES:
            source = get_testdata_file(name, download=False)
            assert source is not None
            files.append(str(source))
        output = _run(
            "storescu", "-v", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(bridge.port), *files
        )
        assert output.count("Received Store Response (Success)") == len(FILES), output
        yield bridge, destination_port
    finally:
        storescp.terminate()
        storescp.wait(10)
        loop.run(consumer.close())
        loop.stop()


def _study_uid(name: str) -> str:
    source = get_testdata_file(name, download=False)
    assert source is not None
    return str(dcmread(source).StudyInstanceUID)


def _responses(output: str) -> list[str]:
    """The status of each C-FIND response findscu printed, the final one last."""
    pending = re.findall(r"Find Response: \d+ \((Pending)\)", output)
    final = re.findall(r"Received Final Find Response \(([^)]+)\)", output)
    return pending + final


def test_findscu_study_root(pacs: tuple[BridgeHarness, int]) -> None:
    bridge, _ = pacs
    output = _run(
        "findscu", "-v", "-S", "-aec", "DICOM-BRIDGE",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    studies = {_study_uid(name) for name in FILES}
    assert _responses(output).count("Pending") == len(studies), output
    assert _responses(output)[-1] == "Success"
    for uid in studies:
        assert uid in output


def test_findscu_patient_root_with_wildcard(pacs: tuple[BridgeHarness, int]) -> None:
    bridge, _ = pacs
    patient_id = str(dcmread(str(get_testdata_file("CT_small.dcm", download=False))).PatientID)
    output = _run(
        "findscu", "-v", "-P", "-aec", "DICOM-BRIDGE",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={patient_id[:3]}*",
        "-k", "NumberOfPatientRelatedStudies",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    assert _responses(output)[-1] == "Success"
    assert _responses(output).count("Pending") >= 1
    assert patient_id in output


def test_findscu_worklist_has_no_items(pacs: tuple[BridgeHarness, int]) -> None:
    bridge, _ = pacs
    output = _run(
        "findscu", "-v", "-W", "-aec", "DICOM-BRIDGE",
        "-k", "ScheduledProcedureStepSequence[0].Modality=CT", "-k", "PatientName",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    assert _responses(output) == ["Success"], output


def test_findscu_relational_query_is_refused(pacs: tuple[BridgeHarness, int]) -> None:
    bridge, _ = pacs
    output = _run(
        "findscu", "-v", "-P", "-aec", "DICOM-BRIDGE",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    assert _responses(output) == ["Error: DataSetDoesNotMatchSOPClass"], output  # 0xA900


def test_getscu_study(pacs: tuple[BridgeHarness, int], tmp_path: Path) -> None:
    bridge, _ = pacs
    out = tmp_path / "got"
    out.mkdir()
    uid = _study_uid("CT_small.dcm")
    output = _run(
        "getscu", "-v", "-S", "-aec", "DICOM-BRIDGE", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    got = [dcmread(p) for p in out.iterdir()]
    assert got, output
    assert {ds.StudyInstanceUID for ds in got} == {uid}


def test_movescu_study_to_storescp(pacs: tuple[BridgeHarness, int], tmp_path: Path) -> None:
    bridge, _ = pacs
    uid = _study_uid("MR_small.dcm")
    output = _run(
        "movescu", "-v", "-S", "-aec", "DICOM-BRIDGE", "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
        "127.0.0.1", str(bridge.port),
    )  # fmt: skip
    assert "Received Final Move Response (Success)" in output, output
    received = tmp_path / "received"
    eventually(lambda: list(received.iterdir()), "storescp wrote the moved instances")
    moved = [dcmread(p) for p in received.iterdir()]
    assert {ds.StudyInstanceUID for ds in moved} == {uid}


def test_movescu_unknown_destination(pacs: tuple[BridgeHarness, int]) -> None:
    bridge, _ = pacs
    result = subprocess.run(
        [_tool("movescu"), "-v", "-S", "-aec", "DICOM-BRIDGE", "-aem", "NOWHERE",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={_study_uid('CT_small.dcm')}",
         "127.0.0.1", str(bridge.port)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in output, output
