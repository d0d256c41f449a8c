from __future__ import annotations

import asyncio

import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics

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
