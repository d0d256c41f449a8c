"""Delivery engine throughput: requests in flight against a slow destination, and what ECS encoding costs.

Two parts, each printing a table of medians (with min-max) over --runs runs:

round trip  N events of the reference mix ("standard mix v1", benchmarks/workload.py; one event per logical
            record as the readers build them) are pushed into a MemoryBuffer, then a SinkRunner drives a sink
            whose send takes a fixed round trip (asyncio.sleep, 2 ms by default) per request, for each
            max_in_flight in --in-flight. Events/s and requests/s from the start of the runner until the last
            batch is acked (its checkpoint safe), and the ratio to max_in_flight = 1. The settings are
            interleaved within each run, so noise spreads over all of them. By default the sink's encode
            builds nothing (the round trip alone); --rt-encode makes it build the ECS JSON as well.
encoding    the whole daemon (pipeline_bench.py's child: json-file logs on disk -> discovery = "files" ->
            memory buffer -> null sink), null sink with `encode = false` and with `encode = true` (ECS JSON
            of every event built, then discarded), runs interleaved (the order alternates run to run), each
            in a fresh process with fresh state: json-file entries/s, CPU seconds per million entries, peak
            RSS, and the ratio encode / no encode.

    python benchmarks/delivery_bench.py                      # both parts, 5 runs
    python benchmarks/delivery_bench.py --part roundtrip --events 500000 --runs 7
    python benchmarks/delivery_bench.py --part encoding --records 1000000 --runs 7 --data /tmp/mix

Runs on uvloop when it is installed, as the daemon does (shipper.cli.run_async).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from pipeline_bench import bench_config

from shipper.buffer.memory import MemoryBuffer
from shipper.cli import run_async
from shipper.config import WhenFull
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics

HERE = Path(__file__).resolve().parent
# --- the reference events, in memory ----------------------------------------------------------------------


def make_batches(events: int, per_batch: int, containers: int = 8, seed: int = 7) -> list[Batch]:
    """Batches of `per_batch` events (one container each, containers in turn, each with a checkpoint) built
    from the reference workload the way the readers build them: one event per logical record, a stack trace
    merged into one (flagged multi-line, stderr), a JSON log parsed into `fields`."""
    rng = random.Random(seed)
    metas = []
    for c in range(containers):
        project, service = workload.SERVICES[c % len(workload.SERVICES)]
        metas.append(ContainerMeta(f"{c:064x}", f"{project}-{service}-{c + 1}",
                                   f"registry.example/{project}/{service}:1.{c}",
                                   {"com.docker.compose.project": project, "com.docker.compose.service": service,
                                    "team": project}, "bench-host"))
    ns = workload.T0_NS
    out = []
    n = 0
    b = 0
    while n < events:
        c = b % containers
        evs = []
        for _ in range(min(per_batch, events - n)):
            lines = workload.record_lines(rng, c, n)
            ns += rng.randint(1_000, 2_000_000)
            msg = "".join(lines)[:-1]
            if msg.startswith("{"):
                evs.append(Event(workload.rfc3339(ns), msg, "stdout", json.loads(msg)))
            elif len(lines) > 1:
                evs.append(Event(workload.rfc3339(ns), msg, "stderr", None, 2))  # Flag.MULTILINE
            else:
                evs.append(Event(workload.rfc3339(ns), msg, "stderr" if rng.random() < 0.1 else "stdout"))
            n += 1
        out.append(Batch(metas[c], evs, Checkpoint(metas[c].id, b)))
        b += 1
    return out


# --- round trip -------------------------------------------------------------------------------------------


class RoundTripSink(Sink):
    """A destination `rtt` seconds away: every send waits that long, then succeeds. Encodes the ECS JSON
    of the request when `encode` (what a JSON sink pays), else nothing."""

    def __init__(self, config: SinkBase, context: SinkContext, rtt: float, encode: bool) -> None:
        super().__init__(config, context)
        self.rtt = rtt
        self.encoder = JsonLinesEncoder() if encode else None
        self.requests = 0
        self.waited = 0.0  # seconds the sends actually slept (the loop's timers are not exact)

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches) if self.encoder is not None else None)

    async def send(self, request: Request) -> None:
        t = time.perf_counter()
        await asyncio.sleep(self.rtt)
        self.waited += time.perf_counter() - t
        self.requests += 1
        return None


async def roundtrip_once(batches: list[Batch], in_flight: int, batch_max_events: int, rtt: float,
                         encode: bool, linger: float) -> dict[str, float]:
    metrics = Metrics()
    total = len(batches)
    safe = 0
    done = asyncio.Event()

    def on_safe(_: Checkpoint) -> None:
        nonlocal safe
        safe += 1
        if safe == total:
            done.set()

    events = sum(len(b) for b in batches)
    buf = MemoryBuffer(on_safe, metrics, max_events=events + 1, max_bytes=1 << 40, when_full=WhenFull.BLOCK)
    cursor = buf.cursor("bench")  # before pushing: with no cursor a push is safe (and gone) at once
    for b in batches:
        await buf.push(b)
    cfg = SinkBase(type="bench", batch_max_events=batch_max_events, max_in_flight=in_flight,
                   linger_secs=linger, healthcheck=False)
    sink = RoundTripSink(cfg, SinkContext("bench", Path(tempfile.gettempdir()), "bench-host", metrics), rtt, encode)
    runner = SinkRunner("bench", sink, cursor, metrics)
    c0 = time.process_time()
    t0 = time.perf_counter()
    task = asyncio.create_task(runner.run())
    await done.wait()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert runner.sent_events == events, (runner.sent_events, events)
    return {"wall": wall, "cpu": cpu, "events": events, "requests": sink.requests,
            "rtt_ms": sink.waited / max(sink.requests, 1) * 1e3}


def spread(values: Sequence[float], fmt: str) -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def part_roundtrip(a: argparse.Namespace, out: list[str]) -> None:
    """Runs, and appends its table to `out`."""
    t = time.perf_counter()
    batches = make_batches(a.events, a.push_events)
    print(f"built {a.events:,} events of the reference mix in {len(batches):,} batches of {a.push_events} "
          f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    settings = a.in_flight
    results: dict[int, list[dict[str, float]]] = {k: [] for k in settings}
    for run in range(a.runs):
        order = settings if run % 2 == 0 else list(reversed(settings))
        for k in order:
            r = run_async(roundtrip_once(batches, k, a.batch_max_events, a.rtt_ms / 1e3, a.rt_encode, a.linger))
            results[k].append(r)
            print(f"run {run + 1} max_in_flight={k}: {r['events'] / r['wall']:,.0f} events/s, "
                  f"{r['requests'] / r['wall']:,.0f} requests/s, rtt {r['rtt_ms']:.2f} ms", file=sys.stderr)

    def eps(r: dict[str, float]) -> float:
        return r["events"] / r["wall"]

    base = statistics.median(eps(r) for r in results[settings[0]])
    loop = "uvloop" if _uvloop() else "asyncio"
    out.append(f"\nround trip: {a.events:,} events (reference mix, batches of {a.push_events} pushed into a memory "
               f"buffer), sink send = asyncio.sleep({a.rtt_ms / 1e3:g}), "
               f"encode={'ECS JSON' if a.rt_encode else 'none'}, batch_max_events={a.batch_max_events}, "
               f"linger_secs={a.linger:g}, {loop}, median (min-max) of {a.runs} runs; 'x per run': each run's "
               f"events/s over the same run's max_in_flight = {settings[0]}")
    head = (f"| {'max_in_flight':>13} | {'events/s':>10} | {'(min-max)':>17} | {'requests/s':>10} | "
            f"{'events/req':>10} | {'send ms':>7} | {'CPU us/event':>12} | {'x vs ' + str(settings[0]):>8} | "
            f"{'x per run':>11} |")
    out.append(head)
    out.append("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for k in settings:
        rs = results[k]
        med = statistics.median(eps(r) for r in rs)
        paired = [eps(r) / eps(r1) for r, r1 in zip(rs, results[settings[0]], strict=True)]
        out.append(f"| {k:>13} | {med:>10,.0f} | {spread([eps(r) for r in rs], ',.0f'):>17} | "
                   f"{statistics.median(r['requests'] / r['wall'] for r in rs):>10,.0f} | "
                   f"{statistics.median(r['events'] / r['requests'] for r in rs):>10.0f} | "
                   f"{statistics.median(r['rtt_ms'] for r in rs):>7.2f} | "
                   f"{statistics.median(r['cpu'] / r['events'] * 1e6 for r in rs):>12.3f} | {med / base:>8.2f} | "
                   f"{spread(paired, '.2f'):>11} |")


def _uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- encoding (the whole daemon) --------------------------------------------------------------------------



def part_encoding(a: argparse.Namespace, out: list[str]) -> None:
    """Runs, and appends its table to `out`."""
    # (label, pipeline_bench.py to run as the child, the null sink's `encode`: None for a tree without the key)
    variants: list[tuple[str, Path, bool | None]] = [("encode = false", HERE / "pipeline_bench.py", False),
                                                      ("encode = true", HERE / "pipeline_bench.py", True)]
    if a.baseline:
        base_script = Path(a.baseline).resolve() / "benchmarks" / "pipeline_bench.py"
        if a.baseline_encode:  # a baseline tree that has the null sink's `encode` key: both settings
            variants[:0] = [("baseline", base_script, False), ("baseline encode", base_script, True)]
        else:
            variants.insert(0, ("baseline", base_script, None))
    work = Path(tempfile.mkdtemp(prefix="shipper-delivery-bench-"))
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    try:
        data = Path(a.data) if a.data else work / "data"
        if not (data / "manifest.json").exists():
            subprocess.run([sys.executable, str(HERE / "workload.py"), str(data), "--records", str(a.records),
                            "--containers", str(a.containers)], check=True)
        manifest = json.loads((data / "manifest.json").read_text())
        entries = sum(c["entries"] for c in manifest["containers"])
        records = sum(c["records"] for c in manifest["containers"])
        for run in range(a.runs):
            for label, script, encode in variants if run % 2 == 0 else list(reversed(variants)):
                state = work / f"state-{run}"
                cfg = work / "bench.toml"
                cfg.write_text(bench_config(data, state, encode=encode))
                proc = subprocess.run([sys.executable, str(script), "--child", str(cfg), str(entries), "--timeout",
                                       str(a.timeout)], capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{label}: {script} --child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results[label].append(r)
                print(f"run {run + 1} {label}: {r['entries'] / r['wall']:,.0f} entries/s, {r['cpu']:.2f} CPU s, "
                      f"{r['rss_mib']:.0f} MiB, events={r['events']:.0f}/{records}", file=sys.stderr)
                shutil.rmtree(state, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        ("json-file entries/s", lambda r: r["entries"] / r["wall"], ",.0f"),
        ("events/s", lambda r: r["events"] / r["wall"], ",.0f"),
        ("CPU s per million entries", lambda r: r["cpu"] / r["entries"] * 1e6, ".2f"),
        ("wall s", lambda r: r["wall"], ".2f"),
        ("peak RSS MiB", lambda r: r["rss_mib"], ".0f"),
        ("events shipped", lambda r: r["events"], ",.0f"),
    ]
    labels = [label for label, _, _ in variants]
    out.append(f"\nencoding: whole daemon, {records:,} records = {entries:,} json-file entries, {a.containers} "
               f"containers, memory buffer, null sink, variants interleaved, median (min-max) of {a.runs} runs"
               + (f"; baseline = {a.baseline}" + ("" if a.baseline_encode else " (null sink without the encode key)")
                  if a.baseline else ""))
    ratios = [("true / false", "encode = true", "encode = false")]
    if a.baseline:
        ratios += [("false / base", "encode = false", "baseline"), ("true / base", "encode = true", "baseline")]
    if a.baseline and a.baseline_encode:
        ratios += [("base t / f", "baseline encode", "baseline"),
                   ("true / base t", "encode = true", "baseline encode")]
    head = ("| " + " | ".join([f"{'figure':<26}", *(f"{lb:>31}" for lb in labels), *(f"{n:>12}" for n, _, _ in ratios)])
            + " |")
    out.append(head)
    out.append("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for name, f, fmt in figures:
        meds = {}
        cols = []
        for lb in labels:
            vals = [f(r) for r in results[lb]]
            meds[lb] = statistics.median(vals)
            cols.append(f"{format(meds[lb], fmt)} ({spread(vals, fmt)})")
        rcols = [f"{meds[x] / meds[y]:>12.3f}" if meds[y] else f"{'-':>12}" for _, x, y in ratios]
        out.append("| " + " | ".join([f"{name:<26}", *(f"{c:>31}" for c in cols), *rcols]) + " |")
    # paired: each run's encode figure against the no-encode run next to it (same noise, mostly)
    pairs = [(t["entries"] / t["wall"]) / (f["entries"] / f["wall"])
             for f, t in zip(results["encode = false"], results["encode = true"], strict=True)]
    out.append(f"entries/s encode = true / encode = false, per run (adjacent processes): median "
               f"{statistics.median(pairs):.3f} (min-max {min(pairs):.3f}-{max(pairs):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "roundtrip", "encoding"], default="all")
    ap.add_argument("--runs", type=int, default=5)
    g = ap.add_argument_group("round trip")
    g.add_argument("--events", type=int, default=500_000, help="events pushed into the memory buffer")
    g.add_argument("--push-events", type=int, default=64, help="events per pushed batch (one container each)")
    g.add_argument("--batch-max-events", type=int, default=256, help="the sink's batch_max_events")
    g.add_argument("--linger", type=float, default=0.01, help="the sink's linger_secs")
    g.add_argument("--rtt-ms", type=float, default=2.0, help="the sink's round trip per request")
    g.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4, 8], help="max_in_flight settings")
    g.add_argument("--rt-encode", action="store_true", help="the round-trip sink also builds the ECS JSON")
    g = ap.add_argument_group("encoding")
    g.add_argument("--records", type=int, default=1_000_000)
    g.add_argument("--containers", type=int, default=8)
    g.add_argument("--data", help="workload folder to reuse (written there if missing)")
    g.add_argument("--timeout", type=float, default=600)
    g.add_argument("--baseline", metavar="TREE", help="another source tree (e.g. `git archive REV | tar -x -C "
                   "TREE`) whose benchmarks/pipeline_bench.py runs as a third variant, null sink as configured "
                   "there (no encode key): the figure before a change, in the same session")
    g.add_argument("--baseline-encode", action="store_true", help="run the baseline tree with `encode = false` "
                   "and `encode = true` too (a tree that has the null sink's encode key)")
    a = ap.parse_args()
    encoding: list[str] = []
    roundtrip: list[str] = []
    # The daemon runs first: its children would inherit this process's peak RSS (ru_maxrss survives fork and
    # exec), which holds the round trip's events once they are built.
    if a.part in ("all", "encoding"):
        part_encoding(a, encoding)
    if a.part in ("all", "roundtrip"):
        part_roundtrip(a, roundtrip)
    print("\n".join(roundtrip + encoding))


if __name__ == "__main__":
    main()
