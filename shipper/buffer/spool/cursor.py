"""A sink's way through the spool: `SpoolCursor` holds its place (segment and index, so the next read is
no search), and the spool's side of it walks the in-memory index and preads the records it hands out.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import TYPE_CHECKING

from shipper.buffer import segment as fmt
from shipper.buffer.base import Cursor, Lease, Signal
from shipper.buffer.spool.index import SegmentIndex, _Segment
from shipper.errors import SpoolCorrupt
from shipper.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from shipper.buffer.spool.disk import DiskSpool


class SpoolCursor(Cursor):
    """A sink's place: reads forward from the files, resumes after its low-water mark when the spool
    reopens (what was acked past a gap is sent again then: duplicates bounded by what was in flight)."""

    def __init__(self, spool: DiskSpool, name: str, acked: int) -> None:
        super().__init__(name, acked)
        self._spool = spool
        self._next = acked + 1  # next seq to hand out
        self._seg: _Segment | None = None
        self._idx = 0

    def _take(self, lease: Lease, max_events: int, max_bytes: int) -> None:
        self._spool._read(self, lease, max_events, max_bytes)

    async def _more(self) -> None:
        await self._spool._appended.wait()

    def _released(self) -> None:
        self._spool._on_ack(self)

    def rewind(self) -> None:
        self._next = self.window.low + 1
        self._seg = None

    def pending(self) -> int:
        return self._spool._events_after(self.window.low)


class Reading(SegmentIndex):
    """The spool's side of its cursors: the reading walk, and what an ack sets off."""

    metrics: Metrics
    _bad_reads: set[int]  # seqs whose read failed, counted once
    _space: Signal
    _waiting_space: int

    if TYPE_CHECKING:  # defined by the other parts of DiskSpool
        def _check_open(self) -> None: ...
        def _count_corrupt(self, reason: str, records: int, nbytes: int, where: str) -> None: ...
        def _reclaim(self, force: bool) -> bool: ...
        def _mark_ledger_dirty(self) -> None: ...
        def _gauges(self) -> None: ...

    def _locate(self, seq: int) -> tuple[_Segment, int]:
        """The segment and index of the first record with a seq >= `seq`."""
        for seg in self._segments:
            if seg.last_seq >= seq:
                return seg, bisect_left(seg.seqs, seq)
        return self._active, len(self._active.seqs)

    def _read(self, cur: SpoolCursor, lease: Lease, max_events: int, max_bytes: int) -> None:
        """Add the records after `cur`'s place to `lease` until it is full (acked ones skipped). Seqs with no
        readable record (damage found at open or now, counted) are acked on the way, so no gap waits for
        them; the acks take effect after the walk, since they may delete segments."""
        self._check_open()
        seg = cur._seg
        if seg is None or seg.deleted:
            seg, idx = self._locate(cur._next)  # first read, rewind, or drop_oldest took what we were reading
        else:
            idx = cur._idx
        window = cur.window
        moved = False
        while not lease.full(max_events, max_bytes):
            if idx < len(seg.seqs):
                seq, size, off = seg.seqs[idx], seg.sizes[idx], seg.offsets[idx]
                idx += 1
                if seq > cur._next:
                    moved |= window.ack_range(cur._next, seq - 1)
                cur._seg, cur._idx, cur._next = seg, idx, seq + 1
                if window.acked(seq):
                    continue
                try:
                    data = os.pread(seg.rfd(), size, off)
                    hdr, batch = fmt.decode(data, seq)
                    if hdr.seq != seq:
                        raise SpoolCorrupt("sequence number changed on disk")
                except (SpoolCorrupt, OSError) as e:
                    if seq not in self._bad_reads:
                        self._bad_reads.add(seq)
                        self._count_corrupt("read_failed", 1, size, f"{seg.path}@{off}: {e}")
                    moved |= window.ack(seq)
                    continue
                lease.add(seq, batch, size)
                continue
            pos = self._segments.index(seg) + 1
            if pos >= len(self._segments):
                cur._seg, cur._idx = seg, idx
                break
            seg, idx = self._segments[pos], 0
        if moved:
            cur._released()

    def _on_ack(self, cur: SpoolCursor) -> None:
        self._mark_ledger_dirty()
        deleted = self._reclaim(force=False)
        if self._waiting_space:
            self._space.fire()
        if deleted:
            self._gauges()
        else:
            self.metrics.set("shipper_spool_cursor_lag_events", self._events_after(cur.acked), sink=cur.name)
