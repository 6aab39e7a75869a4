"""``bench/run.py --quick`` and ``bench/ingest.py`` (tiny sizes) run end to end and write
complete result files.

A smoke test of the benchmark, not a performance assertion: every case is
there, every request was answered Success, and the numbers are positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process  # every test here starts a process

RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"
INGEST = RUN.with_name("ingest.py")
DICOM_CASES = (
    "n-event-report x1",
    "c-echo x1",
    "c-store x1",
    "storescu 200 CT",
    "n-event-report x4",
    "n-event-report x16",
    "large instance",
)
SERVERS = ("stock", "tuned", "bridge")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_every_case(broker: None, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    assert list(tmp_path.glob("*.png")), "no chart written"
    result: dict[str, Any] = json.loads(files[0].read_text())
    cases = result["cases"]

    for name in DICOM_CASES:
        assert name in cases, name
        case = cases[name]
        for key in SERVERS:
            server = case["servers"][key]
            assert server["errors"] == 0, (name, key, server["error_samples"])
            assert server["rate"] > 0, (name, key)
            assert server["p50_ms"] > 0, (name, key)
            assert server["p99_ms"] >= server["p50_ms"], (name, key)
            for process in server["processes"].values():
                assert process["peak_rss_mb"] > 0, (name, key)
                assert process["cpu_s"] >= 0, (name, key)  # 10 ms ticks: may read 0
        assert case["ratio_vs_stock"] > 0, name
        assert case["ratio_vs_tuned"] > 0, name
    assert cases["large instance"]["bridge_peak_rss_over_instance"] > 0

    sdk = cases["consumer sdk"]["servers"]["sdk"]
    assert sdk["errors"] == 0
    assert sdk["rate"] > 0
    assert sdk["processes"]["consumer"]["peak_rss_mb"] > 0

    assert {t["target"] for t in result["targets"]}, "no targets evaluated"
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert "| n-event-report x1 |" in done.stdout  # the table is printed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tiny_ingest_run_stores_everything_everywhere(broker: None, tmp_path: Path) -> None:
    command = [sys.executable, str(INGEST), "--images", "10", "--runs", "1", "--large-mb", "2"]
    done = subprocess.run(
        [*command, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("ingest-*.json"))
    assert len(files) == 1, files
    result: dict[str, Any] = json.loads(files[0].read_text())

    for key in ("storescp", "orthanc", "tuned", "bridge"):
        assert result["receivers"][key]["failed"] is None, (key, result["receivers"][key])
        for load in ("1", "4"):
            row = result["loads"][key][load]
            assert row["failed"] is None, (key, load, row)
            assert row["stored"] == [10], (key, load, row)
            assert row["rate"] > 0, (key, load)
            assert row["cpu_ms_per_image"]["receiver"] >= 0, (key, load)
        large = result["large"][key]
        assert large["failed"] is None, (key, large)
        assert large["mb_per_s"] > 0, key
        for process in large["processes"].values():
            assert process["peak_rss_mb"] > 0, (key, process)
            assert process["idle_rss_mb"] > 0, (key, process)
    assert {"storescu", "receiver", "consumer"} <= set(result["loads"]["bridge"]["1"]["cpu_s"])
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert "| receiver | associations | images/s |" in done.stdout  # the tables are printed
    assert "| target | measured | wanted | met |" in done.stdout
