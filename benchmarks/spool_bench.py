"""Disk spool throughput: write N batches of the reference log mix, then read them back through a cursor.

    python benchmarks/spool_bench.py [--batches 400] [--batch-events 256] [--runs 3] [--dir DIR]

The events are the reference workload's ("standard mix v1", benchmarks/workload.py), one per logical
record as the readers build them: stack traces merged, JSON logs parsed into `fields`. Prints, per fsync policy, the
median of the runs: events/s and MB/s (spool bytes on disk) for writing (push until the last returns, then
the close that makes it all durable) and for reading (next + ack per batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload

from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, FsyncPolicy
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics


def make_batches(n: int, per_batch: int, seed: int = 7) -> list[Batch]:
    """Batches of events as the readers build them from the reference workload (benchmarks/workload.py):
    one event per logical record, a stack trace merged into one, JSON logs parsed into `fields`."""
    rng = random.Random(seed)
    metas = [ContainerMeta(f"{i:064x}", f"app-{i}", "example/app:1.2",
                           {"com.docker.compose.service": f"s{i}"}, "host-1") for i in range(8)]
    ns = workload.T0_NS
    out = []
    for b in range(n):
        c = b % len(metas)
        events = []
        for i in range(per_batch):
            lines = workload.record_lines(rng, c, b * per_batch + i)
            ns += rng.randint(1_000, 2_000_000)
            msg = "".join(lines)[:-1]
            if msg.startswith("{"):
                events.append(Event(workload.rfc3339(ns), msg, "stdout", json.loads(msg), 0, 0))
            else:
                events.append(Event(workload.rfc3339(ns), msg, "stderr" if len(lines) > 1 else "stdout", None,
                                    2 if len(lines) > 1 else 0, 0))
        out.append(Batch(metas[c], events, Checkpoint(metas[c].id, b)))
    return out


async def run_once(directory: Path, policy: FsyncPolicy, batches: list[Batch],
                   compression: bool) -> tuple[float, float, int]:
    """(write seconds, read seconds, bytes on disk)."""
    shutil.rmtree(directory, ignore_errors=True)
    cfg = BufferConfig(fsync=policy, max_bytes=8 << 30, compression=compression)
    safe: list[object] = []
    spool = DiskSpool(directory, cfg, Metrics(), safe.append)
    await spool.open()
    cur = spool.cursor("bench")
    t0 = time.perf_counter()
    for b in batches:
        await spool.push(b)
    await spool.close()  # the interval policy's last fsync is part of the cost
    t_write = time.perf_counter() - t0
    assert len(safe) == len(batches)
    size = sum(p.stat().st_size for p in (directory / "segments").glob("*.seg"))

    spool = DiskSpool(directory, cfg, Metrics(), safe.append)
    await spool.open()
    cur = spool.cursor("bench")
    n = 0
    t0 = time.perf_counter()
    while n < len(batches):
        seq, _ = await cur.next()
        cur.ack(seq)
        n += 1
    t_read = time.perf_counter() - t0
    await spool.close()
    return t_write, t_read, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--batch-events", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="", help="where to put the spool (default: a temporary directory)")
    ap.add_argument("--compression", action="store_true")
    args = ap.parse_args()

    batches = make_batches(args.batches, args.batch_events)
    events = args.batches * args.batch_events
    msg_bytes = sum(len(ev.message) for b in batches for ev in b.events)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spool-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    fs = os.statvfs(base)
    print(f"{events} events in {args.batches} batches, {msg_bytes / 1e6:.1f} MB of messages, "
          f"spool in {base} (block size {fs.f_bsize}), compression={args.compression}, "
          f"median of {args.runs} runs")
    print(f"{'policy':<9} {'write ev/s':>11} {'write MB/s':>11} {'read ev/s':>11} {'read MB/s':>10} "
          f"{'spool MB':>9}")
    try:
        for policy in (FsyncPolicy.ALWAYS, FsyncPolicy.INTERVAL, FsyncPolicy.NEVER):
            results = [asyncio.run(run_once(base / policy.value, policy, batches, args.compression))
                       for _ in range(args.runs)]
            w = statistics.median(r[0] for r in results)
            rd = statistics.median(r[1] for r in results)
            size = results[-1][2]
            print(f"{policy.value:<9} {events / w:>11,.0f} {size / w / 1e6:>11.1f} {events / rd:>11,.0f} "
                  f"{size / rd / 1e6:>10.1f} {size / 1e6:>9.1f}")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
