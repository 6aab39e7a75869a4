"""No patient data in logs at INFO: a full run of the bridge and the example consumer, as
processes, through every kind of request and several failures; then the captured logs
are searched for the patient names and IDs of the test data (and the AMQP password)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.harness import (
    AMQP_URL,
    association,
    delete_exchange,
    delete_queue,
    free_port,
    send_raw_store,
)

EXE = str(Path(sys.executable).with_name("dicom-bridge"))
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]
PASSWORD = "guest"  # the broker's; it must never be printed in the URL


def _phi() -> set[str]:
    values = set()
    for name in FILES:
        path = get_testdata_file(name, download=False)
        assert path is not None
        ds = dcmread(path)
        values.add(str(ds.PatientName))
        values.add(str(ds.PatientID))
        for part in str(ds.PatientName).split("^"):
            if len(part) > 4:
                values.add(part)
    return values | {"Doe^Jane", "PID-77-SECRET"}


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _wait_for(proc: subprocess.Popen[str], text: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} not seen:\n{''.join(seen)}")


@pytest.mark.process
@pytest.mark.slow
def test_a_full_run_logs_no_patient_data(broker: None, tmp_path: Path) -> None:
    exchange = f"test-phi-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_AMQP_URL": AMQP_URL,
        "BRIDGE_EXCHANGE": exchange,
        "BRIDGE_LOG_LEVEL": "INFO",
        "BRIDGE_DATA_DIR": str(tmp_path / "store"),
        "BRIDGE_REPLY_TIMEOUT": "3",
    }
    bridge = _start("serve", "--host", "127.0.0.1", "--port", str(port),
                    "--log-format", "json", env=env)  # fmt: skip
    queue = f"test-phi-{uuid.uuid4().hex[:8]}"
    consumer = _start("example-consumer", "--queue", queue, env=env)
    logs: list[str] = []
    try:
        _wait_for(bridge, "connected to broker", logs)
        _wait_for(consumer, "consuming", logs)
        files = []
        for name in FILES:
            source = get_testdata_file(name, download=False)
            assert source is not None
            files.append(str(shutil.copy(source, tmp_path / name)))
        storescu = shutil.which("storescu")
        assert storescu is not None
        subprocess.run([storescu, "-aec", "DICOM-BRIDGE", "127.0.0.1", str(port), *files],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        find = StudyRootQueryRetrieveInformationModelFind
        with association(
            port, [find, CTImageStorage, StorageCommitmentPushModel, ModalityPerformedProcedureStep]
        ) as assoc:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = "CompressedSamples^CT1"
            query.PatientID = ""
            query.StudyInstanceUID = ""
            assert [s.Status for s, _ in assoc.send_c_find(query, find)][-1] == 0
            relational = Dataset()
            relational.QueryRetrieveLevel = "PATIENT"  # not a Study Root level: refused
            relational.PatientName = "Doe^Jane"
            assert list(assoc.send_c_find(relational, find))[-1][0].Status == 0xA900
            info = Dataset()
            info.PatientName = "Doe^Jane"
            info.PatientID = "PID-77-SECRET"
            info.TransactionUID = "1.2.826.0.1.3680043.8.498.9"
            status, _ = assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, "1.2.3")
            assert status.Status == 0
            created, _ = assoc.send_n_create(info, ModalityPerformedProcedureStep, None)
            assert created.Status == 0
            # Patient Name, Patient ID, then a DS that is no number: the codec refuses it
            # and says which element, never its value.
            broken = (
                bytes.fromhex("1000100008000000") + b"Doe^Jane"
                + bytes.fromhex("100020000e000000") + b"PID-77-SECRET "
                + bytes.fromhex("2800300004000000") + b"abc "
            )  # fmt: skip
            assert send_raw_store(assoc, broken) == 0xC000
        # a failure with the consumer gone: timeouts and unroutable requests log too
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(10)
        with association(port, [CTImageStorage]) as assoc:
            assert assoc.send_c_store(dcmread(files[0])).Status in (0xC001, 0xA700)
    finally:
        for proc in (bridge, consumer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (bridge, consumer):
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            logs.append(out or "")
        delete_exchange(exchange)
        delete_queue(queue)
    text = "".join(logs)
    assert "C-STORE failed (bad-request)" in text  # the failure paths did log
    assert "association accepted" in text
    leaks = sorted(value for value in _phi() if value in text)
    assert not leaks, f"patient data in the logs: {leaks}"
    assert f"guest:{PASSWORD}@" not in text


@pytest.mark.parametrize("name", FILES)
def test_the_search_finds_what_it_looks_for(name: str) -> None:
    """The scan above can fail: each value it looks for is really in the test data."""
    path = get_testdata_file(name, download=False)
    assert path is not None
    ds = dcmread(path)
    assert str(ds.PatientName) in _phi()
    assert str(ds.PatientID) in _phi()
