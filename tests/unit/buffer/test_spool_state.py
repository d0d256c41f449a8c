"""The spool against a model: pushes, reads, acks, restarts, a torn tail, a flipped byte.

The model is a list of pushed batch ids, each cursor's read place and the set of batches it acked (in any
order), and the set of ids destroyed on disk. Invariants: every batch not destroyed reaches every cursor in
push order, at least once; a read hands out records up to the size asked for; acks in any order move the
low-water mark only over a contiguous run; a rewind hands out again exactly what was read and not acked;
after a restart a cursor starts at its low-water mark (acks past a gap are not kept: those batches come
again); every destroyed record is counted; a segment every cursor acked is gone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shipper.buffer.spool import DiskSpool
from shipper.config import FsyncPolicy
from shipper.telemetry.metrics import Metrics

from .conftest import (
    all_raw_records,
    batch_id,
    config,
    corrupt_count,
    flip_byte,
    make_batch,
    raw_records,
    segment_files,
)

CURSORS = ("a", "b")


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-sm-"))
        self.loop = asyncio.new_event_loop()
        self.metrics = Metrics()
        self.safe: list[int] = []
        self.pushed: list[int] = []  # batch ids in push order (id == index)
        self.events: dict[int, int] = {}
        self.lost: set[int] = set()
        self.read_pos = dict.fromkeys(CURSORS, 0)  # index of the next batch the cursor may hand out
        self.acked: dict[str, set[int]] = {c: set() for c in CURSORS}  # indices acked, in any order
        self.inflight: dict[str, list[tuple[int, int]]] = {c: [] for c in CURSORS}  # (seq, index)
        self.kept: dict[str, int] = {}  # each cursor's low-water mark (as a batch index) at the last close
        self.spool: DiskSpool | None = None
        self.acked_since_open = False  # segments are deleted on acks (not at open: not every cursor is back)
        self.policy = FsyncPolicy.NEVER

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

    def _open(self) -> None:
        self.spool = DiskSpool(self.dir, self.cfg, self.metrics,
                               lambda cp: self.safe.append(int(cp.position)))
        self.run(self.spool.open())
        self.acked_since_open = False
        for c in CURSORS:
            self.spool.cursor(c)
            low = self.kept.get(c, 0)
            self.acked[c] = {i for i in self.acked[c] if i < low}  # the ledger keeps the low-water mark only
            self.read_pos[c] = low
            self.inflight[c] = []

    def _close(self) -> None:
        assert self.spool is not None
        self.kept = {c: self.low_index(c) for c in CURSORS}  # before any damage the next open finds
        self.run(self.spool.close())
        self.spool = None
        # whatever was pushed is durable now: every checkpoint was released, in push order
        assert self.safe == self.pushed

    @initialize(policy=st.sampled_from(list(FsyncPolicy)), compression=st.booleans(),
                segment_bytes=st.sampled_from([300, 700, 2000]))
    def start(self, policy: FsyncPolicy, compression: bool, segment_bytes: int) -> None:
        self.policy = policy
        self.cfg = config(fsync=policy, compression=compression, segment_bytes=segment_bytes,
                          fsync_interval_secs=0.05)
        self._open()

    def teardown(self) -> None:
        if self.spool is not None:
            self.run(self.spool.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- rules --------------------------------------------------------------------------------------

    @rule(n=st.integers(1, 4), size=st.sampled_from([10, 60, 400]),
          container=st.sampled_from(["web", "db", "worker"]))
    def push(self, n: int, size: int, container: str) -> None:
        assert self.spool is not None
        k = len(self.pushed)
        self.run(self.spool.push(make_batch(k, n, container, size)))
        self.pushed.append(k)
        self.events[k] = n
        if self.policy is not FsyncPolicy.INTERVAL:
            assert self.safe == self.pushed  # durable (per policy) by the time push returns

    def low_index(self, c: str) -> int:
        """The first batch that is on disk and not acked: the cursor's low-water mark is just before it."""
        for i, k in enumerate(self.pushed):
            if k not in self.lost and i not in self.acked[c]:
                return i
        return len(self.pushed)

    def _next_index(self, c: str) -> int | None:
        for i in range(self.read_pos[c], len(self.pushed)):
            if self.pushed[i] not in self.lost and i not in self.acked[c]:
                return i
        return None

    @rule(c=st.sampled_from(CURSORS), max_events=st.integers(1, 10))
    def read(self, c: str, max_events: int) -> None:
        assert self.spool is not None
        cur = self.spool.cursor(c)
        expect: list[int] = []
        events = 0
        while events < max_events:
            idx = self._next_index(c)
            if idx is None:
                break
            expect.append(idx)
            events += self.events[self.pushed[idx]]
            self.read_pos[c] = idx + 1
        if not expect:
            return
        lease = self.run(cur.read(max_events, 1 << 30))
        got = [batch_id(b) for b in lease.batches]
        assert got == [self.pushed[i] for i in expect], (c, "out of order, lost or not up to size", got, expect)
        assert lease.events == events
        assert lease.seqs == sorted(lease.seqs)
        self.inflight[c] += list(zip(lease.seqs, expect, strict=True))

    @precondition(lambda self: any(self.inflight.values()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from([c for c in CURSORS if self.inflight[c]]), label="cursor")
        assert self.spool is not None
        if not self.inflight[c]:
            return
        picked = data.draw(st.lists(st.sampled_from(self.inflight[c]), min_size=1, unique=True), label="acks")
        self.spool.cursor(c).ack(seq for seq, _ in picked)
        self.run(asyncio.sleep(0))  # the ledger write scheduled by the ack
        for item in picked:
            self.inflight[c].remove(item)
            self.acked[c].add(item[1])
        self.acked_since_open = True

    @rule(c=st.sampled_from(CURSORS))
    def rewind(self, c: str) -> None:
        """A restarted sink: what it had in flight is handed out again, what it acked is not."""
        assert self.spool is not None
        self.spool.cursor(c).rewind()
        self.inflight[c] = []
        self.read_pos[c] = self.low_index(c)

    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        """A restart, or a restart that finds damage (one rule, so that reads and acks are drawn more often
        than the restarts that end what they had in flight)."""
        how = data.draw(st.sampled_from(["restart", "restart", "torn", "flipped"]), label="stop")
        if how == "torn":
            self.truncate_last_segment(data)
        elif how == "flipped":
            self.flip_a_byte(data)
        else:
            self._close()
            self._open()

    def truncate_last_segment(self, data: st.DataObject) -> None:
        self._close()
        path = segment_files(self.dir)[-1]
        size = path.stat().st_size
        cut = data.draw(st.integers(0, size), label="cut")
        hit = [r for r in raw_records(path) if r.offset + r.size > cut]
        os.truncate(path, cut)
        before = corrupt_count(self.metrics)
        self.lost.update(batch_id(r.batch) for r in hit)
        self._open()
        if hit:
            assert corrupt_count(self.metrics) >= before + 1, "a cut-off record was not counted"

    def flip_a_byte(self, data: st.DataObject) -> None:
        self._close()
        records = all_raw_records(self.dir)
        if records:
            r = data.draw(st.sampled_from(records), label="record")
            pos = data.draw(st.integers(r.offset, r.offset + r.size - 1), label="pos")
            flip_byte(r.path, pos, data.draw(st.integers(1, 255), label="xor"))
            self.lost.add(batch_id(r.batch))
        before = corrupt_count(self.metrics)
        self._open()
        if records:
            assert corrupt_count(self.metrics) >= before + 1, "a flipped record was not counted"

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def pending_matches_model(self) -> None:
        if self.spool is None:
            return
        for c in CURSORS:
            low = self.low_index(c)
            want = sum(self.events[k] for k in self.pushed[low:] if k not in self.lost)
            assert self.spool.cursor(c).pending() == want, (c, self.spool.cursor(c).pending(), want)

    @invariant()
    def delivered_segments_are_deleted(self) -> None:
        if self.spool is None or not self.acked_since_open:
            return
        self.run(self.spool.idle())  # deletes run in a worker thread
        low = min(self.spool.cursor(c).acked for c in CURSORS)
        files = segment_files(self.dir)
        for path in files[:-1]:  # the newest one is still being written
            first = int(path.stem)
            last = max((r.seq for r in raw_records(path)), default=first - 1)
            assert last > low, f"{path.name} was acked by every cursor (up to {low}) but is still there"

    @invariant()
    def safe_in_push_order(self) -> None:
        assert self.safe == self.pushed[:len(self.safe)]


SpoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestSpoolMachine = SpoolMachine.TestCase
