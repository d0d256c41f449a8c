"""What the end-to-end benchmarks share: their workload options, the reference workload written once
(benchmarks/workload.py), and one run of the whole daemon on a config (pipeline_bench.py's child, in a fresh
process, whose last stdout line is its figures as JSON)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINE_BENCH = HERE / "pipeline_bench.py"
Row = tuple[str, Callable[[dict[str, Any]], float], str]  # a figure, its value in one run, its format spec


def add_workload_args(ap: argparse.ArgumentParser, timeout: float) -> None:
    """--records, --containers, --runs, --data and --timeout (for one run's daemon to deliver everything)."""
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--containers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", help="workload folder to reuse (written there if missing)")
    ap.add_argument("--timeout", type=float, default=timeout)


@dataclass(frozen=True)
class Workload:
    data: Path
    entries: int  # json-file entries, what the daemon reads
    records: int  # logical records of the mix (a long line is several entries)


def workload(a: argparse.Namespace, work: Path) -> Workload:
    """The reference workload in --data, or in `work`/data; written first when it is not there yet."""
    data = Path(a.data) if a.data else work / "data"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, str(HERE / "workload.py"), str(data), "--records", str(a.records),
                        "--containers", str(a.containers)], check=True)
    manifest = json.loads((data / "manifest.json").read_text())
    return Workload(data, sum(c["entries"] for c in manifest["containers"]),
                    sum(c["records"] for c in manifest["containers"]))


def run_daemon(cfg: Path, entries: int, timeout: float, script: Path = PIPELINE_BENCH) -> dict[str, float]:
    """One daemon run on `cfg` until `entries` are read and delivered: wall, cpu, rss_mib, entries, events."""
    out = subprocess.run([sys.executable, str(script), "--child", str(cfg), str(entries), "--timeout",
                          str(timeout)], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def print_medians(results: list[dict[str, Any]], rows: list[Row], width: int = 28) -> None:
    """A markdown table of each figure's median over the runs."""
    print(f"| {'figure':<{width}} | {'median':>12} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|")
    for name, f, fmt in rows:
        value = statistics.median(f(r) for r in results)
        print(f"| {name:<{width}} | {format(value, fmt):>12} |")


def run_interleaved(kinds: list[str], runs: int, one_run: Callable[[str], dict[str, float]]
                    ) -> dict[str, list[dict[str, float]]]:
    """`runs` rounds of every kind in turn, so that a slower minute of the machine hits every kind alike."""
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for run in range(runs):
        for kind in kinds:
            r = one_run(kind)
            results[kind].append(r)
            print(f"run {run + 1} {kind}: {r['entries'] / r['wall']:,.0f} entries/s, {r['cpu']:.2f} CPU s, "
                  f"{r['rss_mib']:.0f} MiB, events={r['events']:.0f}", file=sys.stderr)
    return results


def kinds_table(results: dict[str, list[dict[str, float]]], base: str, per: str = "events",
                also: str = "null+encode") -> None:
    """One row a kind: medians of `per`/s, CPU s per million `per`, peak RSS, and the rate against `base`
    (and against `also` when it ran: the null sink that builds the JSON every JSON sink builds)."""
    def med(kind: str, f: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(f(r) for r in results[kind])

    rate = {k: med(k, lambda r: r[per] / r["wall"]) for k in results}
    bases = [b for b in (base, also) if b == base or b in results]
    w = max(12, *map(len, results))
    print(f"| {'sink':<{w}} | {per + '/s':>12} | {'CPU s per M ' + per:>20} | {'peak RSS MiB':>12} | "
          + " | ".join(f"{'vs ' + b:>9}" for b in bases) + " |")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|{'-' * 22}|{'-' * 14}|" + "|".join("-" * max(11, len(b) + 5) for b in bases)
          + "|")
    for k in results:
        cpu = med(k, lambda r: r["cpu"] / max(r[per], 1) * 1e6)
        rss = med(k, lambda r: r["rss_mib"])
        shares = [f"{rate[k] / rate[b]:.0%}" if rate.get(b) else "-" for b in bases]
        print(f"| {k:<{w}} | {rate[k]:>12,.0f} | {cpu:>20.2f} | {rss:>12.0f} | "
              + " | ".join(f"{v:>{max(9, len(b) + 3)}}" for v, b in zip(shares, bases, strict=True)) + " |")
