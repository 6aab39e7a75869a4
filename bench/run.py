"""The bridge against a stock pynetdicom SCP, request by request: one command.

    .venv/bin/python bench/run.py            # about 3.5 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke run, about 30 s
    .venv/bin/python bench/run.py --cases "large instance" --cases "c-store x1"

Starts, on 127.0.0.1 and each in a process of its own: (a) a stock pynetdicom SCP whose
handlers answer in-process, (b) the same SCP with the bridge's socket tuning
(``bridge.scp.netopt``), and (c) the bridge (``dicom-bridge serve``) with an SDK consumer in
another process answering Success without writing anything (the small C-STOREs are not
written by (a) and (b) either). This process drives each with the same peers (a
pynetdicom SCU, DCMTK's storescu), rotating the order of the servers from run to run so
that machine drift cancels, and reads CPU time and peak RSS of every server process from
/proc. The large-instance case has its own three servers, which write what they receive
to disk (the bridge through the example consumer and the claim-check directory). Last,
the consumer SDK alone: envelopes built by ``bridge.protocol.envelope`` are queued, an SDK
consumer answers them, replies are counted. Writes ``bench/results/<timestamp>.json`` and
a chart of the bridge's ratios next to it (``--chart docs/performance.png`` also writes it
there), and prints the tables of ``docs/performance.md``. Needs RabbitMQ on
127.0.0.1:5672, DCMTK and matplotlib. ``bench/profile_bridge.py`` finds where the time goes;
``bench/ingest.py`` compares ingest (storescu sending CT images, stored on disk) with DCMTK's
storescp, Orthanc and a tuned pynetdicom SCP.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib as lib

HERE = Path(__file__).resolve().parent
RUN_PY = Path(__file__).resolve()
SERVERS = ("stock", "tuned", "bridge")
LABELS = {"stock": "(a) stock", "tuned": "(b) tuned", "bridge": "bridge"}
CASES = (
    "n-event-report x1",
    "c-echo x1",
    "c-store x1",
    "c-echo, new association each",
    "storescu 200 CT",
    "n-event-report x4",
    "n-event-report x16",
    "large instance",
    "consumer sdk",
)
SMALL_LATENCY_CASES = ("n-event-report x1", "c-echo x1", "c-store x1")


@dataclass(frozen=True)
class Sizes:
    runs: int
    requests: int
    per_association: dict[int, int]
    images: int
    large_mb: float
    envelopes: int
    associations: int


FULL = Sizes(runs=3, requests=150, per_association={4: 60, 16: 25}, images=200,
             large_mb=100, envelopes=5000, associations=15)  # fmt: skip
QUICK = Sizes(runs=1, requests=20, per_association={4: 10, 16: 4}, images=20,
              large_mb=10, envelopes=400, associations=3)  # fmt: skip


@dataclass
class Server:
    key: str
    port: int
    called: str
    pids: dict[str, int]


@dataclass
class Bench:
    sizes: Sizes
    selected: tuple[str, ...]
    small: dict[str, Server]
    large: dict[str, Server]
    broker_pid: int | None
    ct_files: list[Path]
    large_file: Path
    large_bytes: int
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- running cases ------------------------------------------------------------------------


def run_case(
    bench: Bench,
    name: str,
    servers: dict[str, Server],
    measure: Callable[[Server], lib.Measurement],
    *,
    unit: str = "requests/s",
    scale: float = 1.0,
) -> dict[str, Any]:
    """Every server ``runs`` times, the order rotating per run; CPU and peak RSS of every
    server process over the case, CPU of the client (this process and its storescu
    children) per server. ``scale`` turns requests/s into ``unit``."""
    watched = {key: lib.Watched(dict(server.pids)) for key, server in servers.items()}
    broker = lib.Watched({"broker": bench.broker_pid}) if bench.broker_pid else None
    for watcher in watched.values():
        watcher.start()
    if broker is not None:
        broker.start()
    runs: dict[str, list[lib.Measurement]] = {key: [] for key in servers}
    keys = list(servers)
    started = time.perf_counter()
    client_cpu = dict.fromkeys(keys, 0.0)
    for run in range(bench.sizes.runs):
        shift = run % len(keys)
        for key in keys[shift:] + keys[:shift]:
            cpu0 = lib.client_cpu_seconds()
            runs[key].append(measure(servers[key]))
            client_cpu[key] += lib.client_cpu_seconds() - cpu0
    result: dict[str, Any] = {"unit": unit, "runs": bench.sizes.runs, "servers": {}}
    for key, measurements in runs.items():
        latencies = [x for m in measurements for x in m.latencies]
        requests = sum(m.requests for m in measurements)
        processes = watched[key].stop()
        cpu = sum(p["cpu_s"] for p in processes.values())
        errors = [e for m in measurements for e in m.errors]
        result["servers"][key] = {
            "rate": round(lib.median([m.rate * scale for m in measurements]), 2),
            "rates": [round(m.rate * scale, 2) for m in measurements],
            "requests": requests,
            "p50_ms": round(lib.percentile(latencies, 50) * 1000, 3),
            "p99_ms": round(lib.percentile(latencies, 99) * 1000, 3),
            "processes": processes,
            "cpu_ms_per_request": round(cpu * 1000 / requests, 3) if requests else 0.0,
            "client_cpu_s": round(client_cpu[key], 3),
            "errors": len(errors),
            "error_samples": errors[:5],
        }
        if errors:
            log(f"  {name} / {key}: {len(errors)} errors, e.g. {errors[0]}")
    if broker is not None:
        result["broker_cpu_s"] = broker.stop()["broker"]["cpu_s"]
    result["peak_rss_reset"] = all(w.peak_reset for w in watched.values())
    add_ratios(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    bench.cases[name] = result
    summary = ", ".join(f"{k} {v['rate']:.1f}" for k, v in result["servers"].items())
    log(f"{name}: {summary} {unit} ({result['seconds']:.0f} s)")
    return result


def add_ratios(result: dict[str, Any]) -> None:
    servers = result["servers"]
    bridge = servers["bridge"]
    for key in ("stock", "tuned"):
        base = servers[key]["rate"]
        result[f"ratio_vs_{key}"] = round(bridge["rate"] / base, 3) if base else None
    result["added_p50_ms_vs_tuned"] = round(bridge["p50_ms"] - servers["tuned"]["p50_ms"], 3)


def warm_up(bench: Bench) -> None:
    """First requests pay for imports, caches, queue declarations: not measured."""
    for server in (*bench.small.values(), *bench.large.values()):
        lib.wait_success(server.port, server.called)
    for server in bench.small.values():
        for kind in ("n-event-report", "c-echo", "c-store"):
            lib.drive(server.port, server.called, kind, 10)
        lib.drive(server.port, server.called, "n-event-report", 3, associations=4)
        lib.drive_storescu(server.port, server.called, bench.ct_files[:5])


def dicom_cases(bench: Bench) -> None:
    sizes = bench.sizes
    small = bench.small
    selected = bench.selected

    def requests(kind: str, count: int, associations: int, server: Server) -> lib.Measurement:
        return lib.drive(server.port, server.called, kind, count, associations=associations)

    for kind, name in (
        ("n-event-report", "n-event-report x1"),
        ("c-echo", "c-echo x1"),
        ("c-store", "c-store x1"),
    ):
        if name in selected:
            run_case(bench, name, small, functools.partial(requests, kind, sizes.requests, 1))
    if "c-echo, new association each" in selected:
        run_case(
            bench,
            "c-echo, new association each",
            small,
            lambda s: lib.drive_new_associations(s.port, s.called, sizes.associations),
        )
    if "storescu 200 CT" in selected:
        run_case(
            bench,
            "storescu 200 CT",
            small,
            lambda s: lib.drive_storescu(s.port, s.called, bench.ct_files),
        )
        bench.cases["storescu 200 CT"]["images"] = len(bench.ct_files)
    for associations, count in sorted(sizes.per_association.items()):
        name = f"n-event-report x{associations}"
        if name not in selected:
            continue
        run_case(
            bench,
            name,
            small,
            functools.partial(requests, "n-event-report", count, associations),
        )
        bench.cases[name]["per_association"] = count


def large_case(bench: Bench) -> None:
    megabytes = bench.large_bytes / 1e6
    result = run_case(
        bench,
        "large instance",
        bench.large,
        lambda s: lib.drive_large(s.port, s.called, bench.large_file),
        unit="MB/s",
        scale=megabytes,  # one C-STORE per run
    )
    result["instance_mb"] = round(megabytes, 1)
    bridge = result["servers"]["bridge"]["processes"]["bridge"]
    result["bridge_peak_rss_mb"] = bridge["peak_rss_mb"]
    result["bridge_peak_rss_over_instance"] = round(bridge["peak_rss_mb"] * 1.048576 / megabytes, 2)
    result["bridge_rss_growth_over_instance"] = round(
        (bridge["peak_rss_mb"] - bridge["rss_before_mb"]) * 1.048576 / megabytes, 2
    )


# -- the consumer SDK alone ---------------------------------------------------------------


def sdk_case(bench: Bench, queue_type: str) -> None:
    started = time.perf_counter()
    result = lib.sdk_throughput(bench.sizes.envelopes, queue_type, RUN_PY)
    result["seconds"] = round(time.perf_counter() - started, 1)
    bench.cases["consumer sdk"] = result
    log(f"consumer sdk: {result['servers']['sdk']['rate']:.0f} envelopes/s")


# -- report -------------------------------------------------------------------------------


def targets(cases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def ratio(case: str, key: str) -> float:
        value = cases[case].get(f"ratio_vs_{key}")
        return float(value) if value is not None else 0.0

    out: list[dict[str, Any]] = []  # targets of cases that did not run (--cases) are left out

    def at_least(name: str, value: float, threshold: float, unit: str = "x") -> None:
        out.append({"target": name, "value": round(value, 3), "threshold": f">= {threshold}{unit}",
                    "met": value >= threshold})  # fmt: skip

    def at_most(name: str, value: float, threshold: float, unit: str) -> None:
        out.append({"target": name, "value": round(value, 3), "threshold": f"<= {threshold}{unit}",
                    "met": value <= threshold})  # fmt: skip

    if "n-event-report x1" in cases:
        at_least("N-EVENT-REPORT x1: bridge / (a)", ratio("n-event-report x1", "stock"), 5)
        at_least("N-EVENT-REPORT x1: bridge / (b)", ratio("n-event-report x1", "tuned"), 0.8)
    if "storescu 200 CT" in cases:
        at_least("storescu 200 CT: bridge / (a)", ratio("storescu 200 CT", "stock"), 5)
        at_least("storescu 200 CT: bridge / (b)", ratio("storescu 200 CT", "tuned"), 0.6)
    if "n-event-report x16" in cases:
        at_least("N-EVENT-REPORT x16: bridge / (b)", ratio("n-event-report x16", "tuned"), 0.7)
    for case in SMALL_LATENCY_CASES:
        if case in cases:
            added = cases[case]["added_p50_ms_vs_tuned"]
            at_most(f"{case}: p50 added over (b)", added, 1.5, " ms")
    if "large instance" in cases:
        rss = cases["large instance"]["bridge_peak_rss_over_instance"]
        at_most("large instance: bridge peak RSS / size", rss, 2, "x")
        at_least("large instance: bridge / (b) MB/s", ratio("large instance", "tuned"), 0.5)
    if "consumer sdk" in cases:
        rate = cases["consumer sdk"]["servers"]["sdk"]["rate"]
        at_least("consumer SDK alone", rate, 2000, "/s")
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def tables(result: dict[str, Any]) -> str:
    cases = result["cases"]
    lines = [
        "| case | unit | (a) stock | (b) tuned | bridge | bridge/(a) | bridge/(b) "
        "| p50 ms (a) / (b) / bridge | p99 ms (a) / (b) / bridge |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in CASES:
        case = cases.get(name)
        if case is None or name == "consumer sdk":
            continue
        s = case["servers"]
        lines.append(
            f"| {name} | {case['unit']} "
            + "".join(f"| {_fmt(s[k]['rate'])} " for k in SERVERS)
            + f"| {_fmt(case['ratio_vs_stock'], 2)} | {_fmt(case['ratio_vs_tuned'], 2)} "
            + "| " + " / ".join(_fmt(s[k]["p50_ms"], 2) for k in SERVERS) + " "
            + "| " + " / ".join(_fmt(s[k]["p99_ms"], 2) for k in SERVERS) + " |"
        )  # fmt: skip
    sdk = cases.get("consumer sdk")
    if sdk is not None:
        lines.append(
            f"| consumer SDK alone | envelopes/s | | | {_fmt(sdk['servers']['sdk']['rate'])} "
            "| | | | |"
        )
    lines += [
        "",
        "| case | CPU s (a) / (b) / bridge + consumer | CPU ms per request (a) / (b) / bridge "
        "+ consumer | broker CPU s | client CPU s (a) / (b) / bridge "
        "| peak RSS MB (a) / (b) / bridge / consumer |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name in CASES:
        case = cases.get(name)
        if case is None:
            continue
        s = case["servers"]
        if name == "consumer sdk":
            p = s["sdk"]["processes"]["consumer"]
            lines.append(
                f"| consumer SDK alone | {_fmt(p['cpu_s'], 2)} | "
                f"{_fmt(s['sdk']['cpu_ms_per_request'], 3)} | | | {_fmt(p['peak_rss_mb'])} |"
            )
            continue
        bp = s["bridge"]["processes"]
        cpu = " / ".join(
            [_fmt(s[k]["processes"]["scp"]["cpu_s"], 2) for k in ("stock", "tuned")]
            + [f"{_fmt(bp['bridge']['cpu_s'], 2)} + {_fmt(bp['consumer']['cpu_s'], 2)}"]
        )
        per = " / ".join([_fmt(s[k]["cpu_ms_per_request"], 2) for k in SERVERS])
        rss = " / ".join(
            [_fmt(s[k]["processes"]["scp"]["peak_rss_mb"], 0) for k in ("stock", "tuned")]
            + [_fmt(bp["bridge"]["peak_rss_mb"], 0), _fmt(bp["consumer"]["peak_rss_mb"], 0)]
        )
        client = " / ".join(_fmt(s[k]["client_cpu_s"], 2) for k in SERVERS)
        lines.append(
            f"| {name} | {cpu} | {per} | {_fmt(case.get('broker_cpu_s'), 2)} | {client} | {rss} |"
        )
    lines += ["", "| target | measured | wanted | met |", "|---|--:|--:|:-:|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['target']} | {_fmt(t['value'], 2)} | {t['threshold']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines)


def chart(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cases = [n for n in CASES if n in result["cases"] and n != "consumer sdk"]
    wanted = {
        ("n-event-report x1", "stock"): 5.0,
        ("n-event-report x1", "tuned"): 0.8,
        ("storescu 200 CT", "stock"): 5.0,
        ("storescu 200 CT", "tuned"): 0.6,
        ("n-event-report x16", "tuned"): 0.7,
        ("large instance", "tuned"): 0.5,
    }
    figure, axes = plt.subplots(figsize=(7.5, 4.6), dpi=90)
    height = 0.38
    bars = ((-height / 2, "stock", "#8fb8de"), (height / 2, "tuned", "#f4a261"))
    for offset, key, colour in bars:
        values = [result["cases"][n][f"ratio_vs_{key}"] or 0.0 for n in cases]
        ys = [i + offset for i in range(len(cases))]
        axes.barh(ys, values, height=height, color=colour, label=f"bridge / {LABELS[key]}")
        for y, value in zip(ys, values, strict=True):
            axes.text(value * 1.05, y, f"{value:.2f}", va="center", fontsize=7)
        for i, name in enumerate(cases):
            target = wanted.get((name, key))
            if target is not None:
                y = i + offset
                axes.plot([target, target], [y - height / 2, y + height / 2], color="black", lw=2)
    axes.axvline(1.0, color="grey", lw=0.8, ls="--")
    axes.set_xscale("log")
    ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10]
    axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlim(0.1, 12)
    axes.set_yticks(range(len(cases)), cases, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("throughput ratio (log scale; black tick: target)", fontsize=8)
    axes.set_title(f"dicom-bridge vs pynetdicom SCP ({result['started'][:16]})", fontsize=9)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    axes.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    plt.close(figure)


# -- main ---------------------------------------------------------------------------------


def start_servers(
    tmp: Path, exchanges: list[str], queues: list[str], queue_type: str
) -> tuple[dict[str, Server], dict[str, Server], list[subprocess.Popen[Any]]]:
    me = [sys.executable, str(Path(__file__).resolve())]
    env = lib.quiet_env()
    children: list[subprocess.Popen[Any]] = []

    def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        child = subprocess.Popen(command, **{"env": env, **kwargs})
        children.append(child)
        return child

    small: dict[str, Server] = {}
    large: dict[str, Server] = {}
    waits: list[subprocess.Popen[Any]] = []
    for group, write in ((small, False), (large, True)):
        for key in ("stock", "tuned"):
            port = lib.free_port()
            command = [*me, "--role", "scp", "--port", str(port)]
            if key == "tuned":
                command.append("--tuned")
            if write:
                directory = tmp / f"{key}-store"
                directory.mkdir()
                command += ["--write-dir", str(directory)]
            child = spawn(command)
            group[key] = Server(key, port, key.upper(), {"scp": child.pid})
        exchange = f"bench-{uuid.uuid4().hex[:8]}"
        queue = f"{exchange}-{'example' if write else 'thin'}"
        exchanges.append(exchange)
        queues.append(queue)
        bulk = tmp / f"bulk-{exchange}"
        port = lib.free_port()
        bridge = spawn(lib.bridge_command(port, exchange, bulk), env=lib.bridge_env(tmp / exchange))
        if write:
            data = tmp / "example-store"
            command = [lib.BRIDGE_EXE, "example-consumer", "--exchange", exchange]
            command += ["--queue", queue, "--data-dir", str(data), "--bulk-dir", str(bulk)]
            consumer = spawn(command)
        else:
            command = [*me, "--role", "consumer", "--exchange", exchange, "--queue", queue]
            consumer = spawn([*command, "--queue-type", queue_type], stdout=subprocess.PIPE)
            waits.append(consumer)
        group["bridge"] = Server(
            "bridge", port, lib.BRIDGE_AE, {"bridge": bridge.pid, "consumer": consumer.pid}
        )
    for ready in waits:
        if ready.stdout is not None:
            ready.stdout.readline()
    return small, large, children


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    selected: tuple[str, ...] = tuple(args.cases) if args.cases else CASES
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    exchanges: list[str] = []
    queues: list[str] = []
    children: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="dicom-bridge-bench-") as scratch:
        tmp = Path(scratch)
        try:
            log("making test data")
            ct_files = lib.make_ct_copies(tmp / "ct", sizes.images)
            large_file = tmp / "large.dcm"
            large_bytes = lib.make_large_instance(large_file, sizes.large_mb)
            log("starting servers")
            small, large, children = start_servers(tmp, exchanges, queues, args.queue_type)
            bench = Bench(sizes, selected, small, large, lib.find_broker_pid(), ct_files,
                          large_file, large_bytes)  # fmt: skip
            warm_up(bench)
            log(f"servers ready after {time.perf_counter() - t0:.0f} s")
            dicom_cases(bench)
            if "large instance" in selected:
                large_case(bench)
        finally:
            lib.stop_processes(children)
            lib.delete_broker_objects(exchanges, queues)
        if "consumer sdk" in selected:
            sdk_case(bench, args.queue_type)
    result: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": {
            **sizes.__dict__,
            "per_association": {str(k): v for k, v in sizes.per_association.items()},
        },
        "consumer_queue_type": args.queue_type,
        "selected_cases": list(selected),
        "machine": lib.machine(bench.cases.get("consumer sdk", {}).get("broker_version")),
        "cases": bench.cases,
    }
    result["targets"] = targets(bench.cases)
    result["duration_s"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    parser.add_argument("--runs", type=int, default=0, help="runs per server and case")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument(
        "--cases",
        action="append",
        choices=CASES,
        metavar="CASE",
        help="run only this case (repeatable; default: all): " + ", ".join(CASES),
    )
    parser.add_argument(
        "--chart", type=Path, action="append", default=[], help="also write the chart here"
    )
    parser.add_argument(
        "--queue-type",
        choices=["quorum", "classic"],
        default="quorum",
        help="queue of the thin SDK consumer (quorum: the SDK's default)",
    )
    parser.add_argument("--role", choices=["scp", "consumer"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bridge-contexts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--exchange", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "scp":
        lib.run_stock_scp(
            args.port,
            tuned=args.tuned,
            write_dir=args.write_dir,
            bridge_contexts=args.bridge_contexts,
        )
        return
    if args.role == "consumer":
        lib.run_thin_consumer(args.exchange, args.queue, args.queue_type)
        return

    result = measure_all(args)
    stamp = result["started"][:19].replace(":", "").replace("-", "").replace("T", "-")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{stamp}.json"
    png_path = args.results_dir / f"{stamp}.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, [png_path, *args.chart])
    print(tables(result))
    print(f"\nrun time {result['duration_s']:.0f} s; results: {json_path}, chart: {png_path}")


if __name__ == "__main__":
    main()
