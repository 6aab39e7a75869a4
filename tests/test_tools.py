"""``schema``, ``check`` and ``tail`` as users run them: real processes, the local broker."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aio_pika
import pytest
import yaml
from pydicom import examples
from pydicom.datadict import keyword_for_tag

from bridge.cli import schema, tail
from bridge.protocol.model import Service, topic_matches
from bridge.protocol.sopclasses import accepted_services, services_of
from tests.harness import AMQP_URL, BridgeHarness, Recorder, association, free_port
from tests.schemas import SCHEMAS

EXE = str(Path(sys.executable).with_name("dicom-bridge"))
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BRIDGE_AMQP_URL": AMQP_URL, **(env or {})},
    )


class Tail:
    """A ``dicom-bridge tail`` process; stdout and stderr collected separately."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [EXE, "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BRIDGE_AMQP_URL": AMQP_URL},
        )
        self.err: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err.put)),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout.append)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, put: Callable[[str], None]) -> None:
        assert stream is not None
        for line in stream:
            put(line)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.err.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.stderr.append(line)
            if line.startswith("tailing"):
                return
        raise AssertionError(f"tail not ready: {''.join(self.stderr)}")

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        """Wait for the exit: (exit code, stdout, stderr)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(5)
        while not self.err.empty():
            self.stderr.append(self.err.get())
        return code, "".join(self.stdout), "".join(self.stderr)


def declare_exchange(name: str) -> None:
    async def declare() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)

    asyncio.run(declare())


def rows(output: str) -> dict[str, str]:
    """Check's table: name -> status (the last row of that name)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("OK", "WARN", "FAIL"):
            found[parts[1]] = parts[0]
    return found


# -- schema ------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.slow
def test_schema_lists_names_and_prints_each() -> None:
    listing = run("schema")
    assert listing.returncode == 0, listing.stderr
    for name, (filename, _) in schema.SCHEMAS.items():
        assert name in listing.stdout
        assert filename in listing.stdout
        printed = run("schema", name)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == (SCHEMAS / filename).read_text(encoding="utf-8")
        if filename.endswith(".json"):
            assert json.loads(printed.stdout)["$schema"]
        else:
            assert yaml.safe_load(printed.stdout)["asyncapi"] == "3.0.0"
    unknown = run("schema", "nope")
    assert unknown.returncode == 2
    assert "nope" in unknown.stderr


def test_schema_dir_finds_installed_and_checkout_layouts(tmp_path: Path) -> None:
    # A wheel: pyproject force-includes schemas/ as bridge/_schemas.
    wheel = tmp_path / "site-packages" / "bridge"
    (wheel / "_schemas").mkdir(parents=True)
    (wheel / "_schemas" / "envelope.schema.json").write_text("{}")
    (wheel.parent / "schemas").mkdir()  # someone else's top-level "schemas": not ours
    assert schema.schema_dir(wheel) == wheel / "_schemas"
    # A source checkout: schemas/ beside the package.
    checkout = tmp_path / "checkout" / "bridge"
    checkout.mkdir(parents=True)
    (checkout.parent / "schemas").mkdir()
    (checkout.parent / "schemas" / "envelope.schema.json").write_text("{}")
    assert schema.schema_dir(checkout) == checkout.parent / "schemas"
    with pytest.raises(FileNotFoundError):
        schema.schema_dir(tmp_path / "nowhere" / "bridge")
    assert schema.schema_dir() == SCHEMAS


@pytest.mark.process
@pytest.mark.parametrize("command", ["schema", "check", "tail"])
def test_help_has_examples(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout
    assert f"dicom-bridge {command}" in result.stdout


# -- check -------------------------------------------------------------------------------


def _check(exchange: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        "check",
        "--exchange",
        exchange,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--bulk-dir",
        str(tmp_path / "bulk"),
        *args,
    )


@pytest.mark.process
@pytest.mark.slow
def test_check_passes_with_a_consumer_bound(
    exchange: str, make_consumer: Any, tmp_path: Path
) -> None:
    make_consumer(Recorder(), tuple(Service))
    result = _check(exchange, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert ":guest@" not in output
    assert "amqp://guest:***@127.0.0.1:5672/" in output
    table = rows(result.stdout)
    for name in ("configuration", "AE", "bulk", "DICOM", "broker", "exchange"):
        assert table[name] == "OK", output
    if shutil.which("rabbitmqctl"):  # the management plugin is off on the test machines
        assert all(table[service.value] == "OK" for service in Service), output
        assert "verdict: OK" in result.stdout
    else:
        assert table["bindings"] == "WARN", output
        assert "not verified" in output


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_check_reports_services_nobody_is_bound_for(
    exchange: str, make_consumer: Any, tmp_path: Path
) -> None:
    make_consumer(Recorder(), (Service.C_ECHO, Service.C_STORE))
    result = _check(exchange, tmp_path, "--bindings-from", "rabbitmqctl")
    assert result.returncode == 1, result.stdout
    table = rows(result.stdout)
    assert table["c-echo"] == table["c-store"] == "OK"
    assert table["c-find"] == table["n-action"] == "FAIL"
    assert "bind 'n-action.#'" in result.stdout
    assert "verdict: FAIL" in result.stdout


@pytest.mark.process
def test_check_reports_a_missing_exchange(exchange: str, tmp_path: Path) -> None:
    result = _check(exchange, tmp_path)
    assert result.returncode == 1, result.stdout
    table = rows(result.stdout)
    assert table["exchange"] == "WARN"
    assert "serve declares it" in result.stdout
    assert table["bindings"] == "FAIL"


@pytest.mark.process
def test_check_reports_an_exchange_serve_could_not_declare(tmp_path: Path, broker: None) -> None:
    name = f"test-direct-{os.getpid()}-{time.monotonic_ns()}"

    async def declare(kind: aio_pika.ExchangeType | None) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            if kind is None:
                await channel.exchange_delete(name)
            else:
                await channel.declare_exchange(name, kind, durable=True)

    asyncio.run(declare(aio_pika.ExchangeType.DIRECT))
    try:
        result = _check(name, tmp_path, "--bindings-from", "none")
    finally:
        asyncio.run(declare(None))
    assert result.returncode == 1
    assert rows(result.stdout)["exchange"] == "FAIL"
    assert "inequivalent arg 'type'" in result.stdout


@pytest.mark.process
@pytest.mark.slow
def test_check_never_prints_the_password(tmp_path: Path, broker: None) -> None:
    wrong = run("check", "--amqp-url", "amqp://guest:Wr0ng-Pa55@127.0.0.1:5672/", "--port", "0")
    closed = run("check", "--amqp-url", f"amqp://u:Cl0sed-Pa55@127.0.0.1:{free_port()}/")
    for result, secret in ((wrong, "Wr0ng-Pa55"), (closed, "Cl0sed-Pa55")):
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert secret not in output
        assert rows(result.stdout)["broker"] == "FAIL"
    assert "authentication refused" in wrong.stdout
    assert "amqp://u:***@127.0.0.1" in closed.stdout
    assert "Connection refused" in closed.stdout


@pytest.mark.process
def test_check_configuration_error_is_a_fail_row() -> None:
    result = run("check", "--reply-timeout", "40")
    assert result.returncode == 1
    assert rows(result.stdout)["configuration"] == "FAIL"
    assert "reply_timeout must be below dimse_timeout" in result.stdout


class FakeManagement(BaseHTTPRequestHandler):
    """The two GETs of RabbitMQ's management API that ``check`` makes."""

    bindings: list[dict[str, str]] = []  # noqa: RUF012 - set per test
    queues: list[dict[str, Any]] = []  # noqa: RUF012
    seen: list[tuple[str, str]] = []  # noqa: RUF012

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        if "/bindings/source" in self.path:
            body: Any = self.bindings
        elif self.path.startswith("/api/queues/"):
            body = self.queues
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def management() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagement)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.process
def test_check_reads_bindings_from_the_management_api(
    exchange: str, management: str, tmp_path: Path
) -> None:
    declare_exchange(exchange)
    FakeManagement.seen = []
    FakeManagement.bindings = [
        {"routing_key": "c-echo.#", "destination": "live", "destination_type": "queue"},
        {"routing_key": "c-store.*.CT1", "destination": "live", "destination_type": "queue"},
        {"routing_key": "n-action.#", "destination": "idle", "destination_type": "queue"},
    ]
    FakeManagement.queues = [{"name": "live", "consumers": 2}, {"name": "idle", "consumers": 0}]
    table = tmp_path / "ae.json"
    table.write_text('{"STORESCP": {"host": "127.0.0.1", "port": 11113}}')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run(
            "check",
            "--exchange",
            exchange,
            "--host",
            "127.0.0.1",
            "--port",
            str(busy.getsockname()[1]),
            "--bulk-dir",
            str(tmp_path),
            "--ae-table",
            str(table),
            "--sop-classes",
            f"verification,{CT_IMAGE_STORAGE},{STORAGE_COMMITMENT}",
            "--management-url",
            management,
            "--bindings-from",
            "management",
        )
    assert result.returncode == 1, result.stdout
    assert rows(result.stdout) == {
        "configuration": "OK",
        "AE": "OK",
        "bulk": "OK",
        "DICOM": "WARN",  # in use: a bridge may be running
        "broker": "OK",
        "exchange": "OK",
        "c-echo": "OK",
        "c-store": "WARN",  # one calling AE only
        "n-event-report": "FAIL",  # nobody
        "n-action": "WARN",  # bound, but nobody consumes
    }
    assert "1 AE titles" in result.stdout
    assert "queue live (2 consumers) via c-echo.#" in result.stdout
    assert "from management API at " + management in result.stdout
    paths = [path for path, _ in FakeManagement.seen]
    assert f"/api/exchanges/%2F/{quote(exchange, safe='')}/bindings/source" in paths
    credentials = base64.b64encode(b"guest:guest").decode()
    assert all(auth == f"Basic {credentials}" for _, auth in FakeManagement.seen)


@pytest.mark.process
def test_check_says_what_it_could_not_verify(exchange: str, tmp_path: Path) -> None:
    declare_exchange(exchange)
    env_without_rabbitmqctl = {"PATH": os.path.dirname(EXE)}
    result = run(
        "check",
        "--exchange",
        exchange,
        "--port",
        "0",
        "--bulk-dir",
        str(tmp_path),
        "--management-url",
        f"http://127.0.0.1:{free_port()}",
        env=env_without_rabbitmqctl,
    )
    assert result.returncode == 0, result.stdout
    assert rows(result.stdout)["bindings"] == "WARN"
    assert "not verified: management API not reachable" in result.stdout
    assert "rabbitmqctl not found" in result.stdout
    assert "verdict: WARN" in result.stdout


# -- tail --------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.slow
def test_tail_shows_envelopes_with_phi_masked_unless_asked(
    exchange: str, bridge: BridgeHarness, recorder: Recorder
) -> None:
    masked = Tail("c-store.#", "--count", "2", "--exchange", exchange)
    shown = Tail("c-store.#", "--count", "2", "--show-phi", "--compact", "--exchange", exchange)
    try:
        masked.wait_ready()
        shown.wait_ready()
        ct = examples.ct
        with association(bridge.port, [CT_IMAGE_STORAGE]) as assoc:
            assert assoc.send_c_store(ct, msg_id=1).Status == 0
            assert assoc.send_c_store(ct, msg_id=2).Status == 0
        masked_code, masked_out, masked_err = masked.finish()
        shown_code, shown_out, shown_err = shown.finish()
    finally:
        for process in (masked, shown):
            if process.proc.poll() is None:
                process.proc.kill()
    assert masked_code == 0, masked_err
    assert shown_code == 0, shown_err
    assert "stopped after 2 messages" in masked_err
    assert "a request no consumer is bound for comes here" in masked_err
    assert len(recorder.requests) == 2  # tailing took copies, the consumer got both

    headers = [line for line in masked_out.splitlines() if " c-store " in line]
    assert len(headers) == 2, masked_out
    for number, line in enumerate(headers, start=1):
        assert "CT Image Storage [1.2.840.10008.5.1.4.1.1.2]" in line
        assert "from TEST-SCU" in line
        assert f"message-id {number}" in line
        assert f"correlation-id {recorder.requests[number - 1].id}" in line
    assert str(ct.PatientName) not in masked_out
    assert '"00100010": {\n      "vr": "PN",\n      "Value": [\n        "***"' in masked_out
    assert ct.PatientID not in masked_out
    assert "base64 characters; --binary shows them" in masked_out

    lines = shown_out.splitlines()
    assert len(lines) == 4, shown_out  # --compact: a header line and one line of JSON each
    assert str(ct.PatientName) in lines[1]
    assert json.loads(lines[3])["dataset"]["00100020"]["Value"] == [ct.PatientID]


@pytest.mark.process
def test_tail_stops_cleanly_on_ctrl_c(exchange: str) -> None:
    process = Tail("--exchange", exchange, "c-store.#")
    process.wait_ready()
    assert "'c-store.#' and 'cancel.c-store.#'" in "".join(process.stderr)
    process.proc.send_signal(signal.SIGINT)
    code, _, err = process.finish(timeout=10)
    assert code == 0, err
    assert "stopped after 0 messages" in err
    assert "Traceback" not in err


@pytest.mark.process
def test_tail_with_the_broker_unreachable_says_so_in_one_line() -> None:
    url = f"amqp://guest:Ta1l-Pa55@127.0.0.1:{free_port()}/"
    result = run("tail", "--amqp-url", url, "--count", "1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("dicom-bridge: error: cannot reach the broker at amqp://")
    assert "Ta1l-Pa55" not in result.stderr


# -- the pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("#", "c-store.1_2.AE", True),
        ("c-store.#", "c-store.1_2.AE", True),
        ("c-store.*", "c-store.1_2.AE", False),
        ("c-store.*.*", "c-store.1_2.AE", True),
        ("*.1_2.#", "c-find.1_2.AE", True),
        ("#.AE", "c-find.1_2.AE", True),
        ("#.AE", "c-find.1_2.BE", False),
        ("c-store.#.AE", "c-store.AE", True),
        ("cancel.#", "c-store.1_2.AE", False),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_tail_binds_cancel_notices_of_what_it_shows() -> None:
    assert tail.tail_bindings("#") == ["#"]
    assert tail.tail_bindings("c-find.#") == ["c-find.#", "cancel.c-find.#"]
    assert tail.tail_bindings("cancel.#") == ["cancel.#"]


def test_accepted_services_follow_the_sop_classes() -> None:
    uids = ["1.2.840.10008.1.1", CT_IMAGE_STORAGE, STORAGE_COMMITMENT]
    uids += ["1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.31"]  # study MOVE, MWL FIND
    assert accepted_services(uids) == {
        Service.C_ECHO: ["1.2.840.10008.1.1"],
        Service.C_STORE: [CT_IMAGE_STORAGE],
        Service.C_FIND: ["1.2.840.10008.5.1.4.31"],
        Service.C_MOVE: ["1.2.840.10008.5.1.4.1.2.2.2"],
        Service.N_EVENT_REPORT: [STORAGE_COMMITMENT],
        Service.N_ACTION: [STORAGE_COMMITMENT],
    }
    assert services_of("1.2.3.4.5") == ()  # not a SOP class pynetdicom knows


def test_phi_tags_are_named_as_in_the_dictionary() -> None:
    for tag, keyword in tail.PHI_TAGS.items():
        assert keyword_for_tag(int(tag, 16)) == keyword, tag


def test_mask_reaches_into_sequences_and_keeps_the_rest() -> None:
    document = {
        "id": "x",
        "identifier": {
            "00080052": {"vr": "CS", "Value": ["STUDY"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["PID-1"]},
            "00100030": {"vr": "DA"},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00101002": {"vr": "SQ", "Value": [{"00100020": {"vr": "LO", "Value": ["X"]}}]},
            "00400275": {
                "vr": "SQ",
                "Value": [{"00321032": {"vr": "PN", "Value": [{"Alphabetic": "Dr^Who"}]}}],
            },
            "7FE00010": {"vr": "OW", "InlineBinary": "A" * 100},
        },
    }
    masked = tail.mask(document)
    identifier = masked["identifier"]
    assert identifier["00080052"] == {"vr": "CS", "Value": ["STUDY"]}
    assert identifier["00100010"] == {"vr": "PN", "Value": ["***"]}
    assert identifier["00100020"] == {"vr": "LO", "Value": ["***"]}
    assert identifier["00100030"] == {"vr": "DA"}  # an empty query key stays visible
    assert identifier["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert identifier["00101002"] == {"vr": "SQ", "Value": ["***"]}
    assert identifier["00400275"]["Value"][0]["00321032"]["Value"] == ["***"]
    assert identifier["7FE00010"]["InlineBinary"].startswith("<100 base64 characters")
    assert tail.mask(document, show_phi=True, binary=True) == document
    assert "Doe^Jane" in json.dumps(document)  # the original is untouched


@dataclass
class Delivered:
    body: bytes
    routing_key: str | None = None
    correlation_id: str | None = None
    timestamp: datetime | None = None


def test_render_cancel_notices_and_garbage() -> None:
    cancel = Delivered(
        b'{"version": 1, "type": "cancel", "id": "abc", "service": "c-find"}',
        routing_key="cancel.c-find.1_2.AE",
        correlation_id="abc",
        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    text = tail.render(cancel, compact=True, show_phi=False, binary=False)
    first, second = text.splitlines()
    assert first.startswith("2026-01-02T03:04:05.000000Z  cancel c-find  cancel.c-find.1_2.AE")
    assert "correlation-id abc" in first
    assert json.loads(second)["type"] == "cancel"
    garbage = tail.render(Delivered(b"\x00\x01", "k"), compact=False, show_phi=False, binary=False)
    assert garbage == "k  (2 bytes, not a JSON object)"


@pytest.mark.process
@pytest.mark.slow
def test_check_examines_a_receive_directory_of_its_own(exchange: str, tmp_path: Path) -> None:
    declare_exchange(exchange)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    failed = rows(_check(exchange, tmp_path, "--receive-dir", str(not_a_directory)).stdout)
    assert failed["receive"] == "FAIL"
    assert failed["bulk"] == "OK"
    fine = rows(_check(exchange, tmp_path, "--receive-dir", str(tmp_path / "receiving")).stdout)
    assert fine["receive"] == "OK"
    # Default (inside the bulk directory) or receiving in memory: nothing of its own.
    assert "receive" not in rows(_check(exchange, tmp_path).stdout)
    off = _check(exchange, tmp_path, "--receive-dir", str(not_a_directory), "--no-receive-to-disk")
    assert "receive" not in rows(off.stdout)
    assert rows(off.stdout)["bulk"] == "OK", off.stdout + off.stderr
