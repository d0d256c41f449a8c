"""The spool against a model: pushes, reads, acks, restarts, a torn tail, a flipped byte.

The model is a list of pushed batch ids, each cursor's read and acked place in it, and the set of ids
destroyed on disk. Invariants: every batch not destroyed reaches every cursor in push order, at least
once; after a restart a cursor starts right after its last ack (only un-acked batches come again);
every destroyed record is counted; a segment every cursor acked is gone.
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
        self.acked_pos = dict.fromkeys(CURSORS, 0)  # batches before this index were acked
        self.acked_seq = dict.fromkeys(CURSORS, 0)
        self.inflight: dict[str, list[tuple[int, int]]] = {c: [] for c in CURSORS}  # (seq, index)
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
            self.read_pos[c] = self.acked_pos[c]
            self.inflight[c] = []

    def _close(self) -> None:
        assert self.spool is not None
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

    def _next_index(self, c: str) -> int | None:
        for i in range(self.read_pos[c], len(self.pushed)):
            if self.pushed[i] not in self.lost:
                return i
        return None

    @rule(c=st.sampled_from(CURSORS), n=st.integers(1, 6))
    def read(self, c: str, n: int) -> None:
        assert self.spool is not None
        cur = self.spool.cursor(c)
        for _ in range(n):
            idx = self._next_index(c)
            if idx is None:
                return
            seq, batch = self.run(cur.next())
            assert batch_id(batch) == self.pushed[idx], (c, "out of order or lost", batch_id(batch), idx)
            assert len(batch.events) == self.events[self.pushed[idx]]
            self.read_pos[c] = idx + 1
            self.inflight[c].append((seq, idx))

    @precondition(lambda self: any(self.inflight.values()))
    @rule(c=st.sampled_from(CURSORS), k=st.integers(1, 6))
    def ack(self, c: str, k: int) -> None:
        assert self.spool is not None
        if not self.inflight[c]:
            return
        k = min(k, len(self.inflight[c]))
        seq, idx = self.inflight[c][k - 1]
        self.spool.cursor(c).ack(seq)
        self.run(asyncio.sleep(0))  # the ledger write scheduled by the ack
        del self.inflight[c][:k]
        self.acked_pos[c] = idx + 1
        self.acked_seq[c] = seq
        self.acked_since_open = True

    @rule()
    def restart(self) -> None:
        self._close()
        self._open()

    @rule(data=st.data())
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

    @rule(data=st.data())
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
            want = sum(self.events[k] for k in self.pushed[self.acked_pos[c]:] if k not in self.lost)
            assert self.spool.cursor(c).pending() == want, (c, self.spool.cursor(c).pending(), want)

    @invariant()
    def delivered_segments_are_deleted(self) -> None:
        if self.spool is None or not self.acked_since_open:
            return
        low = min(self.acked_seq.values())
        files = segment_files(self.dir)
        for path in files[:-1]:  # the newest one is still being written
            first = int(path.stem)
            last = max((r.seq for r in raw_records(path)), default=first - 1)
            assert last > low, f"{path.name} was acked by every cursor (up to {low}) but is still there"

    @invariant()
    def safe_in_push_order(self) -> None:
        assert self.safe == self.pushed[:len(self.safe)]


SpoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestSpoolMachine = SpoolMachine.TestCase
