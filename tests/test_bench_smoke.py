"""``bench/run.py --quick`` and ``bench/ingest.py`` (tiny sizes, and ``--envelopes-only``)
run end to end and write complete result files.

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

    for key in ("storescp", "orthanc", "tuned", "bridge", "bridge-fast"):
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
    for key in ("bridge", "bridge-fast"):
        assert {"storescu", "receiver", "consumer"} <= set(result["loads"][key]["1"]["cpu_s"])
    targets = {t["target"] for t in result["targets"]}
    for key in ("bridge", "bridge-fast"):  # every bridge target, for both rows
        assert f"{key} images/s, 1 association(s)" in targets
        assert f"{key} large instance: consumer peak RSS / size" in targets
    assert all(isinstance(t["met"], bool) for t in result["targets"])

    floor = result["floor"]
    assert floor["body_bytes"] > 30_000  # a CT_small envelope, the Part 10 file inline
    for kind in ("quorum", "classic"):
        trip = floor["round_trips"][kind]
        assert trip["requests"] == floor["requests"] > 0
        assert 0 < trip["median_ms"] <= trip["p90_ms"], (kind, trip)
    for key, queue_type in (("bridge", "quorum"), ("bridge-fast", "classic")):
        row = floor["rows"][key]
        assert row["queue_type"] == queue_type
        assert row["round_trip_ms"] == floor["round_trips"][queue_type]["median_ms"]
        assert row["floor_ms_per_image"] > row["tuned_ms_per_image"] > 0, row
        assert row["ceiling_per_s"] > 0, row
        assert row["cpu_ms_per_image_4"] > 0, row
        assert row["cpu_budget_ms_per_image_4"] > 0
    check_envelopes(result["envelopes"])

    assert "| receiver | associations | images/s |" in done.stdout  # the tables are printed
    assert "| target | measured | wanted | met |" in done.stdout
    assert "| queue | median ms | p90 ms | requests |" in done.stdout
    assert "Floor, 1 association, against 150/s: bridge: at most" in done.stdout
    assert "| instance | file KiB | values in `dataset` |" in done.stdout


def check_envelopes(envelopes: dict[str, Any]) -> None:
    """CT_small is always there: its large values are references, or copies that make the
    body larger; every number is positive."""
    assert envelopes["builds_per_way"] >= 200
    ct = envelopes["instances"]["CT_small.dcm"]
    ways = ct["ways"]
    assert ways["references"]["references"] > 0
    assert ways["copies"]["references"] == 0
    assert ways["copies"]["body_bytes"] > ways["references"]["body_bytes"] > ct["file_bytes"]
    for item in envelopes["instances"].values():
        for way in item.get("ways", {}).values():
            assert way["build_cpu_us"] > 0, item
            assert way["loads_cpu_us"] > 0, item


@pytest.mark.timeout(120)
def test_envelopes_only_writes_the_envelope_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(INGEST), "--envelopes-only", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("ingest-envelopes-*.json"))
    assert len(files) == 1, files
    result: dict[str, Any] = json.loads(files[0].read_text())
    assert result["envelopes_only"] is True
    check_envelopes(result["envelopes"])
    assert "| CT_small.dcm (" in done.stdout
