"""Per-entry cost of rebuilding events: LineAssembler.add + take over the reference mix, on one core.

The daemon's budget is 200,000 json-file entries/s on one core, half of it for the reader's orjson.loads
and the sink, so add + take must stay well under 2 us per entry. This feeds every entry of a Docker-shaped
log tree through one LineAssembler per container (taking a batch every --batch entries, flushing at the
end, as a reader does) and prints, per run and as the median: entries/s, us/entry and events out. The
`loads+add` row also times orjson.loads of each raw json-file line, i.e. what a reader adds on top.

The data is "standard mix v1", written by benchmarks/workload.py (run here as a subprocess when DIR holds
no log tree yet):

    python benchmarks/assemble_bench.py /tmp/mix --runs 5

Profile with: python -m cProfile -s tottime benchmarks/assemble_bench.py /tmp/mix --runs 1
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shipper.config import load_dict
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler

Entry = tuple[str, str, str, int]


def log_files(container_dir: Path) -> list[Path]:
    """A container's json-file logs, oldest first (rotated .N ... .1, then the live file)."""
    live = sorted(container_dir.glob("*-json.log"))
    rotated = sorted(container_dir.glob("*-json.log.*"), key=lambda p: -int(p.suffix[1:]))
    return rotated + live


def load_tree(root: Path) -> list[tuple[str, list[bytes]]]:
    """(container id, raw json-file lines) for every container under ROOT/containers."""
    out = []
    for d in sorted((root / "containers").iterdir()):
        raw: list[bytes] = []
        for f in log_files(d):
            raw.extend(f.read_bytes().splitlines(keepends=True))
        out.append((d.name, raw))
    return out


def parse(raw: list[bytes]) -> list[Entry]:
    entries = []
    off = 0
    for line in raw:
        d = orjson.loads(line)
        entries.append((d["time"], d["stream"], d["log"], off))
        off += len(line)
    return entries


def run_once(tree: list[tuple[str, list[Entry]]], batch: int) -> tuple[float, int, int]:
    """Seconds, entries, events for add + take over every container."""
    cfg = load_dict({})
    metrics = Metrics()
    n_entries = n_events = 0
    elapsed = 0.0
    for cid, entries in tree:
        asm = LineAssembler(cid[:12], cfg, metrics)
        add, take = asm.add, asm.take
        t0 = time.perf_counter()
        for i in range(0, len(entries), batch):
            for ts, stream, text, pos in entries[i:i + batch]:
                add(ts, stream, text, pos)
            n_events += len(take())
        asm.flush()
        n_events += len(take())
        elapsed += time.perf_counter() - t0
        n_entries += len(entries)
    return elapsed, n_entries, n_events


def run_once_with_loads(tree: list[tuple[str, list[bytes]]], batch: int) -> tuple[float, int, int]:
    """As run_once, with orjson.loads of every raw line inside the timing (what a reader adds)."""
    cfg = load_dict({})
    metrics = Metrics()
    loads = orjson.loads
    n_entries = n_events = 0
    elapsed = 0.0
    for cid, raw in tree:
        asm = LineAssembler(cid[:12], cfg, metrics)
        add, take = asm.add, asm.take
        t0 = time.perf_counter()
        off = 0
        for i in range(0, len(raw), batch):
            for line in raw[i:i + batch]:
                d = loads(line)
                add(d["time"], d["stream"], d["log"], off)
                off += len(line)
            n_events += len(take())
        asm.flush()
        n_events += len(take())
        elapsed += time.perf_counter() - t0
        n_entries += len(raw)
    return elapsed, n_entries, n_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="log tree (ROOT/containers/<id>/<id>-json.log)")
    ap.add_argument("--generator", default=str(Path(__file__).with_name("workload.py")),
                    help="script that writes the tree when ROOT holds none (default: workload.py)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--containers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2048, help="entries between take() calls")
    a = ap.parse_args()

    if not (a.root / "containers").is_dir():
        subprocess.run([sys.executable, a.generator, str(a.root), "--records", str(a.records),
                        "--containers", str(a.containers)], check=True)

    raw_tree = load_tree(a.root)
    tree = [(cid, parse(raw)) for cid, raw in raw_tree]
    total = sum(len(e) for _, e in tree)
    print(f"{len(tree)} containers, {total} json-file entries, {a.runs} runs, take() every {a.batch} "
          f"entries, Python {sys.version.split()[0]}")
    print(f"{'run':>6} {'what':<14} {'entries':>9} {'events':>9} {'seconds':>8} {'entries/s':>11} "
          f"{'us/entry':>9}")
    rows: dict[str, list[tuple[float, int, int]]] = {"add+take": [], "loads+add+take": []}
    for r in range(a.runs):
        for what in rows:
            gc.collect()
            result = run_once(tree, a.batch) if what == "add+take" else run_once_with_loads(raw_tree, a.batch)
            rows[what].append(result)
            print(row(str(r + 1), what, *result))
    for what, results in rows.items():
        secs = statistics.median(s for s, _, _ in results)
        print(row("median", what, secs, results[0][1], results[0][2]))


def row(run: str, what: str, secs: float, n: int, events: int) -> str:
    return f"{run:>6} {what:<14} {n:>9} {events:>9} {secs:>8.3f} {n / secs:>11,.0f} {secs / n * 1e6:>9.3f}"


if __name__ == "__main__":
    main()
