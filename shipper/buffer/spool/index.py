"""What the spool knows about its files without reading them: one `_Segment` per file, holding the seq,
offset, size and running event count of each record, and the event accounting over the segment list.

Kept in memory so that locating a seq, counting a cursor's lag and freeing a segment never touch the disk.
"""

from __future__ import annotations

import contextlib
import os
from array import array
from bisect import bisect_right
from pathlib import Path

Mark = tuple[int, int]  # (segment first seq, end offset): a place in the write stream, ordered


class _Segment:
    """One segment file and the index of its records (kept in memory: a few ints per batch)."""

    def __init__(self, first_seq: int, path: Path, size: int, created_ns: int, cum_before: int) -> None:
        self.first_seq = first_seq
        self.path = path
        self.size = size
        self.cum_before = cum_before  # events in every segment before this one, since open()
        # 32 bytes a record: a 256 MiB spool of one-event batches is about a million records
        self.seqs = array("q")
        self.offsets = array("q")
        self.sizes = array("q")
        self.cum = array("q")  # events in this segment up to and including record i
        self.last_push_ns = created_ns
        self.wfd: int | None = None
        self.dir_synced = True  # False until the directory entry of a new segment is fsynced
        self.deleted = False
        self._rfd: int | None = None

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.first_seq - 1

    @property
    def events(self) -> int:
        return self.cum[-1] if self.cum else 0

    def add(self, seq: int, offset: int, size: int, events: int, push_ns: int) -> None:
        self.seqs.append(seq)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.cum.append(self.events + events)
        self.last_push_ns = push_ns

    def events_upto(self, seq: int) -> int:
        k = bisect_right(self.seqs, seq)
        return self.cum[k - 1] if k else 0

    def rfd(self) -> int:
        if self._rfd is None:
            self._rfd = os.open(self.path, os.O_RDONLY)
        return self._rfd

    def close(self) -> None:
        for fd in (self.wfd, self._rfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wfd = self._rfd = None


class SegmentIndex:
    """The segment list (oldest first, the last one is written to) and the event counts over it."""

    _segments: list[_Segment]

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    def _written(self) -> Mark:
        return (self._active.first_seq, self._active.size)

    def _last_record_seq(self) -> int:
        return next((s.seqs[-1] for s in reversed(self._segments) if s.seqs), 0)

    def _events_upto(self, seq: int) -> int:
        """Events in records with seq' <= seq, counted from the first event on disk at open()."""
        segs = self._segments
        i = bisect_right(segs, seq, key=lambda s: s.first_seq)
        if i == 0:
            return segs[0].cum_before
        seg = segs[i - 1]
        return seg.cum_before + seg.events_upto(seq)

    def _total_events(self) -> int:
        return self._active.cum_before + self._active.events

    def _events_after(self, seq: int) -> int:
        if not self._segments:
            return 0
        return self._total_events() - self._events_upto(seq)
