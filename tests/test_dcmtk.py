"""Real DCMTK peers through the bridge: echoscu and storescu (several files, one association)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bridge.protocol.dicomjson import dataset_to_json
from bridge.sdk.consumer import Response
from tests.conftest import ConsumerFactory
from tests.harness import BridgeHarness, Recorder

pytestmark = pytest.mark.process  # every test here starts a process

# Files of several SOP classes and both uncompressed transfer syntaxes, from pydicom's
# test data.
STORE_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
]


def _dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} not installed: DCMTK is required (apt install dcmtk)")
    return path


def _files(tmp_path: Path, names: list[str] = STORE_FILES) -> list[Path]:
    paths = []
    for name in names:
        source = get_testdata_file(name, download=False)
        assert source is not None, name
        target = tmp_path / name
        shutil.copy(source, target)
        paths.append(target)
    return paths


def test_echoscu(bridge: BridgeHarness, recorder: Recorder) -> None:
    result = subprocess.run(
        [_dcmtk("echoscu"), "-aet", "DCMTK-ECHO", "-aec", "DICOM-BRIDGE", "127.0.0.1",
         str(bridge.port)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r.service.value for r in recorder.requests] == ["c-echo"]
    assert recorder.requests[0].calling_ae == "DCMTK-ECHO"


def test_echoscu_sees_consumer_failure(
    bridge: BridgeHarness, make_consumer: ConsumerFactory
) -> None:
    make_consumer(Recorder(answer=lambda request: Response(0x0211)))
    result = subprocess.run(
        [_dcmtk("echoscu"), "-v", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(bridge.port)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Unknown Status: 0x211" in output, output


def test_storescu_several_files_on_one_association(
    bridge: BridgeHarness, recorder: Recorder, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    result = subprocess.run(
        [_dcmtk("storescu"), "-v", "-R", "-aet", "MODALITY", "-aec", "DICOM-BRIDGE", "127.0.0.1",
         str(bridge.port), *map(str, files)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(files), output
    assert len(recorder.requests) == len(files)
    assert len({r.envelope["association"]["id"] for r in recorder.requests}) == 1
    by_uid = {r.command["affected_sop_instance_uid"]: r for r in recorder.requests}
    for path in files:
        original = dcmread(path)
        # DCMTK drops Data Set Trailing Padding when it sends (PS3.5 7.8 allows it).
        original.pop(0xFFFCFFFC, None)
        request = by_uid[original.SOPInstanceUID]
        # The consumer sees the instance DCMTK sent, element for element.
        assert request.dataset is not None
        assert dataset_to_json(request.dataset) == dataset_to_json(original)
        assert (
            request.envelope["context"]["transfer_syntax"] == original.file_meta.TransferSyntaxUID
        )


@pytest.mark.parametrize(
    ("name", "propose"),
    [("JPEG2000.dcm", "-xw"), ("SC_rgb_rle.dcm", "-xr"), ("JPEG-lossy.dcm", "-xx")],
)
def test_storescu_compressed_instance_travels_unchanged(
    name: str, propose: str, bridge: BridgeHarness, recorder: Recorder, tmp_path: Path
) -> None:
    (path,) = _files(tmp_path, [name])
    result = subprocess.run(
        [_dcmtk("storescu"), "-v", propose, "-aec", "DICOM-BRIDGE", "127.0.0.1",
         str(bridge.port), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Received Store Response (Success)" in output, output
    original = dcmread(path)
    (request,) = recorder.requests
    assert request.envelope["context"]["transfer_syntax"] == original.file_meta.TransferSyntaxUID
    assert request.dataset is not None
    assert request.dataset.PixelData == original.PixelData


def test_storescu_sees_warning_status(
    bridge: BridgeHarness, make_consumer: ConsumerFactory, tmp_path: Path
) -> None:
    make_consumer(Recorder(answer=lambda request: Response(0xB007, error_comment="mismatch")))
    files = _files(tmp_path)[:2]
    result = subprocess.run(
        [_dcmtk("storescu"), "-v", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(bridge.port),
         *map(str, files)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert output.count("Received Store Response (Warning: DataSetDoesNotMatchSOPClass)") == 2, (
        output
    )
