"""Where the bridge spends its time under ``bench/run.py``'s loads: the evidence behind
``docs/performance.md``.

    .venv/bin/python bench/profile_bridge.py --case n-event-report-x1 [--seconds 10]
    .venv/bin/python bench/profile_bridge.py --breakdown      # a round trip, per segment
    .venv/bin/python bench/profile_bridge.py --case all

Load cases (``n-event-report-x1``, ``n-event-report-x16``, ``c-echo-x1``, ``c-store-x1``,
``storescu``, ``large``) start the bridge and a thin SDK consumer as ``bench/run.py`` does,
drive the load from this process, and sample the bridge process (``--consumer``: the
consumer) with py-spy (``pip install py-spy``; root or ptrace permission): once keeping
only the thread that holds the GIL (where Python CPU goes; pynetdicom's threads poll, so
"active" samples would mostly show sleeps), once with ``--idle`` (wall time, waits
included). ``consumer-sdk`` samples the SDK consumer draining a full queue.

Measurements: ``--breakdown`` times the segments of an N-EVENT-REPORT round trip from
wall-clock stamps (SCU, the envelope's timestamp, an instrumented SDK consumer);
``amqp-floor`` is the broker round trip without DICOM; ``association-setup`` is CPU and
RSS per association against a pynetdicom SCP with the bridge's 251 SOP classes;
``large-memory`` runs the bridge in this process under tracemalloc and lists what is alive
while a 100 MB C-STORE waits for its reply.

Everything is written to ``bench/results/`` (``.txt`` summaries, ``.svg`` flame graphs of
the GIL samples, raw ``.folded`` stacks; ``--summarize FILE`` re-reads one).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib as lib

HERE = Path(__file__).resolve().parent

Load = Callable[[int, str, Path, threading.Event], None]


def _repeat(kind: str, associations: int) -> Load:
    def load(port: int, called: str, scratch: Path, stop: threading.Event) -> None:
        # Long associations: association set-up (67 ms of CPU in the bridge) would
        # otherwise dominate the profile.
        while not stop.is_set():
            lib.drive(port, called, kind, 2000 // associations, associations=associations)

    return load


def _storescu(port: int, called: str, scratch: Path, stop: threading.Event) -> None:
    files = lib.make_ct_copies(scratch / "ct", 200)
    while not stop.is_set():
        lib.drive_storescu(port, called, files)


def _large(port: int, called: str, scratch: Path, stop: threading.Event) -> None:
    path = scratch / "large.dcm"
    if not path.exists():
        lib.make_large_instance(path, 100)
    while not stop.is_set():
        lib.drive_large(port, called, path)


LOADS: dict[str, Load] = {
    "n-event-report-x1": _repeat("n-event-report", 1),
    "n-event-report-x16": _repeat("n-event-report", 16),
    "c-echo-x1": _repeat("c-echo", 1),
    "c-store-x1": _repeat("c-store", 1),
    "storescu": _storescu,
    "large": _large,
}

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \(\d+\): (?P<name>.*)$")


def thread_kind(name: str) -> str:
    """``Thread-779 (_serve_request)`` -> ``Thread-N (_serve_request)``."""
    name = re.sub(r"@\d+", "", name)
    return re.sub(r"\d+", "N", name)


def function_of(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({match['file']})"


LIBRARIES = ("bridge", "pynetdicom", "pydicom", "aio_pika", "aiormq", "pamqp", "orjson")


def _file_of(frame: str) -> str:
    match = _FRAME.match(frame)
    return match["file"] if match is not None else ""


# Frames that only start a process's event loop or threads: what runs under them (the
# asyncio loop itself, selectors) is no library's own work.
_ENTRY = re.compile(r"^(serve|main|Consumer\.run_forever|run_thin_consumer|run_timing_consumer) ")


def _library_frame(frames: list[str]) -> str | None:
    for frame in reversed(frames):
        if _file_of(frame).split("/", 1)[0] in LIBRARIES:
            return None if _ENTRY.match(frame) else frame
    return None


def library_of(frames: list[str]) -> str:
    frame = _library_frame(frames)
    if frame is None:
        return "stdlib only (asyncio loop, threading, selectors...)"
    return _file_of(frame).split("/", 1)[0]


def first_caller(frames: list[str]) -> str:
    """The innermost frame in one of :data:`LIBRARIES` (the leaf itself if it is)."""
    frame = _library_frame(frames)
    return function_of(frame if frame is not None else frames[-1])


def summarize(raw: str, top: int = 25) -> str:
    """Samples per thread kind, then per function: self (the innermost frame) and
    inclusive (anywhere on the stack, counted once per sample)."""
    by_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own_by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    by_library: Counter[str] = Counter()
    via: dict[str, Counter[str]] = defaultdict(Counter)
    bridge_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        kind = "?"
        thread = _THREAD.match(frames[0])
        if thread is not None:
            kind = thread_kind(thread["name"])
            frames = frames[1:]
        total += count
        by_thread[kind] += count
        if frames:
            leaf = function_of(frames[-1])
            own[leaf] += count
            own_by_thread[kind][leaf] += count
            by_library[library_of(frames)] += count
            via[leaf][first_caller(frames)] += count
        for function in {function_of(f) for f in frames}:
            inclusive[function] += count
            if function.endswith(".py)") and "(bridge/" in function:
                bridge_inclusive[function] += count
    if not total:
        return "no samples\n"

    def share(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [f"{total} samples", "", "by thread kind:"]
    out += [f"  {share(n)}  {kind}" for kind, n in by_thread.most_common(12)]
    out += ["", "by library of the innermost non-stdlib frame (stdlib: none on the stack):"]
    out += [f"  {share(n)}  {lib_}" for lib_, n in by_library.most_common()]
    out += ["", "self (innermost frame), <- nearest non-stdlib caller:"]
    for f, n in own.most_common(top):
        caller, _ = via[f].most_common(1)[0]
        out.append(f"  {share(n)}  {f}" + (f"  <- {caller}" if caller != f else ""))
    out += ["", "inclusive, the bridge's own functions (entry points excluded):"]
    out += [
        f"  {share(n)}  {f}"
        for f, n in bridge_inclusive.most_common(top + 4)
        if not _ENTRY.match(f) and "(bridge/cli.py)" not in f
    ][:top]
    out += ["", "inclusive:"]
    out += [f"  {share(n)}  {f}" for f, n in inclusive.most_common(top)]
    for kind, _ in by_thread.most_common(4):
        out += ["", f"self, thread kind {kind}:"]
        out += [f"  {share(n)}  {f}" for f, n in own_by_thread[kind].most_common(12)]
    return "\n".join(out) + "\n"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, output: Path, *extra: str) -> None:
    command = [py_spy(), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250"]
    subprocess.run(
        [*command, "-o", str(output), "--nonblocking", *extra],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profile_case(case: str, seconds: float, out_dir: Path, consumer_side: bool) -> str:
    exchange = f"bench-profile-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-thin"
    me = [sys.executable, str(HERE / "run.py")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"profile-{case}{'-consumer' if consumer_side else ''}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="dicom-bridge-profile-") as scratch:
        tmp = Path(scratch)
        try:
            port = lib.free_port()
            children.append(
                subprocess.Popen(
                    lib.bridge_command(port, exchange, tmp / "bulk"), env=lib.bridge_env(tmp)
                )
            )
            if case == "large":
                command = [lib.BRIDGE_EXE, "example-consumer", "--exchange", exchange]
                command += ["--queue", queue, "--data-dir", str(tmp / "store")]
                command += ["--bulk-dir", str(tmp / "bulk")]
            else:
                command = [*me, "--role", "consumer", "--exchange", exchange, "--queue", queue]
                command += ["--queue-type", "quorum"]
            children.append(
                subprocess.Popen(command, env=lib.quiet_env(), stdout=subprocess.DEVNULL)
            )
            lib.wait_success(port, lib.BRIDGE_AE)
            target = children[1 if consumer_side else 0].pid
            stop = threading.Event()
            load = threading.Thread(
                target=LOADS[case], args=(port, lib.BRIDGE_AE, tmp, stop), daemon=True
            )
            load.start()
            time.sleep(2.0 if case != "storescu" else 4.0)  # warm, and the CT copies made
            cpu0, wall0 = lib.cpu_seconds(target), time.perf_counter()
            record(target, seconds, base.with_suffix(".svg"), "--gil")
            record(target, seconds, base.with_suffix(".gil.folded"), "-f", "raw", "--threads",
                   "--gil")  # fmt: skip
            cpu_share = (lib.cpu_seconds(target) - cpu0) / (time.perf_counter() - wall0)
            record(target, seconds, base.with_suffix(".idle.folded"), "-f", "raw", "--threads",
                   "--idle")  # fmt: skip
            stop.set()
            load.join(120)
        finally:
            lib.stop_processes(children)
            lib.delete_broker_objects([exchange], [queue])
    side = "consumer" if consumer_side else "bridge"
    text = [
        f"# {case}: {side} process, py-spy {seconds:.0f} s per recording at 250 Hz",
        f"{side} CPU use during the active recordings: {cpu_share:.2f} cores",
    ]
    return _write_report(base, text)


def _write_report(base: Path, heading: list[str]) -> str:
    """``heading`` lines, then the GIL and wall-time summaries of the recordings at
    ``base``; written next to them and returned."""

    def summary(suffix: str) -> str:
        path = base.with_suffix(suffix)
        if not path.exists():  # py-spy writes nothing when the process ended first
            return "(not recorded: the process ended before this recording)\n"
        return summarize(path.read_text())

    text = [
        *heading,
        "",
        "## samples holding the GIL (where Python CPU goes)",
        summary(".gil.folded"),
        "## all threads, waits included (wall time)",
        summary(".idle.folded"),
    ]
    report = "\n".join(text)
    base.with_suffix(".txt").write_text(report)
    return report + f"\nwritten: {base}.txt, .svg, .gil.folded, .idle.folded\n"


def breakdown(count: int, out_dir: Path, queue_type: str) -> str:
    """Median wall-clock segments of an N-EVENT-REPORT's round trip through the bridge,
    against the tuned pynetdicom SCP's whole round trip."""
    exchange = f"bench-breakdown-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-timed"
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="dicom-bridge-breakdown-") as scratch:
        tmp = Path(scratch)
        log_path = tmp / "consumer.jsonl"
        try:
            tuned_port, port = lib.free_port(), lib.free_port()
            me = [sys.executable, str(Path(__file__).resolve())]
            tuned_scp = [sys.executable, str(HERE / "run.py"), "--role", "scp", "--tuned"]
            children.append(subprocess.Popen([*tuned_scp, "--port", str(tuned_port)]))
            children.append(
                subprocess.Popen(
                    lib.bridge_command(port, exchange, tmp / "bulk"), env=lib.bridge_env(tmp)
                )
            )
            command = [*me, "--role", "timing-consumer", "--exchange", exchange]
            command += ["--queue", queue, "--log", str(log_path), "--queue-type", queue_type]
            children.append(
                subprocess.Popen(command, env=lib.quiet_env(), stdout=subprocess.DEVNULL)
            )
            lib.wait_success(tuned_port, "TUNED")
            lib.wait_success(port, lib.BRIDGE_AE)
            lib.timed_requests(tuned_port, "TUNED", 50)  # warm
            tuned = lib.timed_requests(tuned_port, "TUNED", count)
            lib.timed_requests(port, lib.BRIDGE_AE, 50)
            time.sleep(0.5)
            log_path.write_text("")
            bridged = lib.timed_requests(port, lib.BRIDGE_AE, count)
            time.sleep(0.5)
            records = {}
            for line in log_path.read_text().splitlines():
                record = json.loads(line)
                records[record["message_id"]] = record
        finally:
            lib.stop_processes(children)
            lib.delete_broker_objects([exchange], [queue])
    segments: dict[str, list[float]] = defaultdict(list)
    for message_id, sent, answered in bridged:
        r = records.get(message_id)
        if r is None:
            continue
        segments["total (SCU)"].append(answered - sent)
        segments["SCU send -> bridge handler event (pynetdicom receive)"].append(r["event"] - sent)
        segments["event -> consumer callback (envelope, seam, publish, broker)"].append(
            r["arrived"] - r["event"]
        )
        segments["consumer callback -> handler entry (SDK: parse, executor hop)"].append(
            r["entered"] - r["arrived"]
        )
        segments["handler (returns 0)"].append(r["left"] - r["entered"])
        segments["handler exit -> SCU has the response (reply path)"].append(answered - r["left"])
    tuned_total = lib.median([b - a for _, a, b in tuned]) * 1000
    lines = [
        f"# N-EVENT-REPORT round trip, {count} requests on one association, median ms "
        f"({queue_type} queue)",
        "",
        f"(b) tuned pynetdicom SCP, whole round trip: {tuned_total:.2f}",
        "",
        "bridge, per segment (medians do not add up exactly):",
    ]
    for name, values in segments.items():
        lines.append(f"  {lib.median(values) * 1000:7.2f}  p90 "
                     f"{lib.percentile(values, 90) * 1000:7.2f}  {name}")  # fmt: skip
    report = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"breakdown-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(report)
    return report


def profile_sdk(seconds: float, out_dir: Path, queue_type: str) -> str:
    """The consumer SDK alone (``run.py``'s last case), sampled while it drains a full
    queue."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"profile-consumer-sdk-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    shares: list[float] = []

    def during(pid: int) -> None:
        time.sleep(1.0)
        cpu0, wall0 = lib.cpu_seconds(pid), time.perf_counter()
        record(pid, seconds, base.with_suffix(".svg"), "--gil")
        record(pid, seconds, base.with_suffix(".gil.folded"), "-f", "raw", "--threads", "--gil")
        shares.append((lib.cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0))
        record(pid, seconds, base.with_suffix(".idle.folded"), "-f", "raw", "--threads",
               "--idle")  # fmt: skip

    # Enough envelopes for the three recordings at the ~2,500/s the SDK drains under
    # py-spy (the report says so when the queue ran dry before the last one).
    count = int(seconds * 3 * 2500) + 3000
    result = lib.sdk_throughput(count, queue_type, HERE / "run.py", during)
    rate = result["servers"]["sdk"]["rate"]
    text = [
        f"# consumer SDK alone ({queue_type} queue, {count} envelopes): {rate:.0f} envelopes/s "
        f"(profiled: py-spy slows it a little)",
        f"consumer CPU use during the recordings: {shares[0] if shares else 0:.2f} cores",
    ]
    return _write_report(base, text)


def association_setup(count: int, out_dir: Path) -> str:
    """CPU and RSS per association (associate, C-ECHO, release): the bridge against a
    tuned pynetdicom SCP supporting the same 251 SOP classes and transfer syntaxes."""
    exchange = f"bench-assoc-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-thin"
    children: list[subprocess.Popen[bytes]] = []
    lines = [f"# association set-up: {count} x (associate, C-ECHO, release), one at a time", ""]
    with tempfile.TemporaryDirectory(prefix="dicom-bridge-assoc-") as scratch:
        tmp = Path(scratch)
        try:
            scp_port, port = lib.free_port(), lib.free_port()
            scp = [sys.executable, str(HERE / "run.py"), "--role", "scp", "--tuned"]
            children.append(subprocess.Popen([*scp, "--bridge-contexts", "--port", str(scp_port)]))
            children.append(
                subprocess.Popen(
                    lib.bridge_command(port, exchange, tmp / "bulk"), env=lib.bridge_env(tmp)
                )
            )
            command = [sys.executable, str(HERE / "run.py"), "--role", "consumer"]
            command += ["--exchange", exchange, "--queue", queue, "--queue-type", "quorum"]
            children.append(
                subprocess.Popen(command, env=lib.quiet_env(), stdout=subprocess.DEVNULL)
            )
            targets = (
                ("pynetdicom SCP, bridge's contexts", scp_port, "TUNED", children[0].pid),
                ("bridge", port, lib.BRIDGE_AE, children[1].pid),
            )
            for name, target_port, called, pid in targets:
                lib.wait_success(target_port, called)
                lib.drive_new_associations(target_port, called, 5)
                time.sleep(0.5)
                rss0, cpu0 = lib.memory_kib(pid, "VmRSS"), lib.cpu_seconds(pid)
                measured = lib.drive_new_associations(target_port, called, count)
                time.sleep(1.0)
                rss1, cpu1 = lib.memory_kib(pid, "VmRSS"), lib.cpu_seconds(pid)
                lines.append(
                    f"{name}: {lib.median(measured.latencies) * 1000:.1f} ms per exchange "
                    f"(median), server CPU {(cpu1 - cpu0) * 1000 / count:.1f} ms per "
                    f"association, RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MB "
                    f"({(rss1 - rss0) / count:+.0f} KiB per association)"
                )
        finally:
            lib.stop_processes(children)
            lib.delete_broker_objects([exchange], [queue])
    report = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"association-setup-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(report)
    return report


def large_memory(megabytes: float, out_dir: Path) -> str:
    """What the bridge holds while a large C-STORE waits for its reply: the bridge and an
    SDK consumer run in this process under tracemalloc; the consumer's handler takes the
    snapshot (the bridge is then between publishing and the reply)."""
    import asyncio
    import tracemalloc

    from bridge.config import BridgeSettings
    from bridge.ops import service
    from bridge.protocol.model import Service
    from bridge.sdk.consumer import Consumer, Request

    exchange = f"bench-memory-{uuid.uuid4().hex[:8]}"
    snapshots: list[tracemalloc.Snapshot] = []

    def store(request: Request) -> int:
        snapshots.append(tracemalloc.take_snapshot())
        return lib.SUCCESS

    loops = [asyncio.new_event_loop() for _ in range(2)]
    for loop in loops:
        threading.Thread(target=loop.run_forever, daemon=True).start()

    def on(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    with tempfile.TemporaryDirectory(prefix="dicom-bridge-memory-") as scratch:
        tmp = Path(scratch)
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "amqp_url": lib.AMQP_URL,
            "exchange": exchange,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "bulk_dir": tmp / "bulk",
            "spool_dir": tmp / "spool",
            "commands": False,
        }
        settings = BridgeSettings(
            **{k: v for k, v in values.items() if k in BridgeSettings.model_fields}
        )
        running = on(loops[0], service.start(settings))
        consumer = Consumer(
            lib.AMQP_URL, exchange, f"{exchange}-q", exclusive=True, bulk_dir=tmp / "bulk"
        )
        for svc in (Service.C_ECHO, Service.N_EVENT_REPORT, Service.C_STORE):
            consumer.add(svc, store if svc is Service.C_STORE else (lambda r: lib.SUCCESS))
        try:
            on(loops[1], consumer.start())
            path = tmp / "large.dcm"
            size = lib.make_large_instance(path, megabytes)
            lib.wait_success(running.port, lib.BRIDGE_AE)
            tracemalloc.start(40)
            measured = lib.drive_large(running.port, lib.BRIDGE_AE, path)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            on(loops[1], consumer.close())
            on(loops[0], running.stop())
            lib.delete_broker_objects([exchange], [])
    lines = [
        f"# large C-STORE of {size / 1e6:.0f} MB through the bridge (errors: "
        f"{measured.errors or 'none'})",
        f"traced peak (bridge and consumer, this process): {peak / 1e6:.0f} MB",
        "",
        "alive while the bridge waits for the reply, largest first:",
    ]
    if snapshots:
        skip = tracemalloc.Filter(False, tracemalloc.__file__)
        stats = snapshots[0].filter_traces([skip]).statistics("traceback")
        for stat in stats[:3]:
            lines.append(f"{stat.size / 1e6:8.1f} MB in {stat.count} blocks, allocated at:")
            frames = [f for f in stat.traceback if "site-packages" in f.filename
                      or "/bridge/" in f.filename][-8:]  # fmt: skip
            for frame in frames:
                name = frame.filename.split("site-packages/")[-1]
                lines.append(f"           {name.split('/work/main/')[-1]}:{frame.lineno}")
    report = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"large-memory-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(report)
    return report


async def _rpc_latencies(route: str, exchange: str, count: int) -> list[float]:
    """``count`` sequential round trips as the bridge makes them
    (:class:`benchlib.RoundTrips`) of an N-EVENT-REPORT envelope."""
    deadline = lib.utc_deadline(600)
    latencies: list[float] = []
    async with lib.RoundTrips(exchange) as trips:
        for n in range(count):
            request_id, body, headers = lib.sdk_envelope(n + 1, deadline)
            latencies.append(
                await trips.once(route, body, headers, kind="n-event-report", request_id=request_id)
            )
    return latencies


def amqp_floor(count: int, out_dir: Path) -> str:
    """The broker round trip without DICOM: what the bridge's added latency is made of
    at least. A bare aio-pika echo server (classic and quorum queue), then the SDK's thin
    consumer, each answering ``count`` sequential requests."""
    import asyncio

    lines = [f"# AMQP round trip without DICOM, {count} sequential requests, median ms", ""]
    me = [sys.executable, str(Path(__file__).resolve())]
    for label, queue_type, sdk in (
        ("bare aio-pika echo, classic queue", "classic", False),
        ("bare aio-pika echo, quorum queue", "quorum", False),
        ("SDK thin consumer (run.py), quorum queue", "quorum", True),
    ):
        name = f"bench-floor-{uuid.uuid4().hex[:8]}"
        if sdk:
            command = [sys.executable, str(HERE / "run.py"), "--role", "consumer"]
            command += ["--exchange", name, "--queue", f"{name}-q", "--queue-type", queue_type]
        else:
            command = [*me, "--role", "echo-server", "--queue", f"{name}-q"]
            command += ["--queue-type", queue_type]
        child = subprocess.Popen(command, env=lib.quiet_env(), stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None
            child.stdout.readline()
            time.sleep(1.0)  # the SDK binds after saying it is ready
            route = f"n-event-report.1_2_840_10008_1_20_1.{lib.CALLING_AE}" if sdk else name + "-q"
            asyncio.run(_rpc_latencies(route, name if sdk else "", 100))
            values = asyncio.run(_rpc_latencies(route, name if sdk else "", count))
            lines.append(
                f"  {lib.median(values) * 1000:6.2f}  p90 {lib.percentile(values, 90) * 1000:6.2f}"
                f"  {label}"
            )
        finally:
            lib.stop_processes([child])
            lib.delete_broker_objects([name] if sdk else [], [f"{name}-q"])
    report = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"amqp-floor-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        choices=[*LOADS, "consumer-sdk", "association-setup", "large-memory", "amqp-floor", "all"],
        default="n-event-report-x1",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--consumer", action="store_true", help="profile the consumer")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument(
        "--breakdown", action="store_true", help="time the segments of a round trip instead"
    )
    parser.add_argument("--requests", type=int, default=500, help="with --breakdown")
    parser.add_argument(
        "--queue-type", choices=["quorum", "classic"], default="quorum", help="consumer's queue"
    )
    parser.add_argument(
        "--summarize", type=Path, help="print the summary of a .folded file written before"
    )
    parser.add_argument(
        "--role", choices=["timing-consumer", "echo-server"], help=argparse.SUPPRESS
    )
    parser.add_argument("--exchange", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "echo-server":
        import asyncio

        asyncio.run(lib.echo_server(args.queue, args.queue_type))
        return
    if args.role == "timing-consumer":
        lib.run_timing_consumer(args.exchange, args.queue, args.log, args.queue_type)
        return
    if args.summarize:
        print(summarize(args.summarize.read_text()))
        return
    if args.breakdown:
        print(breakdown(args.requests, args.results_dir, args.queue_type))
        return
    every = [*LOADS, "consumer-sdk", "association-setup", "large-memory", "amqp-floor"]
    for case in every if args.case == "all" else [args.case]:
        if case == "consumer-sdk":
            report = profile_sdk(args.seconds, args.results_dir, args.queue_type)
        elif case == "association-setup":
            report = association_setup(60, args.results_dir)
        elif case == "large-memory":
            report = large_memory(100, args.results_dir)
        elif case == "amqp-floor":
            report = amqp_floor(1000, args.results_dir)
        else:
            report = profile_case(case, args.seconds, args.results_dir, args.consumer)
        print(report, flush=True)


if __name__ == "__main__":
    main()
