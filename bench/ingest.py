"""Ingest: DCMTK's storescu sending CT images to five receivers, side by side, one command.

    .venv/bin/python bench/ingest.py                 # about 4.5 minutes on 2 cores
    .venv/bin/python bench/ingest.py --quick         # 1 run, a 10 MB large instance: ~2 min
    .venv/bin/python bench/ingest.py --envelopes-only   # only the envelope table: seconds
    .venv/bin/python bench/ingest.py --images 400 --large-mb 200 --consumer-processes 2

Starts, on 127.0.0.1 and free ports, each writing what it receives into a directory of its
own: (1) DCMTK's ``storescp -od DIR`` (its defaults: one process, one association at a
time), (2) Orthanc from Debian's package with a configuration written here (files plus its
SQLite index), (3) a pynetdicom SCP with the bridge's socket tuning (``bridge.scp.netopt``,
as ``bench/run.py``'s "(b) tuned") that receives each data set into a file and moves it
into its directory, and the bridge (``dicom-bridge serve``) with the example consumer
(``dicom-bridge example-consumer --data-dir``), sharing a claim-check directory, twice:
(4) ``bridge``, the example consumer as shipped (a quorum queue, one process;
``--consumer-processes N`` passes ``--processes N``), and (5) ``bridge-fast``, the example
consumer configured for throughput (``--queue-type classic --processes 2``). Each bridge
has its own exchange, queue and directories.

Stock storescu then sends N distinct copies of pydicom's CT_small, (a) over one
association, (b) over four associations at once (four storescu processes); every run uses
new SOP Instance UIDs and the order of the receivers rotates from run to run, so that
machine drift cancels. After each send the receiver must hold N more instances (files, or
Orthanc's ``/statistics``), else its row fails and gets no number. CPU time per image of
every process involved is read from /proc: storescu, the receiver, and for the bridges the
consumer (all its processes) and the RabbitMQ node (beam.smp). Then one large instance
is sent to each receiver: MB/s, and the receiver's idle and peak RSS. Every bridge target
(rates, ratios to Orthanc and to the tuned SCP, peak RSS) is evaluated for both bridge
rows.

The floor, measured in the same run (``DESIGN.md``: a target below a physical floor is
shown against it): the broker round trip of a C-STORE envelope of CT_small (built by the
bridge's code) published confirmed and mandatory as the bridge publishes it, answered by
a bare aio-pika echo consumer in a child process, through a quorum and a classic queue
(median and p90 over 300 sequential requests after a warm-up, the queue types alternating
in blocks). One association cannot beat the tuned SCP's time per image plus that round
trip (the row's queue type): the images/s ceiling this implies is printed next to the
bridge's rate and its target. For four associations, CPU ms per image summed over every
process is set against the cores spread over the target rate (2 cores / 250 images/s =
8 ms per image).

Envelopes, in this process: for pydicom's CT_small, MR_small and JPEG2000 (those present)
the C-STORE envelope with the Part 10 file inline, built by the bridge's code two ways:
values over ``received.REFERENCE_MIN`` bytes as references into the Part 10 file (what the
bridge sends) or as base64 copies in ``dataset``. Body size, CPU per build
(``time.process_time``, 200 builds per way, the ways alternating in blocks) and CPU per
``orjson.loads`` of the body (the consumer's first step): why large values are
references (``docs/protocol.md``).

Prints Markdown tables with the targets and writes ``bench/results/ingest-<timestamp>.json``
(``ingest-envelopes-<timestamp>.json`` with ``--envelopes-only``). Needs RabbitMQ on
127.0.0.1:5672, DCMTK and Orthanc (``scripts/setup.sh`` installs both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib as lib

HERE = Path(__file__).resolve().parent
ORTHANC = "/usr/sbin/Orthanc"
LOADS = (1, 4)
KEYS = ("storescp", "orthanc", "tuned", "bridge", "bridge-fast")
BRIDGES = ("bridge", "bridge-fast")
"""The bridge rows: the example consumer as shipped (a quorum queue, one process, or
``--consumer-processes``), and configured for throughput (:data:`FAST_FLAGS`)."""
FAST_FLAGS = ("--queue-type", "classic", "--processes", "2")
QUEUE_TYPE = {"bridge": "quorum", "bridge-fast": "classic"}
"""The example consumer's queue type in each bridge row (its default is quorum)."""
RATE_TARGETS = {1: 150.0, 4: 250.0}
"""images/s the bridge rows should reach, by associations."""
FLOOR_REQUESTS = 300
FLOOR_WARM_UP = 50
FLOOR_BLOCK = 50
ENVELOPE_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
ENVELOPE_WAYS = ("references", "copies")
ENVELOPE_BLOCKS = 10
ENVELOPE_BLOCK = 20
"""Builds per way = blocks x block; each block times one way, the ways alternating."""
LOADS_PER_BUILD = 5
"""orjson.loads timed per build timed (they are much cheaper)."""
WARM_UP_IMAGES = 8
ROLE_ORDER = ["storescu", "receiver", "consumer", "broker"]
STORED_WAIT_S = 10.0
SEND_TIMEOUT_S = 600.0


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- receivers ----------------------------------------------------------------------------


@dataclass
class Receiver:
    key: str
    label: str
    port: int
    called: str
    pids: dict[str, int]
    """Role -> pid (its descendants count with it): "receiver", and for the bridge
    "consumer"."""
    count: Callable[[], int]
    """Instances it holds now."""
    note: str = ""
    broker: bool = False
    """Its requests go through RabbitMQ: the broker's CPU time counts for it."""


def count_part10(directory: Path) -> int:
    """Files under ``directory`` that are DICOM Part 10 files (``DICM`` after the
    preamble); hidden and temporary names are left out."""
    total = 0
    for path in directory.rglob("*"):
        if path.name.startswith(".") or path.suffix in (".tmp", ".part"):
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                with path.open("rb") as file:
                    if file.read(132)[128:] == b"DICM":
                        total += 1
    return total


def echo_ok(port: int, called: str) -> bool:
    done = subprocess.run(
        ["echoscu", "-aet", lib.CALLING_AE, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done.returncode == 0


def last_line(path: Path) -> str:
    """The last line a child wrote to its log (why it exited), shortened."""
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1].strip()[:200]
    return ""


def wait_echo(
    port: int, called: str, child: subprocess.Popen[Any], log_path: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(
                f"{called} exited with {child.returncode} before answering: {last_line(log_path)}"
            )
        if echo_ok(port, called):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{called} on {port} does not answer C-ECHO")


@dataclass
class Started:
    """Everything the run started or declared, undone in :func:`stop_all`."""

    children: list[subprocess.Popen[Any]] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)

    def spawn(self, command: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[Any]:
        out = log_path.open("ab")
        try:
            child = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
            )
        finally:
            out.close()
        self.children.append(child)
        return child


def stop_all(started: Started) -> None:
    """SIGTERM every child, wait, SIGKILL what is left; then the descendants they left
    behind (by pid, as read before), and the broker objects of the run."""
    descendants = [
        pid
        for child in started.children
        if child.poll() is None
        for pid in lib.process_tree(child.pid)[1:]
    ]
    lib.stop_processes(started.children)
    for pid in descendants:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    lib.delete_broker_objects(started.exchanges, started.queues)


def start_storescp(tmp: Path, started: Started) -> Receiver:
    home = tmp / "storescp"
    store = home / "store"
    store.mkdir(parents=True)
    port = lib.free_port()
    log_path = home / "storescp.log"
    child = started.spawn(["storescp", "-od", str(store), str(port)], log_path)
    wait_echo(port, "STORESCP", child, log_path)
    return Receiver(
        "storescp",
        "DCMTK storescp",
        port,
        "STORESCP",
        {"receiver": child.pid},
        lambda: count_part10(store),
        "`storescp -od DIR PORT`: one process, associations one after another",
    )


def orthanc_config(home: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    return {
        "Name": "dicom-bridge-ingest-bench",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
    }


def orthanc_get(http_port: int, path: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{http_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        value: dict[str, Any] = json.loads(response.read())
    return value


def start_orthanc(tmp: Path, started: Started) -> Receiver:
    if not Path(ORTHANC).exists():
        raise RuntimeError(f"{ORTHANC} is missing (scripts/setup.sh installs Debian's orthanc)")
    home = tmp / "orthanc"
    home.mkdir()
    port, http_port = lib.free_port(), lib.free_port()
    config = home / "config.json"
    config.write_text(json.dumps(orthanc_config(home, port, http_port), indent=2))
    log_path = home / "orthanc.log"
    child = started.spawn([ORTHANC, str(config)], log_path, cwd=home)
    wait_echo(port, "ORTHANC", child, log_path)

    def count() -> int:
        return int(orthanc_get(http_port, "/statistics")["CountInstances"])

    count()  # its REST API answers too
    return Receiver(
        "orthanc",
        f"Orthanc {tool_version([ORTHANC, '--version'])}",
        port,
        "ORTHANC",
        {"receiver": child.pid},
        count,
        "Debian's package, default settings but the ports and directories: files plus its "
        "SQLite index; instances counted by `GET /statistics`",
    )


def start_tuned(tmp: Path, started: Started) -> Receiver:
    home = tmp / "tuned"
    store, temporary = home / "store", home / "tmp"
    store.mkdir(parents=True)
    temporary.mkdir()
    port = lib.free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--role", "tuned-scp"]
    command += ["--port", str(port), "--write-dir", str(store)]
    env = {**lib.quiet_env(), "TMPDIR": str(temporary)}  # the same filesystem as the store
    log_path = home / "scp.log"
    child = started.spawn(command, log_path, env=env)
    wait_echo(port, "TUNED", child, log_path)
    return Receiver(
        "tuned",
        "pynetdicom SCP, tuned",
        port,
        "TUNED",
        {"receiver": child.pid},
        lambda: count_part10(store),
        "pynetdicom AE, StoragePresentationContexts, TCP_NODELAY + TCP_QUICKACK as "
        "bench/run.py's (b); each data set received into a file "
        "(STORE_RECV_CHUNKED_DATASET) that the handler moves into its directory",
    )


def start_bridge(
    tmp: Path, started: Started, key: str, consumer_flags: Sequence[str], label: str
) -> Receiver:
    """``dicom-bridge serve`` and ``dicom-bridge example-consumer`` (with
    ``consumer_flags``) on an exchange, queue and claim-check directory of their own."""
    home = tmp / key
    store, bulk = home / "store", home / "bulk"
    home.mkdir()
    exchange = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-example"
    started.exchanges.append(exchange)
    started.queues.append(queue)
    port = lib.free_port()
    bridge = started.spawn(
        lib.bridge_command(port, exchange, bulk), home / "bridge.log", env=lib.bridge_env(home)
    )
    command = [lib.BRIDGE_EXE, "example-consumer", "--exchange", exchange, "--queue", queue]
    command += ["--data-dir", str(store), "--bulk-dir", str(bulk), *consumer_flags]
    env = {**lib.quiet_env(), "XDG_CACHE_HOME": str(home / "cache")}
    consumer = started.spawn(command, home / "consumer.log", env=env)
    deadline = time.monotonic() + 60
    while True:  # the consumer's queue must be bound before anything is sent
        for child, name, log_path in (
            (bridge, "the bridge", home / "bridge.log"),
            (consumer, "the example consumer", home / "consumer.log"),
        ):
            if child.poll() is not None:
                why = last_line(log_path)
                raise RuntimeError(f"{name} exited with {child.returncode}: {why}")
        try:
            lib.wait_success(port, lib.BRIDGE_AE, timeout=5)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
    flags = "".join(f" {flag}" for flag in consumer_flags)
    defaults = "" if "--queue-type" in consumer_flags else " (its default: a quorum queue)"
    return Receiver(
        key,
        label,
        port,
        lib.BRIDGE_AE,
        {"receiver": bridge.pid, "consumer": consumer.pid},
        lambda: count_part10(store),
        "`dicom-bridge serve` (as bench/run.py starts it) and `dicom-bridge example-consumer "
        f"--data-dir DIR{flags}`{defaults}, one claim-check directory; broker CPU is the "
        "RabbitMQ node's",
        broker=True,
    )


def bridge_label(key: str, consumer_processes: int) -> str:
    if key == "bridge-fast":
        return f"bridge-fast: bridge + example consumer {' '.join(FAST_FLAGS)}"
    processes = f", {consumer_processes} consumer processes" if consumer_processes > 1 else ""
    return f"bridge + example consumer{processes}"


def consumer_flags(key: str, consumer_processes: int) -> list[str]:
    if key == "bridge-fast":
        return list(FAST_FLAGS)
    return ["--processes", str(consumer_processes)] if consumer_processes > 1 else []


# -- sending ------------------------------------------------------------------------------


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` groups of (nearly) equal size, in order."""
    size, extra = divmod(len(files), parts)
    groups, start = [], 0
    for n in range(parts):
        end = start + size + (1 if n < extra else 0)
        groups.append(list(files[start:end]))
        start = end
    return [group for group in groups if group]


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (the storescu processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    """One send to one receiver."""

    images: int
    associations: int
    elapsed: float
    stored: int
    cpu_s: dict[str, float]
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors and self.stored >= self.images

    @property
    def rate(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0


def send(
    receiver: Receiver, files: Sequence[Path], associations: int, broker_pid: int | None
) -> Sample:
    """``files`` to ``receiver`` by ``associations`` storescu processes started together;
    wall time from the first start to the last exit. Then wait (a little) until the
    receiver holds them all."""
    storescu = lib.dcmtk_storescu()
    errors: list[str] = []
    before = receiver.count()
    pids = dict(receiver.pids)
    if broker_pid is not None and receiver.broker:
        pids["broker"] = broker_pid
    cpu0 = {role: lib.tree_cpu_seconds(pid) for role, pid in pids.items()}
    client0 = children_cpu_seconds()
    command = [storescu, "-aet", lib.CALLING_AE, "-aec", receiver.called]
    command += ["127.0.0.1", str(receiver.port)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [*command, *map(str, group)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for group in split(files, associations)
    ]
    try:
        for sender in senders:
            try:
                output, _ = sender.communicate(timeout=SEND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                sender.kill()
                output, _ = sender.communicate()
                errors.append("storescu timed out")
            text = output.decode(errors="replace")
            if sender.returncode != 0 or "E: " in text or "F: " in text:
                errors.append(f"storescu exit {sender.returncode}: {text.strip()[:300]}")
    finally:  # interrupted: no storescu outlives the run
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    elapsed = time.perf_counter() - started
    client = children_cpu_seconds() - client0
    stored = receiver.count() - before
    deadline = time.monotonic() + STORED_WAIT_S
    while stored < len(files) and time.monotonic() < deadline:
        time.sleep(0.05)
        stored = receiver.count() - before
    cpu = {role: lib.tree_cpu_seconds(pid) - cpu0[role] for role, pid in pids.items()}
    cpu = {"storescu": client, **cpu}
    return Sample(len(files), associations, elapsed, stored, cpu, errors)


@dataclass
class Large:
    """One large instance sent to one receiver."""

    elapsed: float
    stored: int
    idle_rss_mb: dict[str, float]
    peak_rss_mb: dict[str, float]
    peak_reset: bool
    errors: list[str]


def send_large(receiver: Receiver, path: Path) -> Large:
    """The large instance on one association; idle RSS (VmRSS) just before, peak RSS
    (VmHWM, reset to the current RSS just before where the kernel allows) after; both the
    largest over the role's processes."""
    idle: dict[str, float] = {}
    reset = True
    for role, pid in receiver.pids.items():
        idle[role] = lib.tree_memory_kib(pid, "VmRSS") / 1024
        for member in lib.process_tree(pid):
            reset = lib.reset_peak_rss(member) and reset
    sample = send(receiver, [path], 1, None)
    peak = {role: lib.tree_memory_kib(pid, "VmHWM") / 1024 for role, pid in receiver.pids.items()}
    return Large(sample.elapsed, sample.stored, idle, peak, reset, sample.errors)


# -- the floor: the broker round trip of a C-STORE envelope -------------------------------


async def _round_trips(
    queues: dict[str, str], body: bytes, headers: dict[str, Any], requests: int
) -> dict[str, list[float]]:
    """``requests`` sequential round trips of ``body`` per queue type (``queues``: type
    -> queue name), after a warm-up, in blocks that alternate the queue types."""
    latencies: dict[str, list[float]] = {kind: [] for kind in queues}
    async with lib.RoundTrips() as trips:
        for queue in queues.values():
            for _ in range(FLOOR_WARM_UP):
                await trips.once(queue, body, headers, kind="c-store")
        order = list(queues)
        block = 0
        while min(len(v) for v in latencies.values()) < requests:
            for kind in order if block % 2 == 0 else order[::-1]:
                for _ in range(min(FLOOR_BLOCK, requests - len(latencies[kind]))):
                    latencies[kind].append(
                        await trips.once(queues[kind], body, headers, kind="c-store")
                    )
            block += 1
    return latencies


def measure_floor(body: bytes, headers: dict[str, Any], requests: int) -> dict[str, Any]:
    """The broker round trip of a C-STORE envelope ``body``: a bare aio-pika echo
    consumer per queue type (a child process, ``--role echo-server``) answers
    ``requests`` sequential requests published as the bridge publishes them."""
    run = uuid.uuid4().hex[:8]
    queues = {kind: f"bench-ingest-floor-{run}-{kind}" for kind in ("quorum", "classic")}
    children: list[subprocess.Popen[bytes]] = []
    try:
        for kind, queue in queues.items():
            command = [sys.executable, str(Path(__file__).resolve()), "--role", "echo-server"]
            command += ["--queue", queue, "--queue-type", kind]
            child = subprocess.Popen(
                command, env=lib.quiet_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
            children.append(child)
            assert child.stdout is not None
            if b"echo ready" not in child.stdout.readline():
                raise RuntimeError(f"the {kind} echo consumer exited with {child.wait()}")
        latencies = asyncio.run(_round_trips(queues, body, headers, requests))
    finally:
        lib.stop_processes(children)
        lib.delete_broker_objects([], list(queues.values()))
    return {
        "body_bytes": len(body),
        "requests": requests,
        "warm_up": FLOOR_WARM_UP,
        "block": FLOOR_BLOCK,
        "round_trips": {
            kind: {
                "median_ms": round(lib.median(values) * 1000, 3),
                "p90_ms": round(lib.percentile(values, 90) * 1000, 3),
                "requests": len(values),
            }
            for kind, values in latencies.items()
        },
    }


def floor_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per bridge row: (a) one association can go no faster than the tuned pynetdicom
    SCP's time per image plus the broker round trip through the row's queue type; (b) at
    four associations, CPU ms per image over every process against the machine's cores
    spread over the target rate."""
    loads, floor = result["loads"], result.get("floor") or {}
    trips = floor.get("round_trips") or {}
    cores = result["machine"]["nproc"] or 1
    budget = cores * 1000 / RATE_TARGETS[4]
    tuned = loads.get("tuned", {}).get("1", {}).get("rate")
    out: dict[str, dict[str, Any]] = {}
    for key in BRIDGES:
        kind = QUEUE_TYPE[key]
        trip = trips.get(kind, {}).get("median_ms")
        tuned_ms = 1000 / tuned if tuned else None
        floor_ms = tuned_ms + trip if tuned_ms is not None and trip is not None else None
        ceiling = 1000 / floor_ms if floor_ms else None
        measured = loads.get(key, {}).get("1", {}).get("rate")
        four = loads.get(key, {}).get("4", {})
        per = four.get("cpu_ms_per_image") or {}
        cpu = (
            sum(v for v in per.values() if v is not None)
            if per and not four.get("failed")
            else None
        )
        out[key] = {
            "queue_type": kind,
            "tuned_ms_per_image": None if tuned_ms is None else round(tuned_ms, 3),
            "round_trip_ms": trip,
            "floor_ms_per_image": None if floor_ms is None else round(floor_ms, 3),
            "ceiling_per_s": None if ceiling is None else round(ceiling, 1),
            "measured_per_s": measured,
            "target_per_s": RATE_TARGETS[1],
            "measured_over_ceiling": round(measured / ceiling, 3) if measured and ceiling else None,
            "cpu_ms_per_image_4": None if cpu is None else round(cpu, 3),
            "cpu_ms_per_image_4_storescu": per.get("storescu") if cpu is not None else None,
            "cpu_budget_ms_per_image_4": round(budget, 3),
            "cpu_ceiling_per_s_4": round(cores * 1000 / cpu, 1) if cpu else None,
            "measured_per_s_4": four.get("rate"),
        }
    return out


# -- envelope size and build cost -----------------------------------------------------------


def measure_envelopes(blocks: int = ENVELOPE_BLOCKS, block: int = ENVELOPE_BLOCK) -> dict[str, Any]:
    """For each of :data:`ENVELOPE_FILES`, the C-STORE envelope built two ways by the
    bridge's code (:class:`benchlib.StoreEnvelope`): large values as references into the
    Part 10 file, or as base64 copies in ``dataset``. Body size, CPU per build
    (``time.process_time`` over ``blocks`` x ``block`` builds per way after a warm-up,
    the ways alternating block by block), and CPU per ``orjson.loads`` of the body (the
    consumer's first step)."""
    import orjson
    from pydicom.data import get_testdata_file

    out: dict[str, Any] = {
        "builds_per_way": blocks * block,
        "loads_per_way": blocks * block * LOADS_PER_BUILD,
        "reference_min": None,
        "instances": {},
    }
    from bridge.scp import received

    out["reference_min"] = received.REFERENCE_MIN
    for name in ENVELOPE_FILES:
        found = get_testdata_file(name, download=False)
        if found is None:
            out["instances"][name] = {"skipped": "not among this pydicom's test files"}
            continue
        maker = lib.StoreEnvelope(Path(str(found)))
        bodies = {way: maker.build(references=way == "references") for way in ENVELOPE_WAYS}
        documents = {way: orjson.loads(body) for way, body in bodies.items()}
        for way in ENVELOPE_WAYS:  # warm-up
            for _ in range(block):
                maker.build(references=way == "references")
                orjson.loads(bodies[way])
        build_s = dict.fromkeys(ENVELOPE_WAYS, 0.0)
        loads_s = dict.fromkeys(ENVELOPE_WAYS, 0.0)
        for n in range(blocks):
            for way in ENVELOPE_WAYS if n % 2 == 0 else ENVELOPE_WAYS[::-1]:
                references = way == "references"
                t0 = time.process_time()
                for _ in range(block):
                    maker.build(references=references)
                build_s[way] += time.process_time() - t0
            for way in ENVELOPE_WAYS if n % 2 == 0 else ENVELOPE_WAYS[::-1]:
                body = bodies[way]
                t0 = time.process_time()
                for _ in range(block * LOADS_PER_BUILD):
                    orjson.loads(body)
                loads_s[way] += time.process_time() - t0
        part10 = documents["references"]["part10"]
        out["instances"][name] = {
            "file_bytes": maker.file_bytes,
            "transfer_syntax": maker.meta.transfer_syntax,
            "part10_base64_bytes": len(part10.get("InlineBinary", "")),
            "ways": {
                way: {
                    "body_bytes": len(bodies[way]),
                    "references": bodies[way].count(b'"BulkDataURI":"?offset='),
                    "inline_binary_values": bodies[way].count(b'"InlineBinary"'),
                    "build_cpu_us": round(build_s[way] * 1e6 / (blocks * block), 1),
                    "loads_cpu_us": round(
                        loads_s[way] * 1e6 / (blocks * block * LOADS_PER_BUILD), 2
                    ),
                }
                for way in ENVELOPE_WAYS
            },
        }
    return out


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    images: int
    runs: int
    large_mb: float
    consumer_processes: int


def rotate(keys: Sequence[str], shift: int) -> list[str]:
    shift %= len(keys)
    return [*keys[shift:], *keys[:shift]]


def start_receivers(
    tmp: Path, started: Started, sizes: Sizes
) -> tuple[dict[str, Receiver], dict[str, str]]:
    receivers: dict[str, Receiver] = {}
    failed: dict[str, str] = {}
    starters: dict[str, Callable[[], Receiver]] = {
        "storescp": lambda: start_storescp(tmp, started),
        "orthanc": lambda: start_orthanc(tmp, started),
        "tuned": lambda: start_tuned(tmp, started),
        **{
            key: functools.partial(
                start_bridge,
                tmp,
                started,
                key,
                consumer_flags(key, sizes.consumer_processes),
                bridge_label(key, sizes.consumer_processes),
            )
            for key in BRIDGES
        },
    }
    for key, start in starters.items():
        try:
            receivers[key] = start()
        except Exception as exc:
            failed[key] = f"did not start: {exc}"
            log(f"{key} {failed[key]}")
    return receivers, failed


def warm_up(tmp: Path, receivers: dict[str, Receiver]) -> dict[str, str]:
    """First images pay for imports, caches and queue declarations: not measured. Returns
    what went wrong, by receiver (the measured runs are checked on their own)."""
    files = lib.make_ct_copies(tmp / "ct-warm-up", 2 * WARM_UP_IMAGES)
    problems: dict[str, str] = {}
    for key, receiver in receivers.items():
        for associations, part in ((1, files[:WARM_UP_IMAGES]), (4, files[WARM_UP_IMAGES:])):
            sample = send(receiver, part, associations, None)
            if not sample.ok:
                problems.setdefault(key, f"warm-up failed: {describe_failure(sample)}")
                log(f"{key}: {problems[key]}")
    return problems


def describe_failure(sample: Sample) -> str:
    parts = [f"stored {sample.stored}/{sample.images}"]
    parts += sample.errors[:1]
    return "; ".join(parts)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = Sizes(
        images=args.images,
        runs=args.runs or (1 if args.quick else 3),
        large_mb=args.large_mb or (10 if args.quick else 100),
        consumer_processes=args.consumer_processes,
    )
    began = datetime.now().astimezone()
    t0 = time.perf_counter()
    started = Started()
    samples: dict[str, dict[int, list[Sample]]] = {k: {n: [] for n in LOADS} for k in KEYS}
    large: dict[str, Large] = {}
    broker_pid = lib.find_broker_pid()
    log("envelopes: size and build cost, in this process")
    envelopes = measure_envelopes()
    with tempfile.TemporaryDirectory(prefix="dicom-bridge-ingest-") as scratch:
        tmp = Path(scratch)
        try:
            log(f"making {sizes.runs * len(LOADS)} sets of {sizes.images} CT_small copies")
            sets = {
                (run, load): lib.make_ct_copies(tmp / f"ct-{run}-{load}", sizes.images)
                for run in range(sizes.runs)
                for load in LOADS
            }
            large_file = tmp / "large.dcm"
            large_bytes = lib.make_large_instance(large_file, sizes.large_mb)
            log("starting the receivers")
            receivers, failed = start_receivers(tmp, started, sizes)
            warm_ups = warm_up(tmp, receivers)
            log(f"receivers ready after {time.perf_counter() - t0:.0f} s")
            keys = [k for k in KEYS if k in receivers]
            for run in range(sizes.runs):
                for load in LOADS:
                    for key in rotate(keys, run):
                        sample = send(receivers[key], sets[run, load], load, broker_pid)
                        samples[key][load].append(sample)
                        state = "" if sample.ok else f" FAILED ({describe_failure(sample)})"
                        log(f"run {run + 1}, {load} association(s), {key}: "
                            f"{sample.rate:.1f} images/s{state}")  # fmt: skip
            log(f"large instance, {large_bytes / 1e6:.1f} MB")
            for key in rotate(keys, sizes.runs):
                large[key] = send_large(receivers[key], large_file)
                done = large[key]
                state = "" if not done.errors and done.stored >= 1 else " FAILED"
                log(f"large, {key}: {large_bytes / 1e6 / done.elapsed:.1f} MB/s{state}")
        finally:
            stop_all(started)
    log(f"the floor: {FLOOR_REQUESTS} broker round trips of a CT_small envelope per queue type")
    envelope = lib.StoreEnvelope(lib.ct_small_path()).envelope(references=True)
    try:
        floor = measure_floor(envelope.to_json(), envelope.headers(), FLOOR_REQUESTS)
    except Exception as exc:
        floor = {"failed": f"{type(exc).__name__}: {exc}"}
        log(f"the floor was not measured: {floor['failed']}")
    result = {
        "started": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "instance_bytes": lib.ct_small_path().stat().st_size,
        "large_bytes": large_bytes,
        "machine": machine(),
        "receivers": {
            key: {
                "label": receivers[key].label if key in receivers else key,
                "note": receivers[key].note if key in receivers else "",
                "failed": failed.get(key),
                "warm_up": warm_ups.get(key),
            }
            for key in KEYS
        },
        "loads": summarise(samples, sizes, failed),
        "large": summarise_large(large, large_bytes, failed),
        "floor": floor,
        "envelopes": envelopes,
    }
    result["floor"]["rows"] = floor_rows(result)
    result["targets"] = targets(result)
    result["duration_s"] = round(time.perf_counter() - t0, 1)
    return result


def summarise(
    samples: dict[str, dict[int, list[Sample]]], sizes: Sizes, failed: dict[str, str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, loads in samples.items():
        out[key] = {}
        for load, runs in loads.items():
            bad = [s for s in runs if not s.ok]
            failure = failed.get(key)
            if not runs and failure is None:
                failure = "not measured"
            if bad:
                failure = describe_failure(bad[0])
            images = sum(s.images for s in runs)
            roles = sorted({r for s in runs for r in s.cpu_s}, key=ROLE_ORDER.index)
            cpu = {r: sum(s.cpu_s.get(r, 0.0) for s in runs) for r in roles}
            out[key][str(load)] = {
                "associations": load,
                "images_per_run": sizes.images,
                "failed": failure,
                "rate": None if failure else round(lib.median([s.rate for s in runs]), 1),
                "rates": [round(s.rate, 1) for s in runs],
                "stored": [s.stored for s in runs],
                "cpu_s": {r: round(v, 3) for r, v in cpu.items()},
                "cpu_ms_per_image": {
                    r: round(v * 1000 / images, 3) if images else None for r, v in cpu.items()
                },
                "errors": [e for s in runs for e in s.errors][:5],
            }
    return out


def summarise_large(
    large: dict[str, Large], size: int, failed: dict[str, str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    megabytes = size / 1e6
    for key, done in large.items():
        failure = failed.get(key)
        if done.errors or done.stored < 1:
            failure = "; ".join([f"stored {done.stored}/1", *done.errors[:1]])
        out[key] = {
            "failed": failure,
            "seconds": round(done.elapsed, 3),
            "mb_per_s": None if failure else round(megabytes / done.elapsed, 1),
            "peak_rss_reset": done.peak_reset,
            "processes": {
                role: {
                    "idle_rss_mb": round(done.idle_rss_mb[role], 1),
                    "peak_rss_mb": round(done.peak_rss_mb[role], 1),
                    # RSS is in MiB, the instance in MB
                    "peak_over_size": round(done.peak_rss_mb[role] * 1.048576 / megabytes, 2),
                    "growth_over_size": round(
                        (done.peak_rss_mb[role] - done.idle_rss_mb[role]) * 1.048576 / megabytes,
                        2,
                    ),
                }
                for role in done.peak_rss_mb
            },
        }
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    loads = result["loads"]
    out: list[dict[str, Any]] = []

    def rate(key: str, load: int) -> float | None:
        value = loads.get(key, {}).get(str(load), {}).get("rate")
        return float(value) if value else None

    def check(name: str, value: float | None, wanted: float, unit: str, *, most: bool) -> None:
        met = value is not None and (value <= wanted if most else value >= wanted)
        out.append(
            {
                "target": name,
                "value": None if value is None else round(value, 2),
                "threshold": f"{'<=' if most else '>='} {wanted:g}{unit}",
                "met": met,
            }
        )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for key in BRIDGES:
        for load, wanted in RATE_TARGETS.items():
            name = f"{key} images/s, {load} association(s)"
            check(name, rate(key, load), wanted, "/s", most=False)
        for load, wanted in ((1, 10.0), (4, 5.0)):
            name = f"{key} / Orthanc, {load} association(s)"
            check(name, ratio(rate(key, load), rate("orthanc", load)), wanted, "x", most=False)
        for load in LOADS:
            name = f"{key} / tuned pynetdicom, {load} association(s)"
            check(name, ratio(rate(key, load), rate("tuned", load)), 0.7, "x", most=False)
        large = result["large"].get(key)
        for role, name in (("receiver", "bridge"), ("consumer", "consumer")):
            value = None
            if large is not None and not large["failed"]:
                value = large["processes"][role]["peak_over_size"]
            check(f"{key} large instance: {name} peak RSS / size", value, 0.5, "x", most=True)
    return out


# -- the machine --------------------------------------------------------------------------


def tool_version(command: list[str]) -> str:
    """The version a tool prints first (``Orthanc 1.10.1``, ``storescu v3.6.7 ...``)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "missing"
    first = (done.stdout or done.stderr).splitlines()[:1]
    found = re.search(r"v?(\d+\.\d+[.\d]*)", first[0]) if first else None
    return found.group(1) if found else "?"


def machine() -> dict[str, Any]:
    import pynetdicom

    info = lib.machine(lib.broker_version())
    info["storescu_version"] = tool_version([lib.dcmtk_storescu(), "--version"])
    info["orthanc"] = tool_version([ORTHANC, "--version"])
    info["pynetdicom"] = pynetdicom.__version__
    # DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set in the environment.
    info["dcmtk_tcp_nodelay_env"] = os.environ.get("TCP_NODELAY")
    return info


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None, base: float | None) -> str:
    return f" ({value / base:.2f}x)" if value is not None and base else ""


def floor_tables(result: dict[str, Any]) -> list[str]:
    floor = result.get("floor") or {}
    if floor.get("failed"):
        return ["", f"Floor: **not measured**: {floor['failed']}"]
    cores = result["machine"]["nproc"]
    lines = [
        "",
        f"Floor, measured in this run: the broker round trip of a C-STORE envelope of "
        f"CT_small ({floor['body_bytes']:,} bytes, built by the bridge's code), published "
        "confirmed and mandatory with the bridge's message properties and answered at once "
        "by a bare aio-pika consumer (a child process); "
        f"{floor['requests']} sequential requests per queue type after {floor['warm_up']} "
        f"of warm-up, in blocks of {floor['block']} alternating the queue types.",
        "",
        "| queue | median ms | p90 ms | requests |",
        "|---|--:|--:|--:|",
    ]
    for kind, trip in floor["round_trips"].items():
        lines.append(f"| {kind} | {_fmt(trip['median_ms'], 2)} | {_fmt(trip['p90_ms'], 2)} "
                     f"| {trip['requests']} |")  # fmt: skip
    rows = floor.get("rows") or {}
    labels = {key: result["receivers"].get(key, {}).get("label", key) for key in BRIDGES}
    lines += [
        "",
        "One association: no faster than the tuned pynetdicom SCP (it receives the same "
        "images and writes them, in this run) plus one broker round trip (median, the row's "
        "queue type) per image.",
        "",
        "| row | tuned ms/image | + round trip ms | = floor ms/image | ceiling images/s "
        "| measured images/s | measured / ceiling | target images/s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, row in rows.items():
        ratio = row["measured_over_ceiling"]
        lines.append(
            f"| {labels[key]} | {_fmt(row['tuned_ms_per_image'], 2)} "
            f"| {_fmt(row['round_trip_ms'], 2)} ({row['queue_type']}) "
            f"| {_fmt(row['floor_ms_per_image'], 2)} | {_fmt(row['ceiling_per_s'])} "
            f"| {_fmt(row['measured_per_s'])} | {_fmt(ratio, 2)} | {row['target_per_s']:g} |"
        )
    budget = next(iter(rows.values()))["cpu_budget_ms_per_image_4"] if rows else None
    lines += [
        "",
        f"Four associations: CPU ms per image summed over every process (storescu, bridge, "
        f"consumer processes, RabbitMQ) against the budget of {cores} cores at "
        f"{RATE_TARGETS[4]:g} images/s ({_fmt(budget, 1)} ms per image).",
        "",
        "| row | CPU ms/image, all | of which storescu | budget ms/image | CPU ceiling "
        "images/s | measured images/s | target images/s |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for key, row in rows.items():
        lines.append(
            f"| {labels[key]} | {_fmt(row['cpu_ms_per_image_4'], 2)} "
            f"| {_fmt(row['cpu_ms_per_image_4_storescu'], 2)} "
            f"| {_fmt(row['cpu_budget_ms_per_image_4'], 1)} "
            f"| {_fmt(row['cpu_ceiling_per_s_4'])} | {_fmt(row['measured_per_s_4'])} "
            f"| {RATE_TARGETS[4]:g} |"
        )
    return lines


def floor_lines(result: dict[str, Any]) -> list[str]:
    """Under the targets: what the floor says about the rate targets."""
    floor = result.get("floor") or {}
    rows = floor.get("rows") or {}
    if floor.get("failed") or not rows:
        return []
    one = []
    for key, row in rows.items():
        ceiling = row["ceiling_per_s"]
        if ceiling is None:
            one.append(f"{key}: not known (a rate is missing)")
            continue
        verdict = (
            "above the target"
            if ceiling >= row["target_per_s"]
            else "**below the target**: no bridge built on this receive path and broker "
            "round trip reaches it"
        )
        measured = row["measured_per_s"]
        reached = (
            f"{measured:.0f}/s measured, {row['measured_over_ceiling']:.0%} of it"
            if (measured and row["measured_over_ceiling"])
            else "no rate measured"
        )
        one.append(
            f"{key}: at most {ceiling:.0f}/s ({row['tuned_ms_per_image']:.2f} ms tuned "
            f"pynetdicom + {row['round_trip_ms']:.2f} ms {row['queue_type']} round trip), "
            f"{verdict}; {reached}"
        )
    four = []
    for key, row in rows.items():
        cpu, budget = row["cpu_ms_per_image_4"], row["cpu_budget_ms_per_image_4"]
        if cpu is None:
            four.append(f"{key}: not measured")
            continue
        fits = "fits" if cpu <= budget else "**does not fit**"
        four.append(f"{key}: {cpu:.2f} ms per image ({fits}; the CPU alone allows "
                    f"{row['cpu_ceiling_per_s_4']:.0f}/s)")  # fmt: skip
    budget = next(iter(rows.values()))["cpu_budget_ms_per_image_4"]
    return [
        "",
        f"Floor, 1 association, against {RATE_TARGETS[1]:g}/s: " + "; ".join(one) + ".",
        f"CPU, 4 associations, against {RATE_TARGETS[4]:g}/s = {budget:.1f} ms per image on "
        f"{result['machine']['nproc']} cores (every process counted): " + "; ".join(four) + ".",
        "Rows: bridge = the example consumer as shipped (quorum queue"
        + (
            f", --processes {result['sizes']['consumer_processes']}"
            if result["sizes"]["consumer_processes"] > 1
            else ", one process"
        )
        + f"); bridge-fast = example consumer {' '.join(FAST_FLAGS)}.",
    ]


def envelope_table(envelopes: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Envelopes, built in this process by the bridge's code (C-STORE, the Part 10 file "
        f"inline as base64): values over {envelopes['reference_min']:,} bytes as references "
        "into the Part 10 file (what the bridge sends) or as base64 copies in `dataset`. CPU "
        f"per build over {envelopes['builds_per_way']} builds per way and per `orjson.loads` "
        f"of the body over {envelopes['loads_per_way']}, after a warm-up, the ways "
        "alternating in blocks; (x): against references.",
        "",
        "| instance | file KiB | values in `dataset` | body KiB | of which part10 KiB "
        "| references | build CPU µs | orjson.loads CPU µs |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for name, item in envelopes["instances"].items():
        if "skipped" in item:
            lines.append(f"| {name} | | skipped: {item['skipped']} | | | | | |")
            continue
        base = item["ways"]["references"]
        for n, (way, w) in enumerate(item["ways"].items()):
            head = (
                f"| {name} ({item['transfer_syntax']}) | {item['file_bytes'] / 1024:.1f} "
                if n == 0
                else "| | "
            )
            first = way == "references"
            lines.append(
                head
                + f"| {way} | {w['body_bytes'] / 1024:.1f}"
                + ("" if first else _times(w["body_bytes"], base["body_bytes"]))
                + f" | {item['part10_base64_bytes'] / 1024:.1f} | {w['references']} "
                f"| {_fmt(w['build_cpu_us'], 0)}"
                + ("" if first else _times(w["build_cpu_us"], base["build_cpu_us"]))
                + f" | {_fmt(w['loads_cpu_us'], 1)}"
                + ("" if first else _times(w["loads_cpu_us"], base["loads_cpu_us"]))
                + " |"
            )
    same = [
        name
        for name, item in envelopes["instances"].items()
        if "ways" in item and not any(w["references"] for w in item["ways"].values())
    ]
    if same:
        lines += [
            "",
            f"{', '.join(same)}: no value longer than {envelopes['reference_min']:,} bytes, "
            "nothing to reference: both ways build the same body.",
        ]
    return lines


def tables(result: dict[str, Any]) -> str:
    m = result["machine"]
    sizes = result["sizes"]
    receivers = result["receivers"]
    lines = [
        f"Machine: {m['cpu']}, {m['nproc']} cores, Linux {m['kernel']}; storescu "
        f"{m['storescu_version']}, Orthanc {m['orthanc']}, pynetdicom {m['pynetdicom']}, "
        f"RabbitMQ {m['rabbitmq']}, Python {m['python']}; bridge {m['bridge_revision']}"
        + (f" (+{m['uncommitted_files']} uncommitted files)" if m["uncommitted_files"] else "")
        + (
            f". TCP_NODELAY={m['dcmtk_tcp_nodelay_env']} in the environment (DCMTK)"
            if m["dcmtk_tcp_nodelay_env"] is not None
            else ". TCP_NODELAY unset: DCMTK (storescu, storescp; Orthanc links it) leaves Nagle's "
            "algorithm on by default"
        ),
        "",
        f"Ingest: DCMTK storescu sending {sizes['images']} distinct copies of CT_small "
        f"({result['instance_bytes'] / 1000:.0f} kB); median of {sizes['runs']} run(s), "
        "the receivers' order rotating per run. CPU: ms per image per process "
        "(storescu: all storescu processes; receiver: the receiver's process, the bridge "
        "for the bridge; consumer: every consumer process; broker: RabbitMQ's beam.smp).",
        "",
        "| receiver | associations | images/s | runs | CPU ms/image: storescu | receiver "
        "| consumer | broker | all |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in KEYS:
        label = receivers.get(key, {}).get("label", key)
        for load in LOADS:
            row = result["loads"].get(key, {}).get(str(load))
            if row is None:
                continue
            per = row["cpu_ms_per_image"]
            rate = f"**failed**: {row['failed']}" if row["failed"] else _fmt(row["rate"])
            runs = " / ".join(_fmt(r) for r in row["rates"])
            cells = [_fmt(per.get(r), 2) for r in ROLE_ORDER]
            total = sum(v for v in per.values() if v is not None) if per else None
            lines.append(f"| {label} | {load} | {rate} | {runs} | " + " | ".join(cells)
                         + f" | {_fmt(total, 2)} |")  # fmt: skip
    large = result["large"]
    mb = result["large_bytes"] / 1e6
    lines += [
        "",
        f"Large instance: one {mb:.0f} MB data set (multi-frame 16-bit), storescu, one "
        "association. Idle RSS: VmRSS just before the send; peak RSS: VmHWM after it"
        + (
            ", reset to the current RSS just before the send"
            if all(v["peak_rss_reset"] for v in large.values())
            else " (could not be reset: the highest since the process started)"
        )
        + "; both the largest over the role's processes. MiB.",
        "",
        "| receiver | MB/s | s | process | idle RSS | peak RSS | peak / size "
        "| (peak - idle) / size |",
        "|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for key in KEYS:
        row = large.get(key)
        if row is None:
            continue
        label = receivers.get(key, {}).get("label", key)
        speed = f"**failed**: {row['failed']}" if row["failed"] else _fmt(row["mb_per_s"])
        for n, (role, p) in enumerate(row["processes"].items()):
            name = {"receiver": "bridge" if key in BRIDGES else key}.get(role, role)
            head = f"| {label} | {speed} | {_fmt(row['seconds'], 2)} " if n == 0 else "| | | "
            lines.append(
                head + f"| {name} | {_fmt(p['idle_rss_mb'], 0)} | {_fmt(p['peak_rss_mb'], 0)} "
                f"| {_fmt(p['peak_over_size'], 2)} | {_fmt(p['growth_over_size'], 2)} |"
            )
    lines += floor_tables(result)
    lines += ["", "| target | measured | wanted | met |", "|---|--:|--:|:-:|"]
    for t in result["targets"]:
        met = "met" if t["met"] else "**not met**"
        lines.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {t['threshold']} | {met} |")
    lines += floor_lines(result)
    lines += envelope_table(result["envelopes"])
    lines += ["", "Receivers:"]
    for key in KEYS:
        r = receivers.get(key)
        if r is not None:
            problems = [p for p in (r["failed"], r["warm_up"]) if p]
            trouble = "".join(f" **{p}**" for p in problems)
            lines.append(f"- {r['label']}: {r['note']}{trouble}")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C: the receivers are stopped on the way out."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def envelopes_only(results_dir: Path) -> None:
    began = datetime.now().astimezone()
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "started": began.isoformat(timespec="seconds"),
        "envelopes_only": True,
        "machine": machine(),
        "envelopes": measure_envelopes(),
        "duration_s": 0.0,
    }
    result["duration_s"] = round(time.perf_counter() - t0, 1)
    stamp = result["started"][:19].replace(":", "").replace("-", "").replace("T", "-")
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"ingest-envelopes-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(envelope_table(result["envelopes"])[1:]))
    print(f"\nrun time {result['duration_s']:.0f} s; results: {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, a 10 MB large instance")
    parser.add_argument("--images", type=int, default=200, help="images per send (200)")
    parser.add_argument("--runs", type=int, default=0, help="runs per load (3; quick: 1)")
    parser.add_argument(
        "--large-mb", type=float, default=0, help="size of the large instance (100; quick: 10)"
    )
    parser.add_argument(
        "--consumer-processes",
        type=int,
        default=1,
        help="the example consumer's --processes (only passed when above 1)",
    )
    parser.add_argument(
        "--envelopes-only",
        action="store_true",
        help="only the envelope table (size and build cost, in this process): seconds",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--role", choices=["tuned-scp", "echo-server"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "tuned-scp":
        lib.run_stock_scp(
            args.port, tuned=True, write_dir=args.write_dir, storage_contexts=True, keep_bytes=True
        )
        return
    if args.role == "echo-server":
        asyncio.run(lib.echo_server(args.queue, args.queue_type))  # SIGTERM ends it
        return
    if args.envelopes_only:
        envelopes_only(args.results_dir)
        return
    if args.images < 1:
        parser.error("--images must be at least 1")

    try:
        with sigterm_exits():
            result = measure(args)
    except KeyboardInterrupt:
        log("interrupted; the receivers are stopped")
        sys.exit(130)
    stamp = result["started"][:19].replace(":", "").replace("-", "").replace("T", "-")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"ingest-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(tables(result))
    print(f"\nrun time {result['duration_s']:.0f} s; results: {json_path}")


if __name__ == "__main__":
    main()
