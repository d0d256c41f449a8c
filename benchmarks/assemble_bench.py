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

`--decode` times ways of decoding the raw json-file lines of one chunk (256 KiB) into (time, stream, log):
one `orjson.loads` per line (what the reader does) against one `orjson.loads` of the whole chunk joined into
a JSON array, bare and with the checks that make its items provably the lines, one each (see
`decode_array_exact`): the measured case for and against batch-at-a-time decoding.

`--digest` checks instead of timing: every container's log goes through the json-file reader's parser
(`_Parser._parse`, in chunks of `input.read_chunk_bytes`, events taken after each chunk, as the reader
does) and a SHA-256 of every event (timestamp, message, stream, fields, flags, seq) and of the safe position
after each chunk is printed. With `--tree DIR` the code comes from another source tree, so the output of
two commits can be compared on the same workload:

    python benchmarks/assemble_bench.py /tmp/mix --digest --tree /tmp/base
    python benchmarks/assemble_bench.py /tmp/mix --digest        # the same digest: byte-identical events
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import subprocess
import sys
import time
from itertools import chain
from operator import itemgetter
from pathlib import Path

import orjson

if "--tree" in sys.argv:  # the code of another source tree (see the docstring); before any import of it
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
else:
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


_FIELDS = itemgetter("time", "stream", "log")
_FIRST = itemgetter(0)


def decode_per_line(lines: list[bytes]) -> list[tuple[str, str, str]]:
    """One orjson.loads per line and the reader's type check (`+ ""`)."""
    loads = orjson.loads
    out = []
    for line in lines:
        d = loads(line)
        out.append((d["time"] + "", d["stream"] + "", d["log"] + ""))
    return out


def decode_array(lines: list[bytes]) -> list[tuple[str, str, str]]:
    """One orjson.loads of the chunk as an array, no checks: the floor of batch decoding (not exact)."""
    return list(map(_FIELDS, orjson.loads(b"[" + b",\n".join(lines) + b"]")))


def decode_array_exact(lines: list[bytes]) -> list[tuple[str, str, str]] | None:
    """One orjson.loads of the chunk, each line wrapped as a one-item array ("[[" + "]\n,[".join + "]]"),
    and the checks without which the items are not provably the lines (a line holding two objects and two
    lines making one parse the same as valid lines otherwise): as many rows as lines, each exactly one
    object of three string fields. None: fall back to per line."""
    try:
        rows = orjson.loads(b"[[" + b"]\n,[".join(lines) + b"]]")
        if len(rows) != len(lines) or set(map(len, rows)) != {1}:
            return None
        items = list(map(_FIRST, rows))
        if set(map(len, items)) != {3}:
            return None
        entries: list[tuple[str, str, str]] = list(map(_FIELDS, items))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if set(map(type, chain.from_iterable(entries))) != {str}:
        return None
    return entries


def decode_table(tree: list[tuple[str, list[bytes]]], runs: int, chunk: int = 256 * 1024) -> None:
    """ns per entry of each decoder, median of `runs`, over chunks of about `chunk` bytes of whole lines."""
    chunks: list[list[bytes]] = []
    for _, raw in tree:
        cur: list[bytes] = []
        size = 0
        for line in raw:
            cur.append(line.rstrip(b"\n"))
            size += len(line)
            if size >= chunk:
                chunks.append(cur)
                cur, size = [], 0
        if cur:
            chunks.append(cur)
    n = sum(map(len, chunks))
    decoders = [decode_per_line, decode_array, decode_array_exact]
    for c in chunks:
        assert decode_array_exact(c) == decode_per_line(c), "the array decoders must agree with per line"
    times: dict[str, list[float]] = {d.__name__: [] for d in decoders}
    for r in range(runs):
        for d in decoders if r % 2 == 0 else reversed(decoders):
            gc.collect()
            t0 = time.process_time()
            for c in chunks:
                d(c)
            times[d.__name__].append(time.process_time() - t0)
    print(f"{n:,} json-file entries in {len(chunks)} chunks of ~{chunk // 1024} KiB, CPU ns per entry, median "
          f"(min-max) of {runs} runs, interleaved")
    print(f"| {'decoder':<20} | {'ns/entry':>8} | {'(min-max)':>11} |")
    print(f"|{'-' * 22}|{'-' * 10}|{'-' * 13}|")
    for name, ts in times.items():
        print(f"| {name:<20} | {statistics.median(ts) / n * 1e9:>8.0f} | "
              f"{min(ts) / n * 1e9:>5.0f}-{max(ts) / n * 1e9:<5.0f} |")


def digest(root: Path) -> tuple[str, int, int, int]:
    """(SHA-256, entries, events, invalid lines) of what the json-file parser makes of every container."""
    from shipper.sources.base import SourceContext
    from shipper.sources.jsonfile.parse import _Parser

    cfg = load_dict({})
    h = hashlib.sha256()
    n_entries = n_events = 0
    metrics = Metrics()

    async def never(_: object) -> None:
        raise AssertionError("the parser does not emit")

    for d in sorted((root / "containers").iterdir()):
        p = _Parser()
        p.ctx = SourceContext(cfg, metrics, never)
        p._label = d.name[:12]
        p._asm = LineAssembler(p._label, cfg, metrics)
        p._vbase = p._consumed = p._skip = 0
        p._tail = b""
        p._look = lambda: None  # type: ignore[method-assign]
        for gen, f in enumerate(log_files(d)):
            p._vbase, p._consumed, p._tail = gen << 40, 0, b""
            data = f.read_bytes()
            n_entries += data.count(b"\n")
            for i in range(0, len(data), cfg.input.read_chunk_bytes):
                p._parse(data[i:i + cfg.input.read_chunk_bytes])
                for ev in p._asm.take():
                    h.update(repr((ev.timestamp, ev.message, ev.stream, ev.fields, int(ev.flags),
                                   ev.seq)).encode())
                    n_events += 1
                h.update(repr(("position", p._asm.safe_position(p._vbase + p._consumed),
                               p._asm.safe_positions(p._vbase + p._consumed))).encode())
        p._asm.flush()
        for ev in p._asm.take():
            h.update(repr((ev.timestamp, ev.message, ev.stream, ev.fields, int(ev.flags), ev.seq)).encode())
            n_events += 1
    invalid = int(sum(metrics.snapshot().get("shipper_lines_invalid_total", {}).values()))
    return h.hexdigest(), n_entries, n_events, invalid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="log tree (ROOT/containers/<id>/<id>-json.log)")
    ap.add_argument("--generator", default=str(Path(__file__).with_name("workload.py")),
                    help="script that writes the tree when ROOT holds none (default: workload.py)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--containers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2048, help="entries between take() calls")
    ap.add_argument("--digest", action="store_true", help="print a digest of the events the reader's parser "
                    "makes (see the docstring) instead of timing")
    ap.add_argument("--decode", action="store_true", help="time per-line against whole-chunk decoding")
    ap.add_argument("--tree", help="source tree to import shipper from (with --digest: compare two trees)")
    a = ap.parse_args()

    if not (a.root / "containers").is_dir():
        subprocess.run([sys.executable, a.generator, str(a.root), "--records", str(a.records),
                        "--containers", str(a.containers)], check=True)
    if a.decode:
        raw = load_tree(a.root)
        from shipper.app import tune_gc

        tune_gc()
        decode_table(raw, a.runs)
        return
    if a.digest:
        sha, n_entries, n_events, invalid = digest(a.root)
        print(f"{sha}  entries={n_entries} events={n_events} invalid={invalid} tree={a.tree or '.'}")
        return

    raw_tree = load_tree(a.root)
    tree = [(cid, parse(raw)) for cid, raw in raw_tree]
    from shipper.app import tune_gc

    tune_gc()  # as the daemon does: else the collector walks the whole loaded tree thousands of times
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
