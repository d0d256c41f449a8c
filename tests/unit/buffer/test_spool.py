from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from shipper.buffer import segment as fmt
from shipper.buffer.spool import DiskSpool, SpoolReader
from shipper.config import BufferConfig, FsyncPolicy, WhenFull
from shipper.errors import SpoolError
from shipper.event import Checkpoint
from shipper.telemetry.metrics import Metrics

from .conftest import (
    CONTAINERS,
    all_raw_records,
    batch_id,
    config,
    corrupt_count,
    flip_byte,
    make_batch,
    open_spool,
    raw_records,
    segment_files,
)


async def drain(spool: DiskSpool, name: str, ack: bool = True) -> list[int]:
    """Read (and ack) everything the cursor has, returning batch ids in the order they came."""
    cur = spool.cursor(name)
    got: list[int] = []
    while True:
        try:
            seq, batch = await asyncio.wait_for(cur.next(), 0.05)  # reads do not wait when data is there
        except TimeoutError:
            return got
        got.append(batch_id(batch))
        if ack:
            cur.ack(seq)


async def test_restart_resumes_after_last_ack(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=600))
    cur = o.spool.cursor("s")
    for k in range(10):
        await o.spool.push(make_batch(k, 2))
    for _ in range(4):
        seq, _ = await cur.next()
        cur.ack(seq)
    await cur.next()  # read, never acked: in flight when we stop
    await o.spool.close()

    o2 = await open_spool(tmp_path, config(segment_bytes=600))
    assert o2.spool.cursor("s").pending() == 12
    assert await drain(o2.spool, "s") == list(range(4, 10))
    await o2.spool.close()


class FsyncSpy:
    """Records fsync calls next to on_safe calls (the real fsync still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[object] = []
        real = os.fsync

        def spy(fd: int) -> None:
            real(fd)
            self.log.append("fsync")

        monkeypatch.setattr(os, "fsync", spy)

    def safe(self, cp: object) -> None:
        self.log.append(("safe", cp.position))  # type: ignore[attr-defined]


async def test_on_safe_always_follows_an_fsync_and_precedes_push_return(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FsyncSpy(monkeypatch)
    sp = DiskSpool(tmp_path, config(fsync=FsyncPolicy.ALWAYS), Metrics(), spy.safe)
    await sp.open()
    sp.cursor("s")
    for k in range(3):
        start = len(spy.log)
        await sp.push(make_batch(k))
        new = spy.log[start:]
        assert ("safe", k) in new, "push returned before its checkpoint was safe"
        assert "fsync" in new[:new.index(("safe", k))], "checkpoint released without an fsync after the write"
    await sp.close()


async def test_always_shares_one_fsync_between_concurrent_pushes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FsyncSpy(monkeypatch)
    sp = DiskSpool(tmp_path, config(fsync=FsyncPolicy.ALWAYS, segment_bytes=1 << 20), Metrics(), spy.safe)
    await sp.open()
    sp.cursor("s")
    start = len(spy.log)
    await asyncio.gather(*(sp.push(make_batch(k)) for k in range(20)))
    new = spy.log[start:]
    assert [e for e in new if e != "fsync"] == [("safe", k) for k in range(20)]
    assert 1 <= new.count("fsync") <= 6  # group commit (plus the new segment's directory), not one per push
    await sp.close()


async def test_on_safe_interval_waits_for_the_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FsyncSpy(monkeypatch)
    sp = DiskSpool(tmp_path, config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=0.3), Metrics(), spy.safe)
    await sp.open()
    sp.cursor("s")
    start = len(spy.log)
    t0 = time.monotonic()
    await sp.push(make_batch(7))
    assert time.monotonic() - t0 < 0.25  # push does not wait for the fsync
    await asyncio.sleep(0.05)
    assert ("safe", 7) not in spy.log
    while ("safe", 7) not in spy.log and time.monotonic() - t0 < 2:
        await asyncio.sleep(0.02)
    new = spy.log[start:]
    assert ("safe", 7) in new and "fsync" in new[:new.index(("safe", 7))]
    await sp.close()


async def test_on_safe_never_at_write_without_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FsyncSpy(monkeypatch)
    sp = DiskSpool(tmp_path, config(fsync=FsyncPolicy.NEVER), Metrics(), spy.safe)
    await sp.open()
    sp.cursor("s")
    for k in range(5):
        await sp.push(make_batch(k))
        assert spy.log[-1] == ("safe", k)
    await sp.close()
    assert "fsync" not in spy.log


async def test_block_waits_for_acks_then_writes(tmp_path: Path) -> None:
    cfg = config(segment_bytes=500, max_bytes=1200, when_full=WhenFull.BLOCK)
    o = await open_spool(tmp_path, cfg)
    cur = o.spool.cursor("s")
    blocked = None
    for k in range(20):
        task = asyncio.create_task(o.spool.push(make_batch(k)))
        await asyncio.sleep(0.05)
        if not task.done():
            blocked = (k, task)
            break
    assert blocked is not None, "never blocked"
    k_blocked, task = blocked
    assert o.spool.stats()["bytes"] <= 1200
    seq, _ = await cur.next()
    cur.ack(seq)
    got = [0]
    while not task.done():
        seq, b = await asyncio.wait_for(cur.next(), 1)
        got.append(batch_id(b))
        cur.ack(seq)
        await asyncio.sleep(0.01)
    await task
    got += await drain(o.spool, "s")
    assert got == list(range(k_blocked + 1))
    assert o.metrics.get("shipper_events_dropped_total") == 0
    await o.spool.close()


async def test_drop_newest_refuses_counts_and_still_releases_checkpoint(tmp_path: Path) -> None:
    cfg = config(segment_bytes=500, max_bytes=1200, when_full=WhenFull.DROP_NEWEST)
    o = await open_spool(tmp_path, cfg)
    o.spool.cursor("s")
    for k in range(15):
        await o.spool.push(make_batch(k, 3))
    kept = await drain(o.spool, "s", ack=False)
    dropped = 15 - len(kept)
    assert dropped > 0 and kept == list(range(len(kept)))  # the newest were refused, the oldest kept
    m = o.metrics
    assert m.get("shipper_events_dropped_total", reason="buffer_full", where="drop_newest") == 3 * dropped
    assert o.safe == list(range(15))  # the reader may move past refused batches, in order
    await o.spool.close()


async def test_drop_newest_checkpoint_waits_behind_unsynced_ones(tmp_path: Path) -> None:
    """Under 'interval' a refused batch's checkpoint must not overtake those still waiting for fsync."""
    cfg = config(segment_bytes=500, max_bytes=1200, when_full=WhenFull.DROP_NEWEST,
                 fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=0.2)
    o = await open_spool(tmp_path, cfg)
    o.spool.cursor("s")
    for k in range(15):
        await o.spool.push(make_batch(k))
    kept = len(all_raw_records(tmp_path))
    assert kept < 15
    # sealed segments were fsynced at rotation; the active one's records are not yet, so neither are the
    # refused batches behind them
    assert o.safe == list(range(len(o.safe))) and len(o.safe) < kept
    await asyncio.sleep(0.5)
    assert o.safe == list(range(15))
    await o.spool.close()


async def test_drop_oldest_deletes_for_the_stalled_sink_only(tmp_path: Path) -> None:
    cfg = config(segment_bytes=500, max_bytes=1500, when_full=WhenFull.DROP_OLDEST)
    o = await open_spool(tmp_path, cfg)
    fast, stalled = o.spool.cursor("fast"), o.spool.cursor("stalled")
    fast_got = []
    for k in range(30):
        await o.spool.push(make_batch(k, 2))
        seq, b = await asyncio.wait_for(fast.next(), 1)  # the healthy sink never waits for the stalled one
        fast_got.append(batch_id(b))
        fast.ack(seq)
    assert fast_got == list(range(30))
    assert o.spool.stats()["bytes"] <= 1500
    late = await drain(o.spool, "stalled")
    assert late and late == list(range(30 - len(late), 30))  # skipped forward to what is left, in order
    assert o.metrics.get("shipper_events_dropped_total", reason="buffer_full",
                         where="drop_oldest") == 2 * (30 - len(late))
    assert stalled.pending() == 0 and fast.pending() == 0
    assert o.safe == list(range(30))
    await o.spool.close()


async def test_dead_sink_does_not_hold_back_reading(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=400))
    o.spool.cursor("dead")
    live = o.spool.cursor("live")
    for k in range(12):
        await o.spool.push(make_batch(k))
    assert await drain(o.spool, "live") == list(range(12))
    assert live.pending() == 0 and o.spool.cursor("dead").pending() == 12
    assert len(all_raw_records(tmp_path)) == 12  # kept for the dead sink
    await o.spool.close()


async def test_retention_secs_keeps_delivered_segments_for_replay(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=500, retention_secs=0.4))
    o.spool.cursor("s")
    for k in range(8):
        await o.spool.push(make_batch(k))
    assert await drain(o.spool, "s") == list(range(8))
    assert [r.seq for r in SpoolReader(tmp_path)] == list(range(1, 9))  # delivered, still there
    await asyncio.sleep(1.0)
    left = [r.seq for r in SpoolReader(tmp_path)]
    assert left and left == list(range(9 - len(left), 9)) and len(left) < 8  # sealed ones expired
    assert len(segment_files(tmp_path)) == 1
    await o.spool.close()


async def test_retention_bytes_keeps_the_newest_delivered_bytes(tmp_path: Path) -> None:
    keep = 1200
    o = await open_spool(tmp_path, config(segment_bytes=500, retention_bytes=keep))
    o.spool.cursor("s")
    for k in range(30):
        await o.spool.push(make_batch(k))
    await drain(o.spool, "s")
    sealed = segment_files(tmp_path)[:-1]
    kept = sum(p.stat().st_size for p in sealed)
    assert 0 < kept <= keep and kept > keep - 500
    seqs = [r.seq for r in SpoolReader(tmp_path)]
    assert seqs == list(range(seqs[0], 31))  # the newest, contiguous
    await o.spool.close()


async def test_retention_yields_to_max_bytes(tmp_path: Path) -> None:
    cfg = config(segment_bytes=500, max_bytes=1500, retention_secs=3600, when_full=WhenFull.BLOCK)
    o = await open_spool(tmp_path, cfg)
    cur = o.spool.cursor("s")
    for k in range(30):
        await asyncio.wait_for(o.spool.push(make_batch(k)), 1)  # retained data never blocks a push
        seq, b = await cur.next()
        assert batch_id(b) == k
        cur.ack(seq)
    assert o.spool.stats()["bytes"] <= 1500
    assert o.metrics.get("shipper_events_dropped_total") == 0
    await o.spool.close()


async def test_torn_tail_is_cut_counted_and_the_rest_delivered(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=600))
    o.spool.cursor("s")
    for k in range(5):
        await o.spool.push(make_batch(k))
    await o.spool.close()
    last = segment_files(tmp_path)[-1]
    good_size = last.stat().st_size
    torn = fmt.encode(6, time.time_ns(), make_batch(99))
    with open(last, "ab") as f:
        f.write(torn[: len(torn) // 2])  # the write a crash interrupted

    o2 = await open_spool(tmp_path, config(segment_bytes=600))
    assert corrupt_count(o2.metrics, "torn_tail") == 1
    assert o2.metrics.get("shipper_spool_corrupt_bytes_total", reason="torn_tail") == len(torn) // 2
    assert last.stat().st_size == good_size
    await o2.spool.push(make_batch(5))
    assert await drain(o2.spool, "s", ack=False) == list(range(6))
    await o2.spool.close()
    o3 = await open_spool(tmp_path, config(segment_bytes=600))
    assert await drain(o3.spool, "s") == list(range(6))
    assert corrupt_count(o3.metrics) == 0  # counted once, not at every start
    await o3.spool.close()


async def test_flipped_byte_mid_segment_skips_one_record(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=1000, compression=True))
    o.spool.cursor("s")
    for k in range(12):
        await o.spool.push(make_batch(k, 3, size=120))
    await o.spool.close()
    victim = raw_records(segment_files(tmp_path)[0])[1]
    flip_byte(victim.path, victim.offset + victim.size // 2)

    o2 = await open_spool(tmp_path, config(segment_bytes=1000, compression=True))
    assert corrupt_count(o2.metrics, "corrupt") == 1
    assert await drain(o2.spool, "s") == [k for k in range(12) if k != batch_id(victim.batch)]
    await o2.spool.close()


TWO_A_SEGMENT = config(segment_bytes=700)  # make_batch(k) is a 266-byte record: seqs 1-2, 3-4, 5-6, ...


async def written(directory: Path, n: int = 12, cursors: tuple[str, ...] = ("s",)) -> list[Path]:
    o = await open_spool(directory, TWO_A_SEGMENT)
    for c in cursors:
        o.spool.cursor(c)
    for k in range(n):
        await o.spool.push(make_batch(k))
    await o.spool.close()
    files = segment_files(directory)
    assert [[r.seq for r in raw_records(p)] for p in files] == [[i, i + 1] for i in range(1, n + 1, 2)]
    return files


async def test_a_whole_segment_gone_between_two_is_counted_once(tmp_path: Path) -> None:
    files = await written(tmp_path)
    files[1].unlink()  # seqs 3 and 4
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o.metrics, "missing") == 2 and corrupt_count(o.metrics) == 2
    assert o.metrics.get("shipper_spool_corrupt_bytes_total") == 0  # nothing left to measure
    assert await drain(o.spool, "s", ack=False) == [0, 1, *range(4, 12)]
    await o.spool.close()
    o2 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o2.metrics) == 0, "counted again at the next open"
    assert await drain(o2.spool, "s") == [0, 1, *range(4, 12)]
    await o2.spool.close()
    o3 = await open_spool(tmp_path, TWO_A_SEGMENT)  # delivered now: the gap is behind the cursor
    assert corrupt_count(o3.metrics) == 0 and await drain(o3.spool, "s") == []
    await o3.spool.close()


async def test_a_sealed_segment_cut_at_a_record_boundary_is_counted(tmp_path: Path) -> None:
    files = await written(tmp_path)
    last = raw_records(files[2])[-1]  # seq 6
    os.truncate(files[2], last.offset)  # no byte of damage left to find: only the seqs tell
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o.metrics, "missing") == 1 and corrupt_count(o.metrics) == 1
    assert await drain(o.spool, "s", ack=False) == [k for k in range(12) if k != 5]
    await o.spool.close()
    o2 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o2.metrics) == 0
    await o2.spool.close()


async def test_a_torn_end_of_a_sealed_segment_is_not_counted_twice(tmp_path: Path) -> None:
    files = await written(tmp_path)
    torn = raw_records(files[1])[-1]  # seq 4, cut through: damage the scan sees
    os.truncate(files[1], torn.offset + 100)
    files[2].unlink()  # seqs 5 and 6
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    # the torn end accounts for every seq up to the next file (4, 5, 6); nothing more is missing
    assert corrupt_count(o.metrics) == 3 == corrupt_count(o.metrics, "corrupt")
    assert await drain(o.spool, "s") == [0, 1, 2, *range(6, 12)]
    await o.spool.close()


async def test_the_oldest_segment_gone_is_counted_from_the_lowest_cursor(tmp_path: Path) -> None:
    await written(tmp_path, cursors=("a", "b"))
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    opened = {name: o.spool.cursor(name) for name in ("a", "b")}  # every sink's cursor before any ack
    for name, upto in (("a", 6), ("b", 3)):
        cur = opened[name]
        for _ in range(upto):
            seq, _ = await cur.next()
            cur.ack(seq)
    await o.spool.idle()
    await o.spool.close()
    files = segment_files(tmp_path)
    assert int(files[0].stem) == 3, "seqs 1-2 acked by both: deleted"
    o2 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o2.metrics) == 0, "a segment every sink had acked is not missing"
    await o2.spool.close()
    files[0].unlink()  # seqs 3 and 4: 'a' had them, 'b' had only 3
    o3 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o3.metrics, "missing") == 1 and corrupt_count(o3.metrics) == 1
    assert await drain(o3.spool, "b", ack=False) == list(range(4, 12))
    assert await drain(o3.spool, "a", ack=False) == list(range(6, 12))
    await o3.spool.close()
    o4 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o4.metrics) == 0
    await o4.spool.close()


async def test_without_a_ledger_the_oldest_segment_is_taken_as_it_is(tmp_path: Path) -> None:
    files = await written(tmp_path)
    files[0].unlink()
    (tmp_path / "ledger.json").unlink()  # nothing tells where the spool started
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o.metrics) == 0
    assert await drain(o.spool, "s") == list(range(2, 12))
    await o.spool.close()


async def test_every_segment_gone_counts_only_what_no_sink_acked(tmp_path: Path) -> None:
    files = await written(tmp_path)
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    cur = o.spool.cursor("s")
    for _ in range(4):
        seq, _ = await cur.next()
        cur.ack(seq)
    await o.spool.close()
    for f in segment_files(tmp_path):
        f.unlink()
    o2 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o2.metrics, "missing_tail") == 8 and corrupt_count(o2.metrics) == 8  # seqs 5-12
    await o2.spool.push(make_batch(12))
    assert await drain(o2.spool, "s") == [12]
    await o2.spool.close()
    assert len(files) == 6


async def test_a_missing_tail_is_counted_once_across_reopens(tmp_path: Path) -> None:
    """The records a machine crash took from the end are counted at the open that finds them, not again at
    every later open, nor once new records follow them."""
    files = await written(tmp_path)
    files[-1].unlink()  # seqs 11 and 12, the newest
    o = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o.metrics, "missing_tail") == 2 and corrupt_count(o.metrics) == 2
    await o.spool.close()
    o2 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o2.metrics) == 0
    await o2.spool.push(make_batch(12))
    await o2.spool.close()
    o3 = await open_spool(tmp_path, TWO_A_SEGMENT)
    assert corrupt_count(o3.metrics) == 0
    assert await drain(o3.spool, "s", ack=False) == [*range(10), 12]
    await o3.spool.close()


@pytest.mark.parametrize("cursors", [(), ("stalled",), ("fast", "stalled")])
async def test_segments_deleted_by_the_spool_are_not_missing(tmp_path: Path, cursors: tuple[str, ...]) -> None:
    cfg = config(segment_bytes=700, max_bytes=1800, when_full=WhenFull.DROP_OLDEST)
    o = await open_spool(tmp_path, cfg)
    for c in cursors:
        o.spool.cursor(c)
    for k in range(20):
        await o.spool.push(make_batch(k))
        if "fast" in cursors:
            await drain(o.spool, "fast")
    await o.spool.idle()
    await o.spool.close()
    assert int(segment_files(tmp_path)[0].stem) > 1, "nothing dropped: nothing to test"
    o2 = await open_spool(tmp_path, cfg)
    assert corrupt_count(o2.metrics) == 0
    await o2.spool.close()


async def test_damage_after_open_is_skipped_at_read(tmp_path: Path) -> None:
    """Bit rot under a running spool: the cursor's own CRC check catches it."""
    o = await open_spool(tmp_path, config(segment_bytes=1 << 20))
    o.spool.cursor("s")
    for k in range(4):
        await o.spool.push(make_batch(k))
    victim = raw_records(segment_files(tmp_path)[0])[2]
    flip_byte(victim.path, victim.offset + 60)
    assert await drain(o.spool, "s") == [0, 1, 3]
    assert corrupt_count(o.metrics, "read_failed") == 1
    await o.spool.close()


async def test_second_opener_is_refused(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config())
    with pytest.raises(SpoolError, match="in use"):
        await open_spool(tmp_path, config())
    await o.spool.close()
    o2 = await open_spool(tmp_path, config())  # released by close
    await o2.spool.close()


async def test_close_releases_a_blocked_push_and_refuses_more(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=500, max_bytes=800))
    o.spool.cursor("s")
    pushes = [asyncio.create_task(o.spool.push(make_batch(k))) for k in range(10)]
    await asyncio.sleep(0.05)
    assert not all(t.done() for t in pushes)
    await asyncio.wait_for(o.spool.close(), 2)
    results = await asyncio.gather(*pushes, return_exceptions=True)
    assert any(isinstance(r, SpoolError) for r in results)
    with pytest.raises(SpoolError):
        await o.spool.push(make_batch(99))


async def test_gauges_and_stats(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=500))
    a, b = o.spool.cursor("a"), o.spool.cursor("b")
    for k in range(6):
        await o.spool.push(make_batch(k, 2))
    seq, _ = await a.next()
    a.ack(seq)
    m = o.metrics
    assert m.get("shipper_buffer_events") == 12 == o.spool.stats()["events"]
    assert m.get("shipper_buffer_bytes") == sum(p.stat().st_size for p in segment_files(tmp_path))
    assert m.get("shipper_spool_cursor_lag_events", sink="a") == 10 == a.pending()
    assert m.get("shipper_spool_cursor_lag_events", sink="b") == 12 == b.pending()
    await o.spool.close()


async def test_unreadable_ledger_redelivers_everything(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=1 << 16))  # one segment: acks delete nothing
    o.spool.cursor("s")
    for k in range(3):
        await o.spool.push(make_batch(k))
    await drain(o.spool, "s")
    await o.spool.push(make_batch(3))
    await o.spool.close()
    (tmp_path / "ledger.json").write_bytes(b"{not json")
    o2 = await open_spool(tmp_path, config(segment_bytes=1 << 16))
    assert corrupt_count(o2.metrics) == 0  # no record lost...
    assert await drain(o2.spool, "s") == [0, 1, 2, 3]  # ...duplicates instead
    await o2.spool.close()


async def test_new_sink_starts_at_oldest_undelivered(tmp_path: Path) -> None:
    o = await open_spool(tmp_path, config(segment_bytes=400, retention_secs=3600))
    o.spool.cursor("old")
    for k in range(6):
        await o.spool.push(make_batch(k))
    await drain(o.spool, "old")
    await o.spool.push(make_batch(6))
    assert await drain(o.spool, "new") == [6]  # not the retained, delivered ones
    await o.spool.close()


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    import orjson
    from shipper.buffer.ledger import Ledger
    from shipper.buffer.spool import DiskSpool
    from shipper.config import BufferConfig, FsyncPolicy
    from shipper.event import Batch, Checkpoint, ContainerMeta, Event
    from shipper.telemetry.metrics import Metrics

    META = ContainerMeta("c1", "web")

    def say(line):  # one write a line: the ledger's worker thread prints too
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    write = Ledger.write

    def write_and_say(self, snap, fsync=False):  # what the ledger on disk says once a save is done
        write(self, snap, fsync)
        say(f"saved {orjson.loads(snap[1])['cursors'].get('s', -1)}")

    Ledger.write = write_and_say

    async def main():
        sp = DiskSpool(Path(sys.argv[1]), BufferConfig(fsync=FsyncPolicy.ALWAYS, segment_bytes=3000),
                       Metrics(), lambda cp: say(f"safe {cp.position}"))
        await sp.open()
        cur = sp.cursor("s")

        async def sink():
            while True:
                seq, b = await cur.next()
                await asyncio.sleep(0.002)
                say(f"acking {b.events[0].message.split('-')[0]} {seq}")
                cur.ack(seq)

        task = asyncio.create_task(sink())
        k = 0
        while True:
            await sp.push(Batch(META, [Event("2024-01-01T00:00:00Z", str(k) + "-" + "x" * 200)],
                                Checkpoint("c1", k)))
            k += 1

    asyncio.run(main())
""")


def test_sigkill_loses_nothing_made_safe(tmp_path: Path) -> None:
    """A real crash: the writing process is SIGKILLed mid-stream, then the spool is reopened. Nothing made
    safe is lost, and what comes again was acked after the last ledger save that the child saw done."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout is not None
    safe: set[int] = set()
    acked: dict[int, int] = {}  # batch number -> spool sequence
    saved = -1  # the highest acked sequence a finished ledger save held

    def take(line: str) -> None:
        nonlocal saved
        kind, *values = line.split()
        if kind == "safe":
            safe.add(int(values[0]))
        elif kind == "acking":
            acked[int(values[0])] = int(values[1])
        else:
            saved = max(saved, int(values[0]))

    for line in proc.stdout:
        take(line)
        # kill once a save is done and acks came after it (a save covers acks up to ~0.2 s old)
        if (len(safe) >= 300 and saved >= 0 and max(acked.values(), default=-1) >= saved + 3) or len(acked) >= 5000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # whatever it printed before dying
        take(line)

    async def reread() -> list[int]:
        o = await open_spool(tmp_path, config(fsync=FsyncPolicy.ALWAYS, segment_bytes=3000))
        cur = o.spool.cursor("s")
        got: list[int] = []
        while cur.pending():
            seq, b = await asyncio.wait_for(cur.next(), 2)
            got.append(int(b.events[0].message.split("-")[0]))
            cur.ack(seq)
        await o.spool.close()
        return got

    again = asyncio.run(reread())
    assert safe - set(acked) - set(again) == set(), "a batch made safe was lost"
    assert again == sorted(again)
    resent = set(again) & set(acked)
    assert saved >= 0, "no ledger save finished"
    early = sorted(k for k in resent if acked[k] <= saved)
    assert not early, f"re-delivered though a finished ledger save had their acks: {early[:10]} (saved {saved})"


# --- a crash before the checkpoints were released ---------------------------------------------------------


def crash_image(src: Path, dst: Path) -> Path:
    """What a kill -9 leaves: the files exactly as written (the page cache outlives the process), with no
    close, no final fsync and no ledger save. Copied because the spool object that wrote them still holds
    the directory's flock in this process."""
    shutil.copytree(src, dst)
    return dst


async def reopen(directory: Path, cfg: BufferConfig, got: list[Checkpoint]) -> DiskSpool:
    sp = DiskSpool(directory, cfg, Metrics(), got.append)
    await sp.open()
    return sp


PUSHES = [(0, "web"), (1, "db"), (2, "web"), (3, "worker"), (4, "db")]


def cp(k: int, container: str) -> Checkpoint:
    return Checkpoint(CONTAINERS[container].id, k)


async def test_crash_before_the_tick_hands_out_the_newest_checkpoint_per_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=30.0, segment_bytes=1 << 16)
    spy = FsyncSpy(monkeypatch)
    sp = DiskSpool(tmp_path / "live", cfg, Metrics(), spy.safe)
    await sp.open()
    for k, c in PUSHES:
        await sp.push(make_batch(k, container=c))
    assert not any(e != "fsync" for e in spy.log), "released before a tick: nothing to test"
    image = crash_image(tmp_path / "live", tmp_path / "crashed")
    got: list[Checkpoint] = []
    again = await reopen(image, cfg, got)
    assert got == [cp(2, "web"), cp(3, "worker"), cp(4, "db")], "not the newest per container, in push order"
    spy.log.clear()
    again2 = DiskSpool(crash_image(image, tmp_path / "again"), cfg, Metrics(), spy.safe)
    await again2.open()
    assert spy.log[-3:] == [("safe", 2), ("safe", 3), ("safe", 4)]
    assert spy.log[0] == "fsync", "checkpoints handed out before the records were fsynced"
    await again2.close()
    assert await drain(again, "s") == [k for k, _ in PUSHES], "the records themselves are still delivered"
    await again.close()
    await sp.close()
    got.clear()
    await (await reopen(tmp_path / "live", cfg, got)).close()
    assert got == [], "a clean close released everything: nothing to hand out again"


async def test_a_crash_loop_hands_them_out_every_time_until_a_tick(tmp_path: Path) -> None:
    cfg = config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=30.0, segment_bytes=1 << 16)
    live = DiskSpool(tmp_path / "0", cfg, Metrics(), lambda _: None)
    await live.open()
    for k, c in PUSHES[:3]:
        await live.push(make_batch(k, container=c))
    want = [cp(1, "db"), cp(2, "web")]
    d = crash_image(tmp_path / "0", tmp_path / "1")
    for run in range(2, 4):  # each run dies before its first tick: the next one must still know
        got: list[Checkpoint] = []
        sp = await reopen(d, cfg, got)
        assert got == want, f"run {run}"
        d = crash_image(d, tmp_path / str(run))
        await sp.close()
    await live.close()


async def test_only_records_after_the_last_tick_are_handed_out_again(tmp_path: Path) -> None:
    cfg = config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=0.05, segment_bytes=1 << 16)
    safe: list[Checkpoint] = []
    sp = await reopen(tmp_path / "live", cfg, safe)
    for k, c in PUSHES[:3]:
        await sp.push(make_batch(k, container=c))
    ledger = tmp_path / "live" / "ledger.json"
    deadline = time.monotonic() + 3
    while orjson.loads(ledger.read_bytes()).get("released", 0) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert safe == [cp(k, c) for k, c in PUSHES[:3]]
    assert orjson.loads(ledger.read_bytes())["released"] == 3, "the tick did not record what it released"
    sp._ticker.cancel()  # type: ignore[union-attr]  # no further tick: the next push stays unreleased
    await sp.push(make_batch(3, container="worker"))
    got: list[Checkpoint] = []
    again = await reopen(crash_image(tmp_path / "live", tmp_path / "crashed"), cfg, got)
    assert got == [cp(3, "worker")], "records released before the crash were handed out again"
    await again.close()
    await sp.close()


async def test_recovery_hands_out_nothing_past_damage(tmp_path: Path) -> None:
    cfg = config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=30.0, segment_bytes=1 << 16)
    live = DiskSpool(tmp_path / "live", cfg, Metrics(), lambda _: None)
    await live.open()
    for k, c in PUSHES:
        await live.push(make_batch(k, container=c))
    image = crash_image(tmp_path / "live", tmp_path / "crashed")
    bad = next(r for r in all_raw_records(image) if batch_id(r.batch) == 2)
    flip_byte(bad.path, bad.offset + bad.size - 3)
    got: list[Checkpoint] = []
    sp = await reopen(image, cfg, got)
    # the reader resumes after batch 1 at most: batches 3 and 4 are read again (duplicates, never loss)
    assert got == [cp(0, "web"), cp(1, "db")]
    assert await drain(sp, "s") == [0, 1, 3, 4]
    await sp.close()
    await live.close()


async def test_records_of_an_older_ledger_are_not_decoded_at_open(tmp_path: Path) -> None:
    """A ledger from before records carried checkpoints has no `released`: its records hold none."""
    cfg = config(fsync=FsyncPolicy.INTERVAL, fsync_interval_secs=30.0)
    live = DiskSpool(tmp_path / "live", cfg, Metrics(), lambda _: None)
    await live.open()
    await live.push(make_batch(0))
    image = crash_image(tmp_path / "live", tmp_path / "crashed")
    doc = orjson.loads((image / "ledger.json").read_bytes())
    doc["next_seq"] = 2
    del doc["released"]
    (image / "ledger.json").write_bytes(orjson.dumps(doc))
    got: list[Checkpoint] = []
    sp = await reopen(image, cfg, got)
    assert got == []
    assert orjson.loads((image / "ledger.json").read_bytes())["released"] == 1
    await sp.close()
    await live.close()


async def test_a_segment_is_deleted_only_after_the_ledger_says_it_was_delivered(tmp_path: Path) -> None:
    """A crash between the unlink and the ledger save would make the next open count delivered records as
    missing: whenever a delivered segment is gone from disk, the ledger on disk already covers it."""
    o = await open_spool(tmp_path, config(segment_bytes=500))
    cur = o.spool.cursor("s")
    for k in range(8):
        await o.spool.push(make_batch(k))
    before = {int(p.stem) for p in segment_files(tmp_path)}
    seq, _ = await cur.next()
    cur.ack(seq)
    for _ in range(6):
        seq, _ = await cur.next()
        cur.ack(seq)
    await o.spool.idle()  # the deletes have run; the periodic ledger save (every 0.2 s) may not have
    gone = before - {int(p.stem) for p in segment_files(tmp_path)}
    assert gone, "no segment was deleted: the test proves nothing"
    ledger = orjson.loads((tmp_path / "ledger.json").read_bytes())
    nxt = min({int(p.stem) for p in segment_files(tmp_path)})
    assert ledger["cursors"]["s"] >= nxt - 1, (ledger["cursors"], sorted(gone))
    await o.spool.close()
