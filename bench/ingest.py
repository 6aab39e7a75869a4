"""Ingest: DCMTK's storescu sending CT images to four receivers, side by side, one command.

    .venv/bin/python bench/ingest.py                 # about 4 minutes on 2 cores
    .venv/bin/python bench/ingest.py --quick         # 1 run, a 10 MB large instance: ~1 min
    .venv/bin/python bench/ingest.py --images 400 --large-mb 200 --consumer-processes 2

Starts, on 127.0.0.1 and free ports, each writing what it receives into a directory of its
own: (1) DCMTK's ``storescp -od DIR`` (its defaults: one process, one association at a
time), (2) Orthanc from Debian's package with a configuration written here (files plus its
SQLite index), (3) a pynetdicom SCP with the bridge's socket tuning (``bridge.scp.netopt``,
as ``bench/run.py``'s "(b) tuned") that receives each data set into a file and moves it
into its directory, and (4) the bridge (``dicom-bridge serve``) with the example consumer
(``dicom-bridge example-consumer --data-dir``), sharing a claim-check directory.

Stock storescu then sends N distinct copies of pydicom's CT_small, (a) over one
association, (b) over four associations at once (four storescu processes); every run uses
new SOP Instance UIDs and the order of the receivers rotates from run to run, so that
machine drift cancels. After each send the receiver must hold N more instances (files, or
Orthanc's ``/statistics``), else its row fails and gets no number. CPU time per image of
every process involved is read from /proc: storescu, the receiver, and for the bridge the
consumer (all its processes) and the RabbitMQ node (beam.smp). Last, one large instance
is sent to each receiver: MB/s, and the receiver's idle and peak RSS.

Prints Markdown tables with the targets and writes ``bench/results/ingest-<timestamp>.json``.
Needs RabbitMQ on 127.0.0.1:5672, DCMTK and Orthanc (``scripts/setup.sh`` installs both).
"""

from __future__ import annotations

import argparse
import contextlib
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
KEYS = ("storescp", "orthanc", "tuned", "bridge")
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


def start_bridge(tmp: Path, started: Started, consumer_processes: int) -> Receiver:
    home = tmp / "bridge"
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
    command += ["--data-dir", str(store), "--bulk-dir", str(bulk)]
    if consumer_processes > 1:
        command += ["--processes", str(consumer_processes)]
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
    processes = f", {consumer_processes} consumer processes" if consumer_processes > 1 else ""
    return Receiver(
        "bridge",
        f"bridge + example consumer{processes}",
        port,
        lib.BRIDGE_AE,
        {"receiver": bridge.pid, "consumer": consumer.pid},
        lambda: count_part10(store),
        "`dicom-bridge serve` (as bench/run.py starts it) and `dicom-bridge example-consumer "
        "--data-dir DIR`, one claim-check directory; broker CPU is the RabbitMQ node's",
    )


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
    if broker_pid is not None and receiver.key == "bridge":
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
        "bridge": lambda: start_bridge(tmp, started, sizes.consumer_processes),
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
    }
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

    for load, wanted in ((1, 150), (4, 250)):
        name = f"bridge images/s, {load} association(s)"
        check(name, rate("bridge", load), wanted, "/s", most=False)
    for load, wanted in ((1, 10), (4, 5)):
        name = f"bridge / Orthanc, {load} association(s)"
        check(name, ratio(rate("bridge", load), rate("orthanc", load)), wanted, "x", most=False)
    for load in LOADS:
        name = f"bridge / tuned pynetdicom, {load} association(s)"
        check(name, ratio(rate("bridge", load), rate("tuned", load)), 0.7, "x", most=False)
    bridge = result["large"].get("bridge")
    for role, name in (("receiver", "bridge"), ("consumer", "consumer")):
        value = None
        if bridge is not None and not bridge["failed"]:
            value = bridge["processes"][role]["peak_over_size"]
        check(f"large instance: {name} peak RSS / size", value, 0.5, "x", most=True)
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
            name = {"receiver": "bridge" if key == "bridge" else key}.get(role, role)
            head = f"| {label} | {speed} | {_fmt(row['seconds'], 2)} " if n == 0 else "| | | "
            lines.append(
                head + f"| {name} | {_fmt(p['idle_rss_mb'], 0)} | {_fmt(p['peak_rss_mb'], 0)} "
                f"| {_fmt(p['peak_over_size'], 2)} | {_fmt(p['growth_over_size'], 2)} |"
            )
    lines += ["", "| target | measured | wanted | met |", "|---|--:|--:|:-:|"]
    for t in result["targets"]:
        met = "met" if t["met"] else "**not met**"
        lines.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {t['threshold']} | {met} |")
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
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--role", choices=["tuned-scp"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "tuned-scp":
        lib.run_stock_scp(
            args.port, tuned=True, write_dir=args.write_dir, storage_contexts=True, keep_bytes=True
        )
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
