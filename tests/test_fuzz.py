"""The codec under coverage-guided fuzzing (atheris) for a bounded time: nothing but the
codec's own documented errors may escape (fuzz/codec_fuzz.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bridge.protocol.dicomjson import dataset_to_json

pytestmark = pytest.mark.process  # every test here starts a process

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 20


def _corpus(directory: Path) -> None:
    """Seeds: real data sets (raw bytes after the file meta), their DICOM JSON, replies."""
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"):
        path = get_testdata_file(name, download=False)
        assert path is not None
        ds = dcmread(path)
        for implicit in (True, False):
            buffer = DicomBytesIO()
            buffer.is_implicit_VR, buffer.is_little_endian = implicit, True
            write_dataset(buffer, ds)
            (directory / f"{name}.{int(implicit)}.bin").write_bytes(buffer.getvalue())
        (directory / f"{name}.json").write_bytes(orjson.dumps(dataset_to_json(ds)))
    (directory / "reply.json").write_bytes(b'{"status": 0, "error_comment": "x"}')
    (directory / "stream.json").write_bytes(b'{"status": 65280, "sub_operations": 2}')


@pytest.mark.slow
def test_codec_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _corpus(corpus)
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "codec_fuzz.py"), str(corpus),
         f"-max_total_time={SECONDS}", "-rss_limit_mb=2048", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=SECONDS + 60, check=False,
        cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    runs = [
        line for line in output.splitlines() if line.startswith("stat::number_of_executed_units")
    ]
    assert runs, output[-2000:]
    assert int(runs[0].split(":")[-1]) > 1000
