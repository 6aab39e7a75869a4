"""Stream C-FIND matches through the bridge and through an in-process pynetdicom SCP.

    .venv/bin/python bench/find_stream.py [--matches 10000] [--runs 3]

Starts, on 127.0.0.1 and each in a process of its own: the bridge (``dicom-bridge serve``),
a consumer that yields ``--matches`` study-level matches (the SDK), and a stock pynetdicom
SCP whose C-FIND handler yields the same matches in-process. A pynetdicom SCU in this
process queries each, alternating runs so that machine drift cancels, and prints
matches/s and the time to the first match, with the bridge/in-process ratios. Needs the
broker on 127.0.0.1:5672.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from benchlib import free_port, wait_port
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as FIND,
)

AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXE = str(Path(sys.executable).with_name("dicom-bridge"))


def matches(count: int) -> Iterator[Dataset]:
    for n in range(count):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientName = f"Patient^{n}"
        ds.PatientID = f"ID{n:06d}"
        ds.StudyDate = "20260101"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{n + 1}"
        yield ds


# -- roles run as child processes ---------------------------------------------------------


def run_native_scp(port: int, count: int) -> None:
    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        for ds in matches(count):
            yield 0xFF00, ds

    ae = AE("NATIVE")
    ae.add_supported_context(FIND)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_FIND, on_find)])


def run_consumer(exchange: str, count: int) -> None:
    from bridge.protocol.model import Service
    from bridge.sdk.consumer import Consumer, Request

    app = Consumer(AMQP_URL, exchange, f"bench-{uuid.uuid4().hex[:8]}", exclusive=True)

    def find(request: Request) -> Iterator[Dataset]:
        return matches(count)

    app.add(Service.C_FIND, find)
    print("consumer ready", flush=True)
    app.run_forever()


# -- the measurement ----------------------------------------------------------------------


def query(port: int, called: str) -> tuple[int, float, float]:
    """(matches, seconds to the first, seconds in all) for one C-FIND."""
    ae = AE("BENCH")
    ae.add_requested_context(FIND)
    ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientName = ""
    started = time.perf_counter()
    first = 0.0
    count = 0
    for status, _ in assoc.send_c_find(identifier, FIND):
        if status.Status in (0xFF00, 0xFF01):
            if count == 0:
                first = time.perf_counter() - started
            count += 1
    total = time.perf_counter() - started
    assoc.release()
    ae.shutdown()
    return count, first, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matches", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--role", choices=["native", "consumer"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--exchange", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "native":
        run_native_scp(args.port, args.matches)
        return
    if args.role == "consumer":
        run_consumer(args.exchange, args.matches)
        return

    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    native_port, bridge_port = free_port(), free_port()
    me = [sys.executable, __file__, "--matches", str(args.matches)]
    bridge_args = ["--host", "127.0.0.1", "--port", str(bridge_port), "--exchange", exchange]
    bridge_args += ["--reply-timeout", "20"]
    env = {**os.environ, "BRIDGE_LOG_LEVEL": "WARNING"}
    children = [
        subprocess.Popen([*me, "--role", "native", "--port", str(native_port)]),
        subprocess.Popen([EXE, "serve", *bridge_args], env=env),
        subprocess.Popen(
            [*me, "--role", "consumer", "--exchange", exchange], env=env, stdout=subprocess.PIPE
        ),
    ]
    try:
        wait_port(native_port)
        wait_port(bridge_port)
        assert children[2].stdout is not None
        children[2].stdout.readline()
        time.sleep(1.0)  # the consumer's queue is bound
        results: dict[str, list[tuple[int, float, float]]] = {"native": [], "bridge": []}
        targets = [("native", native_port, "NATIVE"), ("bridge", bridge_port, "DICOM-BRIDGE")]
        for run in range(args.runs):
            # Alternate the order so that machine drift cancels.
            for name, port, called in targets if run % 2 == 0 else targets[::-1]:
                results[name].append(query(port, called))
        print(f"{args.matches} C-FIND matches, {args.runs} runs each, median:")
        print(f"{'':10}{'matches/s':>12}{'first match ms':>16}")
        rates = {}
        firsts = {}
        for name, runs in results.items():
            assert all(n == args.matches for n, _, _ in runs), runs
            rates[name] = statistics.median(n / total for n, _, total in runs)
            firsts[name] = statistics.median(first for _, first, _ in runs) * 1000
            print(f"{name:10}{rates[name]:12.0f}{firsts[name]:16.1f}")
        print(
            f"bridge/native: {rates['bridge'] / rates['native']:.2f}x matches/s, "
            f"{firsts['bridge'] / firsts['native']:.2f}x time to first match"
        )
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        asyncio.run(_delete_exchange(exchange))


async def _delete_exchange(name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


if __name__ == "__main__":
    main()
