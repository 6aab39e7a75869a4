"""The Node.js example consumer (examples/node-consumer) behind a real bridge: a pynetdicom
SCU and DCMTK's storescu talk to the bridge, the bridge to RabbitMQ, RabbitMQ to
``node consumer.js``. Node is required: CI installs it (scripts/setup.sh)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
)

from bridge.protocol import part10
from tests.conftest import BridgeFactory
from tests.harness import (
    AMQP_URL,
    TRANSACTION_UID,
    BridgeHarness,
    association,
    commitment_info,
    free_port,
)
from tests.schemas import validate_envelope, validate_reply
from tests.waiting import eventually

pytestmark = pytest.mark.process  # every test here starts a process

CONSUMER_DIR = Path(__file__).resolve().parent.parent / "examples" / "node-consumer"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
# The patient names of CT_small.dcm and MR_small.dcm ("CompressedSamples^CT1", ...) and
# their Patient IDs: none may reach the consumer's log.
PATIENT_DATA = ("CompressedSamples", "1CT1", "4MR1")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise AssertionError(
            "node is not installed: the Node.js example consumer needs Node.js 18+ "
            "(scripts/setup.sh installs Debian's nodejs and npm)"
        )
    if not (CONSUMER_DIR / "node_modules" / "amqplib").is_dir():
        raise AssertionError(
            f"{CONSUMER_DIR}/node_modules is missing: run "
            "`npm ci --prefix examples/node-consumer` (scripts/setup.sh does)"
        )
    return node


class NodeConsumer:
    """``node consumer.js`` in a subprocess; its stdout and stderr collected line by line."""

    def __init__(self, exchange: str, **env: str) -> None:
        environment = {
            **os.environ,
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_EXCHANGE": exchange,
            "BRIDGE_QUEUE": f"test-node-{uuid.uuid4().hex[:8]}",
            "BRIDGE_EXCLUSIVE": "1",
            **env,
        }
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [_node(), "consumer.js"],
            cwd=CONSUMER_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="node-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first output line containing ``text``; fails after ``timeout`` or at exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no {text!r} from the node consumer:\n{self.output}")
                self._changed.wait(remaining)

    def wait_ready(self) -> None:
        self.wait_for("ready: consuming")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and wait for the exit code; the output is complete afterwards."""
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)


StartNode = Callable[..., NodeConsumer]


@pytest.fixture
def start_node(exchange: str) -> Iterator[StartNode]:
    started: list[NodeConsumer] = []

    def start(wait: bool = True, **env: str) -> NodeConsumer:
        consumer = NodeConsumer(exchange, **env)
        started.append(consumer)
        if wait:
            consumer.wait_ready()
        return consumer

    yield start
    for consumer in started:
        consumer.kill()


def _test_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def _assert_clean_exit(consumer: NodeConsumer) -> None:
    started = time.monotonic()
    code = consumer.stop(signal.SIGTERM, timeout=5)
    assert code == 0, consumer.output
    assert time.monotonic() - started < 5
    assert "stopped" in consumer.output
    for value in PATIENT_DATA:
        assert value not in consumer.output, f"patient data {value!r} logged:\n{consumer.output}"


def test_n_event_report_storage_commitment(bridge: BridgeHarness, start_node: StartNode) -> None:
    consumer = start_node()
    with association(bridge.port, [StorageCommitmentPushModel]) as assoc:
        status, reply = assoc.send_n_event_report(
            commitment_info(), 1, StorageCommitmentPushModel, INSTANCE
        )
        assert status.Status == 0x0000
        assert reply is not None
        assert reply.TransactionUID == TRANSACTION_UID
        assert len(reply) == 1  # the Event Reply holds just the echoed Transaction UID

        status, reply = assoc.send_n_event_report(
            commitment_info(), 3, StorageCommitmentPushModel, INSTANCE
        )
        assert status.Status == 0x0113
        assert status.ErrorComment == "no such event type"
        assert reply is None
    line = consumer.wait_for("event 1 from TEST-SCU")
    assert f"transaction {TRANSACTION_UID}, 1 committed, 0 failed" in line
    assert "no such event type" in consumer.wait_for("event 3 from TEST-SCU")
    _assert_clean_exit(consumer)


def test_storescu_two_files_then_sigterm(
    bridge: BridgeHarness, start_node: StartNode, tmp_path: Path
) -> None:
    storescu = shutil.which("storescu")
    assert storescu is not None, "storescu not installed: DCMTK is required (apt install dcmtk)"
    consumer = start_node()
    files = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        files.append(tmp_path / name)
        shutil.copy(_test_file(name), files[-1])
    result = subprocess.run(
        [storescu, "-v", "-aet", "MODALITY", "-aec", "DICOM-BRIDGE", "127.0.0.1",
         str(bridge.port), *map(str, files)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Received Store Response (Success)") == 2, output
    for path in files:
        original = dcmread(path, stop_before_pixels=True)
        line = consumer.wait_for(original.SOPInstanceUID)
        assert line.startswith(f"C-STORE {original.SOPClassUID} {original.Modality} ")
        assert "from MODALITY" in line
    assert "2 instance(s) known" in consumer.output
    _assert_clean_exit(consumer)


def test_c_store_bulk_data_is_claimed_and_deleted(
    make_bridge: BridgeFactory, start_node: StartNode, tmp_path: Path
) -> None:
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    bridge = make_bridge(bulk_dir=str(bulk), bulk_threshold=1024)
    bridge.wait_ready()
    consumer = start_node(BRIDGE_BULK_DIR=str(bulk))
    original = dcmread(_test_file("CT_small.dcm"))
    with association(bridge.port, [CTImageStorage]) as assoc:
        assert assoc.send_c_store(original).Status == 0x0000
    line = consumer.wait_for(original.SOPInstanceUID)
    # Pixel Data and any other binary value over the threshold came as file:// URIs.
    found = re.search(r", (\d+) bulk file\(s\), (\d+) bytes,", line)
    assert found is not None, line
    assert int(found[1]) >= 1
    assert int(found[2]) >= len(original.PixelData)
    # Claim-check files only: the bridge receives data sets into the .receiving directory.
    eventually(
        lambda: not [p for p in bulk.iterdir() if p.is_file()],
        lambda: f"claim-check files deleted; left: {[p.name for p in bulk.iterdir()]}",
    )
    assert not [p for p in bulk.iterdir() if p.is_file()], "claim-check file not deleted"


HEADER = part10.header(
    sop_class_uid=str(CTImageStorage),
    sop_instance_uid="1.2.3.4",
    transfer_syntax="1.2.840.10008.1.2.1",
    implementation_class_uid="1.2.3",
)


def _envelope(deadline: datetime, **fields: Any) -> dict[str, Any]:
    def stamp(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    envelope: dict[str, Any] = {
        "version": 1,
        "id": str(uuid.uuid4()),
        "service": "n-event-report",
        "event": "EVT_N_EVENT_REPORT",
        "timestamp": stamp(datetime.now(UTC)),
        "deadline": stamp(deadline),
        "association": {
            "id": str(uuid.uuid4()),
            "calling_ae": "RAW",
            "called_ae": "DICOM-BRIDGE",
            "peer": {"address": "127.0.0.1", "port": 40000},
        },
        "context": {
            "id": 1,
            "abstract_syntax": str(StorageCommitmentPushModel),
            "transfer_syntax": "1.2.840.10008.1.2.1",
        },
        "sop_class_uid": str(StorageCommitmentPushModel),
        "request": {"message_id": 1, "event_type_id": 1},
        "event_information": None,
    }
    envelope.update(fields)
    return envelope


async def _exchange_envelopes(
    exchange_name: str, envelopes: list[dict[str, Any]], expected: int
) -> list[tuple[str, dict[str, Any]]]:
    """Publish ``envelopes`` as the bridge would; the replies that came back, in order."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        replies = await channel.declare_queue("", exclusive=True)
        for envelope in envelopes:
            sop_class = envelope["sop_class_uid"].replace(".", "_")
            await exchange.publish(
                aio_pika.Message(
                    json.dumps(envelope).encode(),
                    correlation_id=envelope["id"],
                    reply_to=replies.name,
                    content_type="application/json",
                ),
                routing_key=f"{envelope['service']}.{sop_class}.RAW",
                mandatory=True,
            )
        received: list[tuple[str, dict[str, Any]]] = []
        async with replies.iterator(timeout=5) as messages:
            async for message in messages:
                await message.ack()
                assert message.content_type == "application/json"
                received.append((message.correlation_id or "", json.loads(message.body)))
                if len(received) == expected:
                    break
        return received


def test_raw_envelopes_expired_invalid_valid_and_store_without_uid(
    exchange: str, start_node: StartNode
) -> None:
    """Envelopes the bridge would not send from a pynetdicom peer, published by hand."""
    consumer = start_node()
    now = datetime.now(UTC)
    later = now + timedelta(seconds=10)
    expired = _envelope(now - timedelta(seconds=1))
    invalid = _envelope(later, request={"event_type_id": 1})  # no message_id
    valid = _envelope(later)
    no_uid = _envelope(  # pynetdicom refuses to send a dataset without SOP Instance UID
        later,
        service="c-store",
        event="EVT_C_STORE",
        sop_class_uid=str(CTImageStorage),
        context={"id": 1, "abstract_syntax": str(CTImageStorage),
                 "transfer_syntax": "1.2.840.10008.1.2.1"},
        request={"message_id": 2, "priority": 0,
                 "affected_sop_class_uid": str(CTImageStorage)},
        dataset={"00080060": {"vr": "CS", "Value": ["CT"]},
                 "00100010": {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^RAW"}]}},
        file_meta={},
        part10=part10.inline_json(HEADER + b"\x08\x00\x60\x00CS\x02\x00CT", len(HEADER)),
    )  # fmt: skip
    del no_uid["event_information"]
    for envelope in (expired, valid, no_uid):
        validate_envelope(envelope)
    replies = asyncio.run(
        _exchange_envelopes(exchange, [expired, invalid, valid, no_uid], expected=3)
    )
    consumer.wait_for(f"skipped n-event-report {expired['id']}: past its deadline")
    by_id = dict(replies)
    assert set(by_id) == {invalid["id"], valid["id"], no_uid["id"]}, replies
    for reply in by_id.values():
        validate_reply(reply)
    assert by_id[valid["id"]] == {"status": 0}  # no Transaction UID to echo
    assert by_id[invalid["id"]] == {"status": 0x0110, "error_comment": "envelope fails the schema"}
    assert by_id[no_uid["id"]]["status"] == 0xA900
    assert "SOP Instance UID" in by_id[no_uid["id"]]["error_comment"]
    assert "fails the schema: /request must have required property" in consumer.output
    assert "no SOP Instance UID, refused" in consumer.output
    _assert_clean_exit(consumer)


def test_unreachable_broker_is_a_clear_error(exchange: str, start_node: StartNode) -> None:
    consumer = start_node(
        wait=False, BRIDGE_AMQP_URL=f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    )
    assert consumer.process.wait(10) != 0
    consumer.kill()  # joins the reader: the output is complete
    assert "error: cannot connect to the broker at amqp://guest:***@127.0.0.1:" in consumer.output
    assert "secret" not in consumer.output
