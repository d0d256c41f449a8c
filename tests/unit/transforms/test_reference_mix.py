"""The reference workload ("standard mix v1") end to end through LineAssembler: every record is one event.

The log tree is written by benchmarks/workload.py, the project's writer of that mix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shipper.event import Event, Flag
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler
from tests.unit.transforms.support import make_config

REPO = Path(__file__).resolve().parents[3]
SEQ = re.compile(r"seq=(\d+)-(\d+)")


def generator() -> Path:
    return REPO / "benchmarks" / "workload.py"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    subprocess.run([sys.executable, str(generator()), str(root), "--records", "6000", "--containers", "3",
                    "--seed", "5"], check=True, capture_output=True, timeout=120)
    return root


def read_container(log: Path) -> tuple[list[Event], list[dict[str, str]]]:
    asm = LineAssembler(log.parent.name[:12], make_config(), Metrics())
    raw = log.read_bytes().splitlines(keepends=True)
    entries = [orjson.loads(line) for line in raw]
    events: list[Event] = []
    off = 0
    for i, (e, line) in enumerate(zip(entries, raw, strict=True)):
        asm.add(e["time"], e["stream"], e["log"], off)
        off += len(line)
        if i % 500 == 0:
            events += asm.take()
    asm.flush()
    return events + asm.take(), entries


def test_every_record_is_one_event_and_every_trace_is_whole(tree: Path) -> None:
    manifest = orjson.loads((tree / "manifest.json").read_bytes())
    total_records = 0
    for c, info in enumerate(manifest["containers"]):
        log = tree / "containers" / info["id"] / f"{info['id']}-json.log"
        events, entries = read_container(log)
        records = info["records"]
        total_records += records
        tokens = [SEQ.findall(e.message) for e in events]
        assert all(len(t) == 1 for t in tokens), "an event holds exactly one record"
        seen = sorted(int(n) for t in tokens for (cc, n) in t if int(cc) == c)
        assert seen == list(range(records)), "every seq= token exactly once"
        assert len(events) == records

        heads = sum("payment failed" in e["log"] for e in entries)
        traces = [e for e in events if "payment failed" in e.message]
        assert heads > 0 and len(traces) == heads
        for ev in traces:
            lines = ev.message.split("\n")
            assert lines[1] == "java.lang.IllegalStateException: card declined"
            frames = [ln for ln in lines if ln.startswith("\tat ")]
            assert 3 <= len(frames) <= 13 and ev.flags == Flag.MULTILINE and ev.stream == "stderr"
            assert all(ln.startswith(("\tat ", "Caused by: ")) for ln in lines[2:])

        wanted_huge = {SEQ.search(e["log"]).group(0): None for e in entries  # type: ignore[union-attr]
                       if e["log"].startswith("DEBUG huge payload")}
        huge = [e for e in events if e.message.startswith("DEBUG huge payload")]
        assert len(huge) == len(wanted_huge)
        assert all(e.flags == Flag.PARTIAL and len(e.message) > 16384 for e in huge)
        json_events = [e for e in events if e.message.startswith("{")]
        assert json_events and all(e.fields is not None and "seq" in e.fields for e in json_events)
        assert all(e.flags == 0 for e in events if "order accepted" in e.message)
    assert total_records == 6000
