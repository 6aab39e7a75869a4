"""The command line as users run it: real processes, real DCMTK peers, real signals."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from bridge.config import BridgeSettings, ConsumerSettings
from tests.harness import AMQP_URL, delete_exchange, delete_queue, free_port

pytestmark = pytest.mark.process  # every test here starts a process

EXE = str(Path(sys.executable).with_name("dicom-bridge"))


class Process:
    """A child process whose stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [EXE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output:\n{''.join(self.seen)}")

    def drain(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_help_documents_every_serve_option(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0
    for name in BridgeSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in result.stdout, name
        assert f"BRIDGE_{name.upper()}" in result.stdout.replace("\n", " ").replace(" ", ""), name


def test_help_documents_every_consumer_option() -> None:
    for args in (["--help"], ["example-consumer", "--help"]):
        result = run(*args)
        for name in ConsumerSettings.model_fields:
            assert f"--{name.replace('_', '-')}" in result.stdout, name


def test_python_dash_m_bridge() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "serve" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "port"),
        (["--reply-timeout", "40"], {}, "reply_timeout must be below dimse_timeout"),
        (["--sop-classes", "verification,NoSuchStorage"], {}, "unknown SOP class 'NoSuchStorage'"),
        (["--ae-title", "A-TITLE-LONGER-THAN-16"], {}, "ae_title"),
        ([], {"BRIDGE_PORT": "eleven"}, "port"),
        (["--amqp-url", "http://x"], {}, "amqp_url"),
    ],
    ids=["port-range", "timeouts", "sop-class", "ae-title", "env-port", "url-scheme"],
)
def test_invalid_configuration_fails_early_and_clearly(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run("serve", *args, env=env)
    assert result.returncode == 2
    assert "dicom-bridge: error: invalid configuration" in result.stderr
    assert message in result.stderr


@pytest.fixture
def cli_exchange(broker: None) -> Iterator[str]:
    name = f"test-cli-{uuid.uuid4().hex[:8]}"
    yield name
    delete_exchange(name)


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(args[0])
    assert tool is not None, f"{args[0]} missing: install dcmtk"
    return subprocess.run(
        [tool, *args[1:]], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_serve_and_example_consumer_round_trip(cli_exchange: str, tmp_path: Path) -> None:
    """The README quick start: serve, example-consumer, echoscu, storescu, SIGTERM."""
    port = free_port()
    queue_name = f"test-cli-{uuid.uuid4().hex[:8]}"
    env = {"BRIDGE_EXCHANGE": cli_exchange, "BRIDGE_AMQP_URL": AMQP_URL}
    bridge = Process("serve", "--host", "127.0.0.1", "--port", str(port), env=env)
    consumer = Process("example-consumer", "--queue", queue_name, env=env)
    try:
        bridge.wait_for("connected to broker")
        consumer.wait_for("consuming")
        echo = _dcmtk("echoscu", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(port))
        assert echo.returncode == 0, echo.stderr
        files: list[str] = []
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
            source = get_testdata_file(name, download=False)
            assert source is not None
            files.append(str(shutil.copy(source, tmp_path / name)))
        store = _dcmtk("storescu", "-v", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(port), *files)
        assert store.returncode == 0, store.stderr
        assert (store.stdout + store.stderr).count("Received Store Response (Success)") == 3
        consumer.wait_for("C-ECHO 1.2.840.10008.1.1 from ECHOSCU")
        for _ in files:
            consumer.wait_for("C-STORE")
        started = time.monotonic()
        assert bridge.stop() == 0
        assert time.monotonic() - started < 5
        assert "stopped" in bridge.drain()
        assert consumer.stop() == 0
    finally:
        for process in (bridge, consumer):
            if process.proc.poll() is None:
                process.proc.kill()
    # Patient names of the test files never reach the logs.
    logs = bridge.drain() + consumer.drain()
    assert "CompressedSamples" not in logs
    assert "Last^First" not in logs
    delete_queue(queue_name)


@pytest.mark.slow
def test_serve_with_broker_down_says_so_retries_and_fails_requests_fast(
    cli_exchange: str,
) -> None:
    port = free_port()
    dead = free_port()
    bridge = Process(
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--amqp-url", f"amqp://guest:s3cret@127.0.0.1:{dead}/",
        "--exchange", cli_exchange,
    )  # fmt: skip
    try:
        line = bridge.wait_for("broker unreachable at")
        assert f"amqp://guest:***@127.0.0.1:{dead}/" in line
        bridge.wait_for("broker unreachable at")  # it keeps retrying
        assert "listening on" in bridge.drain()
        started = time.monotonic()
        echo = _dcmtk("echoscu", "-v", "-aec", "DICOM-BRIDGE", "127.0.0.1", str(port))
        assert time.monotonic() - started < 3
        assert "Unknown Status: 0x110" in echo.stdout + echo.stderr
        assert bridge.stop() == 0
    finally:
        if bridge.proc.poll() is None:
            bridge.proc.kill()
    assert "s3cret" not in bridge.drain()


def test_serve_on_a_busy_port_exits_with_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A broker URL where none listens: the port is under test, not the broker.
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        result = run("serve", "--host", "127.0.0.1", "--port", str(port), "--amqp-url", dead)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
