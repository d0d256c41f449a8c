from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.buffer.sizing import batch_bytes
from shipper.config import WhenFull
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler
from tests.unit.transforms.support import make_config

REPO = Path(__file__).resolve().parents[3]

META = ContainerMeta(id="c1", name="one")


def batch(n: int, pos: int) -> Batch:
    return Batch(META, [Event(f"t{pos}-{i}", f"m{pos}-{i}") for i in range(n)], Checkpoint("c1", pos))


def make(when_full: WhenFull = WhenFull.BLOCK,
         max_events: int = 10) -> tuple[MemoryBuffer, list[int], Metrics]:
    safe: list[int] = []
    m = Metrics()
    buf = MemoryBuffer(lambda cp: safe.append(int(cp.position)), m, max_events, 1 << 30, when_full)
    return buf, safe, m


async def test_checkpoint_safe_only_when_every_sink_acked() -> None:
    buf, safe, _ = make()
    a, b = buf.cursor("a"), buf.cursor("b")
    await buf.push(batch(2, 1))
    await buf.push(batch(2, 2))
    sa, ba = await a.next()
    assert ba.checkpoint.position == 1  # type: ignore[union-attr]
    a.ack(sa)
    assert safe == []
    sb, _ = await b.next()
    b.ack(sb)
    assert safe == [1]
    assert a.pending() == 2 and b.pending() == 2


async def test_block_waits_for_space() -> None:
    buf, safe, _ = make(max_events=4)
    cur = buf.cursor("s")
    await buf.push(batch(3, 1))
    pushed = asyncio.create_task(buf.push(batch(3, 2)))
    await asyncio.sleep(0.01)
    assert not pushed.done()
    seq, _ = await cur.next()
    cur.ack(seq)
    await asyncio.wait_for(pushed, 1)
    assert safe == [1]


async def test_drop_newest_counts_and_keeps_old() -> None:
    buf, safe, m = make(WhenFull.DROP_NEWEST, max_events=4)
    cur = buf.cursor("s")
    await buf.push(batch(3, 1))
    await buf.push(batch(3, 2))
    assert m.get("shipper_events_dropped_total") == 3
    assert safe == [2]  # dropped on purpose: the reader may move on
    _, b = await cur.next()
    assert b.checkpoint.position == 1  # type: ignore[union-attr]


async def test_drop_oldest_evicts_unacked() -> None:
    buf, _safe, m = make(WhenFull.DROP_OLDEST, max_events=4)
    cur = buf.cursor("s")
    await buf.push(batch(3, 1))
    await buf.push(batch(3, 2))
    assert m.get("shipper_events_dropped_total") == 3
    _, b = await cur.next()
    assert b.checkpoint.position == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [1, 3])
async def test_order_preserved(n: int) -> None:
    buf, _, _ = make(max_events=1000)
    cur = buf.cursor("s")
    for i in range(20):
        await buf.push(batch(n, i))
    got = []
    for _ in range(20):
        seq, b = await cur.next()
        got.append(b.checkpoint.position)  # type: ignore[union-attr]
        cur.ack(seq)
    assert got == list(range(20))


# --- what max_bytes counts: the events' real size in memory ------------------------------------------------


def test_batch_bytes_is_what_the_events_take_in_memory(tmp_path: Path) -> None:
    """On the reference mix, built as the json-file reader builds it, batch_bytes is within 10% of what
    tracemalloc sees the events take (plain, JSON with parsed fields, long and multi-line ones)."""
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "workload.py"), str(tmp_path), "--records", "4000",
                    "--containers", "2", "--seed", "3"], check=True, capture_output=True, timeout=120)
    for log in sorted(tmp_path.glob("containers/*/*-json.log")):
        raw = log.read_bytes().splitlines(keepends=True)
        asm = LineAssembler(log.parent.name[:12], make_config(), Metrics())
        gc.collect()
        tracemalloc.start()
        try:
            events: list[Event] = []
            for off, line in enumerate(raw):
                d = orjson.loads(line)
                asm.add(d["time"], d["stream"], d["log"], off)
                events.extend(asm.take())
            asm.flush()
            events.extend(asm.take())
            del d
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert any(ev.fields for ev in events) and any(not ev.fields for ev in events)
        ratio = batch_bytes(Batch(META, events)) / held
        assert 0.9 < ratio < 1.1, f"{log.parent.name[:12]}: estimate/held = {ratio:.3f}"


async def test_a_size_the_reader_counted_is_taken_as_it_is() -> None:
    """max_bytes counts a batch by the size its reader counted (not walked again); a batch without one is
    walked."""
    buf = MemoryBuffer(lambda cp: None, Metrics(), 100, 10_000, WhenFull.DROP_NEWEST)
    buf.cursor("a")
    counted = Batch(META, [Event("t", "x")], size=6_000)
    await buf.push(counted)
    assert buf.bytes == 6_000
    await buf.push(Batch(META, [Event("t", "y")], size=6_000))  # 12,000 > max_bytes: refused
    assert buf.bytes == 6_000
    walked = Batch(META, [Event("t", "z")])
    await buf.push(walked)
    assert buf.bytes == 6_000 + batch_bytes(walked)


def test_wide_characters_count_their_width() -> None:
    """A character beyond Latin-1 takes 2 or 4 bytes in memory: counted, not one byte per character."""
    ascii_, cjk, emoji = ("x" * 1000, "字" * 1000, "😀" * 1000)
    sizes = [batch_bytes(Batch(META, [Event("2026-01-01T00:00:00Z", m)])) for m in (ascii_, cjk, emoji)]
    assert sizes[0] + 900 < sizes[1] < sizes[0] + 1100
    assert sizes[0] + 2900 < sizes[2] < sizes[0] + 3100
