"""Disk spool throughput: write N batches of the reference log mix, then read them back through a cursor.

    python benchmarks/spool_bench.py [--batches 400] [--batch-events 256] [--runs 3] [--dir DIR]

Reference mix (message sizes): plain text 90-170 B 64.4%, JSON 150-260 B 25% (parsed into `fields`, as
json.mode='field' does), stack traces 9%, 1-8 KiB 1.5%, 20-60 KiB 0.1%. Prints, per fsync policy, the
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

from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, FsyncPolicy
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics

WORDS = ("request", "user", "id", "served", "GET", "/api/v1/items", "status", "200", "latency", "ms",
         "cache", "miss", "db", "query", "ok", "retry", "worker", "job", "done", "queued")


def _text(rng: random.Random, size: int) -> str:
    out = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:size]


def _stack(rng: random.Random) -> str:
    lines = ["Exception in thread \"main\" java.lang.IllegalStateException: " + _text(rng, 60)]
    for i in range(rng.randint(8, 40)):
        lines.append(f"\tat com.example.service.Handler{i}.process(Handler{i}.java:{rng.randint(10, 900)})")
    return "\n".join(lines)


def make_event(rng: random.Random, t: float, seq: int) -> Event:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
    r = rng.random() * 100
    if r < 25:
        doc = {"level": "info", "msg": _text(rng, rng.randint(60, 140)), "user": rng.randint(1, 10**6),
               "latency_ms": rng.randint(1, 900)}
        line = json.dumps(doc)
        return Event(ts, line, "stdout", doc, 0, seq)
    if r < 34:
        return Event(ts, _stack(rng), "stderr", None, 2, seq)
    if r < 35.5:
        return Event(ts, _text(rng, rng.randint(1024, 8192)), "stdout", None, 0, seq)
    if r < 35.6:
        return Event(ts, _text(rng, rng.randint(20 * 1024, 60 * 1024)), "stdout", None, 1, seq)
    return Event(ts, _text(rng, rng.randint(90, 170)), "stdout", None, 0, seq)


def make_batches(n: int, per_batch: int, seed: int = 7) -> list[Batch]:
    rng = random.Random(seed)
    metas = [ContainerMeta(f"{i:064x}", f"app-{i}", "example/app:1.2",
                           {"com.docker.compose.service": f"s{i}"}, "host-1") for i in range(8)]
    t = time.time()
    out = []
    for b in range(n):
        meta = metas[b % len(metas)]
        events = [make_event(rng, t + (b * per_batch + i) * 1e-4, i) for i in range(per_batch)]
        out.append(Batch(meta, events, Checkpoint(meta.id, b)))
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
