"""benchmarks/sinks_bench.py's `workers=1` and `workers=2` kinds run, CI-sized: the real daemon as a subprocess,
one short run each, and the table has a row per kind and the line comparing them. Not a timing test: the
checks only catch a broken measurement (nothing read, no CPU or memory counted, a worker's memory left out)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT

KINDS = ("workers=1", "workers=2")
RECORDS = 20_000


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by kind: entries/s, CPU s per M entries, peak RSS MiB, vs null."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in KINDS:
            found[cells[0]] = cells[1:]
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.mark.timeout(240)
def test_the_sinks_benchmark_runs_the_daemon_with_one_and_two_workers() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sinks_bench.py"), "--kinds", ",".join(KINDS),
                           "--records", str(RECORDS), "--runs", "1", "--timeout", "120"],
                          cwd=ROOT, capture_output=True, text=True, timeout=220)
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0, out
    table = rows(proc.stdout)
    assert set(table) == set(KINDS), out
    for rate, cpu, rss, _ in table.values():
        assert number(rate) > 0 and number(cpu) > 0 and number(rss) > 0, out
    # the supervisor and two whole pipelines hold more than one pipeline: the workers' memory is counted
    assert number(table["workers=2"][2]) > number(table["workers=1"][2]), out
    ratio = re.search(r"^workers=2 against workers=1: ([0-9.]+)x the rate", proc.stdout, re.MULTILINE)
    assert ratio is not None and float(ratio.group(1)) > 0, out
    # each run's line on stderr: events were delivered, not just entries read
    for kind in KINDS:
        run = re.search(rf"^run 1 {re.escape(kind)}: .* events=([0-9]+)$", proc.stderr, re.MULTILINE)
        assert run is not None and int(run.group(1)) > 0, out
