"""benchmarks/latency_bench.py runs, CI-sized: one short run per multi-line mode through the real dockerd, and
its table has a row per mode whose figures hang together. Not a timing test: the bounds only catch a broken
measurement (latencies negative or in minutes, nothing received, a rate far from the one asked for)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import pytest

from tests.integration.harness import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
latency_bench: Any = importlib.import_module("latency_bench")

pytestmark = pytest.mark.docker


def parse_row(line: str) -> dict[str, str]:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return dict(zip(latency_bench.COLUMNS, cells, strict=True))


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.mark.timeout(120)
def test_the_latency_benchmark_prints_a_sane_row_per_mode(docker_client: Any, tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # main() sets it; put back afterwards
    rc = latency_bench.main(["--rate", "1000", "--duration", "3", "--runs", "1", "--warmup", "0.5",
                             "--work", str(tmp_path)])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    medians = {r["variant"]: r for r in (parse_row(x) for x in out.splitlines() if "median of 1" in x)}
    assert set(medians) == {"auto", "off"}, out
    for r in medians.values():
        assert number(r["lines"]) == 3000 and number(r["missing"]) == 0 and number(r["dup"]) == 0
        assert 500 <= number(r["lines/s"]) <= 2000  # Docker's timestamps span about the 3 s asked for
        p50, p90, p99, top = (number(r[k]) for k in ("p50 ms", "p90 ms", "p99 ms", "max ms"))
        assert 0 < p50 <= p90 <= p99 <= top < 30_000
