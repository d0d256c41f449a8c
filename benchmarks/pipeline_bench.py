"""End-to-end throughput: json-file logs on disk -> shipper (discovery = "files") -> null sink.

Writes the reference workload once (benchmarks/workload.py), then runs the daemon on it several times, each
in a fresh process with fresh state, and prints a table of medians: json-file entries/s, events/s, CPU
seconds per million entries and peak RSS.

    python benchmarks/pipeline_bench.py --records 1000000 --runs 3
    python benchmarks/pipeline_bench.py --buffer disk        # through the durable spool

Profile one run with: python -m cProfile -o /tmp/p.out benchmarks/pipeline_bench.py --child CONFIG N
(then `python -m pstats /tmp/p.out`), or py-spy record -- python benchmarks/pipeline_bench.py ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def bench_config(data: Path | str, state: Path | str, buffer: str = "memory", encode: bool | None = None) -> str:
    """The daemon's config for a run: the workload folder by file discovery, into the null sink (`encode`:
    the null sink's key, left out when None, as for trees older than that key)."""
    return f"""
[docker]
data_root = "{data}"
discovery = "files"
read = "files"
host = "unix:///nonexistent.sock"
[state]
dir = "{state}"
[buffer]
type = "{buffer}"
[telemetry]
stats_interval_secs = 0
log_level = "warning"
[sinks.null]
type = "null"
""" + ("" if encode is None else f"encode = {str(encode).lower()}\n")


def child(config_path: str, expected_entries: int, timeout: float) -> None:
    """Run the daemon in this process until every entry is read and delivered; print figures as JSON."""
    sys.path.insert(0, str(HERE.parent))
    from shipper.app import App
    from shipper.cli import run_async
    from shipper.config import load

    app = App(load(config_path))
    m = app.metrics
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)

    async def main() -> float:
        runner = asyncio.create_task(app.run())
        last, last_change = -1.0, time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            entries = m.get("shipper_entries_read_total")
            sent = m.get("shipper_events_sent_total")
            done = entries >= expected_entries and sent >= m.get("shipper_events_read_total") > 0
            if done or time.perf_counter() - t0 > timeout:
                break
            if entries != last:
                last, last_change = entries, time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
        elapsed = time.perf_counter() - t0
        app.request_stop()
        await runner
        return elapsed

    elapsed = run_async(main())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": elapsed, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                      "rss_mib": r1.ru_maxrss / 1024, "entries": m.get("shipper_entries_read_total"),
                      "events": m.get("shipper_events_sent_total"),
                      "invalid": m.get("shipper_lines_invalid_total")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--containers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", help="workload folder to reuse (written there if missing)")
    ap.add_argument("--buffer", choices=["memory", "disk"], default="memory")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "ENTRIES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.timeout)
        return

    work = Path(tempfile.mkdtemp(prefix="shipper-bench-"))
    data = Path(a.data) if a.data else work / "data"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, str(HERE / "workload.py"), str(data), "--records", str(a.records),
                        "--containers", str(a.containers)], check=True)
    manifest = json.loads((data / "manifest.json").read_text())
    entries = sum(c["entries"] for c in manifest["containers"])
    records = sum(c["records"] for c in manifest["containers"])
    results = []
    for run in range(a.runs):
        state = work / f"state-{run}"
        cfg = work / "bench.toml"
        cfg.write_text(bench_config(data, state, a.buffer))
        out = subprocess.run([sys.executable, __file__, "--child", str(cfg), str(entries), "--timeout",
                              str(a.timeout)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"run {run + 1}: {r['entries'] / r['wall']:,.0f} entries/s, {r['cpu']:.2f} CPU s, "
              f"{r['rss_mib']:.0f} MiB, events={r['events']:.0f}/{records}", file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)

    def med(f: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(f(r) for r in results)

    print(f"\nshipper pipeline benchmark: {records:,} records = {entries:,} json-file entries, "
          f"{a.containers} containers, buffer={a.buffer}, null sink, median of {a.runs} runs")
    print(f"| {'figure':<28} | {'median':>12} |")
    print(f"|{'-' * 30}|{'-' * 14}|")
    rows = [("json-file entries/s", med(lambda r: r["entries"] / r["wall"]), ",.0f"),
            ("events/s", med(lambda r: r["events"] / r["wall"]), ",.0f"),
            ("CPU s per million entries", med(lambda r: r["cpu"] / r["entries"] * 1e6), ".2f"),
            ("wall s", med(lambda r: r["wall"]), ".2f"),
            ("peak RSS MiB", med(lambda r: r["rss_mib"]), ".0f"),
            ("events shipped", med(lambda r: r["events"]), ",.0f"),
            ("entries skipped as invalid", med(lambda r: r["invalid"]), ",.0f")]
    for name, value, fmt in rows:
        print(f"| {name:<28} | {format(value, fmt):>12} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
