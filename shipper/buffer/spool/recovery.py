"""Opening a spool after whatever stopped it: index every segment with every record's CRC checked, count
and skip damage, cut a torn tail, and hand out again the checkpoints a crash kept from `on_safe`.

Runs once, in a worker thread, before the spool takes any push.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import time
from bisect import bisect_right
from pathlib import Path
from typing import TYPE_CHECKING

from shipper.buffer import segment as fmt
from shipper.buffer.ledger import Ledger, fsync_dir
from shipper.buffer.spool.index import SegmentIndex, _Segment
from shipper.config import FsyncPolicy
from shipper.errors import SpoolCorrupt, SpoolError
from shipper.event import Checkpoint
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.spool")


class Recovery(SegmentIndex):
    """`_recover` fills the segment list, the ledger and the next seq from what is on disk."""

    directory: Path
    metrics: Metrics
    corrupt_records: int
    _policy: FsyncPolicy
    _ledger: Ledger
    _lock_fd: int | None
    _disk_bytes: int
    _next_seq: int
    _released_seq: int
    _recovered: list[Checkpoint]  # released by open() once it is back on the loop

    if TYPE_CHECKING:  # defined by the other parts of DiskSpool
        def _new_segment(self, created: tuple[int, int] | None = None) -> _Segment: ...
        def _save_ledger(self, fsync: bool = False) -> None: ...

    def _recover(self) -> None:
        seg_dir = fmt.segment_dir(self.directory)
        for d in (self.directory, seg_dir):  # events: owner only, as Docker's own logs (parents=True would not)
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolError(f"spool {self.directory} is in use by another shipper process") from None
        self._ledger = Ledger.load(self.directory)
        if self._ledger.damaged:
            tel.spool_corrupt(self.metrics, "ledger", 0, 0, str(self._ledger.path))
        found = fmt.list_segments(self.directory)
        seen = self._ledger.damage
        kept = self._lowest_kept()
        last_seq = torn = tail_counted = 0
        # seqs run on across segments: each one must start where the one before it ends (`expect`), and the
        # oldest right after what every sink acked; what is missing in between is counted, once
        expect = None if kept is None else kept + 1
        for i, (first, path) in enumerate(found):
            newest = i == len(found) - 1
            gap = max(first - expect - tail_counted, 0) if expect is not None else 0
            seg, torn, tail_counted = self._load_segment(first, path, newest, last_seq,
                                                         found[i + 1][0] if not newest else None, seen, gap)
            last_seq = max(last_seq, seg.last_seq)
            expect = last_seq + 1
            self._segments.append(seg)
            self._disk_bytes += seg.size
        firsts = {str(s) for s, _ in found}
        self._ledger.damage = {k: v for k, v in seen.items() if k in firsts and v}
        # no segment at all (never so in use): what every sink acked is not missing
        on_disk_end = max(last_seq, self._segments[-1].first_seq - 1 if self._segments else kept or 0)
        missing = self._ledger.next_seq - 1 - on_disk_end - torn
        acked_max = max(self._ledger.cursors.values(), default=0)
        self._next_seq = max(on_disk_end + 1, self._ledger.next_seq, acked_max + 1)
        if missing > 0:  # whole records gone from the end (a machine crash with fsync != always)
            self._count_corrupt("missing_tail", missing, 0, str(seg_dir))
            # their seqs are given again (no record and no ack refers to them), so that the next open does not
            # count them again; `released` comes back with them (handing out a checkpoint again costs nothing)
            self._next_seq = max(on_disk_end + 1, acked_max + 1)
            if self._ledger.released is not None:
                self._ledger.released = min(self._ledger.released, self._next_seq - 1)
        if self._segments:
            active = self._segments[-1]
            active.wfd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment()
        self._recovered = self._unreleased_checkpoints()
        self._ledger.next_seq = self._next_seq
        self._save_ledger()

    def _lowest_kept(self) -> int | None:
        """The highest seq the spool may have deleted without a loss, from the ledger: the lowest seq some
        cursor acked (segments go only once every cursor acked them, or when drop_oldest moved the cursors
        past them); with no cursor, `released` (only drop_oldest deletes then, and it releases first). None
        when the ledger cannot tell (none, or unreadable): the oldest segment is then taken as it is.

        A ledger is saved up to LEDGER_SAVE_SECS after the acks that let a segment go, and the segment is
        unlinked at once: a crash in between leaves this too low, and those delivered records are counted
        as missing."""
        ledger = self._ledger
        if ledger.damaged:
            return None
        if ledger.cursors:
            return min(ledger.cursors.values())
        return ledger.released

    def _unreleased_checkpoints(self) -> list[Checkpoint]:
        """The newest checkpoint per container among the intact records whose checkpoints were not released
        before the crash, in seq order; fsynced first (unless fsync = "never") so a power loss after this
        cannot take a record whose offset the reader has already moved past.

        The ledger's `released` mark is deliberately left where it was: the offset store may not have saved
        these before the next crash, and handing them out again costs nothing (commits only move forward).
        """
        first_on_disk = next((s.seqs[0] for s in self._segments if s.seqs), self._next_seq)
        start = self._ledger.released
        if start is None:  # no ledger to tell: every record on disk may hold one
            start = first_on_disk - 1
        self._released_seq = start
        found: dict[str, tuple[int, Checkpoint]] = {}
        touched: list[_Segment] = []
        expect = start + 1
        stop = ""
        for seg in self._segments:
            if seg.last_seq <= start:
                continue
            for i in range(bisect_right(seg.seqs, start), len(seg.seqs)):
                seq = seg.seqs[i]
                if seq != expect:
                    stop = f"records {expect}..{seq - 1} are missing"
                    break
                try:
                    _, batch = fmt.decode(os.pread(seg.rfd(), seg.sizes[i], seg.offsets[i]), seq)
                except (SpoolCorrupt, OSError) as e:
                    stop = f"record {seq} does not read back: {e}"
                    break
                if not touched or touched[-1] is not seg:
                    touched.append(seg)
                cp = batch.checkpoint
                if cp is not None:
                    found.pop(cp.container_id, None)  # re-inserted: the dict keeps seq order of the newest
                    found[cp.container_id] = (seq, cp)
                expect = seq + 1
            if stop:
                break
        if stop:
            log.warning("spool recovery hands out checkpoints only up to seq %d (%s): the readers read what "
                        "follows again (duplicates, never loss) dir=%s", expect - 1, stop, self.directory)
        if found and self._policy is not FsyncPolicy.NEVER:
            for seg in touched:
                os.fsync(seg.rfd())
            fsync_dir(fmt.segment_dir(self.directory))
        if found:
            log.info("spool recovery: %d records were written but not yet marked safe before the last stop; "
                     "their newest checkpoints go to the readers (containers=%d)", expect - 1 - start,
                     len(found))
        return [cp for _, cp in found.values()]

    def _load_segment(self, first: int, path: Path, newest: bool, prev_last: int, next_first: int | None,
                      seen: dict[str, dict[str, list[int]]], missing: int = 0) -> tuple[_Segment, int, int]:
        """Index one segment; count its damage (what an earlier open counted is not counted again) and
        cut a torn tail off the newest one. `missing`: records gone without a trace just before this
        segment (a whole file gone, or the one before cut at a record boundary), counted with its damage
        as reason "missing". Returns the segment, the records lost in the newest one's torn tail, and the
        records a damaged end of a sealed one was counted for (the seqs up to `next_first`)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    found = fmt.scan(mm, first)
            else:
                found = fmt.scan(b"", first)
        cum_before = self._segments[-1].cum_before + self._segments[-1].events if self._segments else 0
        seg = _Segment(first, path, size, found.created_ns or time.time_ns(), cum_before)
        damage = list(found.damage)
        tail = damage.pop() if newest and damage and damage[-1].reason == "torn_tail" else None
        tail_counted = 0
        if damage and damage[-1].reason == "torn_tail" and next_first is not None:
            # a sealed segment ends damaged: not a torn write; the next segment's name tells what is lost
            last_good = found.headers[-1].seq if found.headers else first - 1
            end = damage.pop()
            tail_counted = max(next_first - last_good - 1, 1)
            damage.append(fmt.Damage(end.offset, end.nbytes, "corrupt", tail_counted))
        if missing > 0:
            damage.append(fmt.Damage(0, 0, "missing", missing))
        for hdr, off in zip(found.headers, found.offsets, strict=True):
            if hdr.seq <= prev_last or (next_first is not None and hdr.seq >= next_first):
                damage.append(fmt.Damage(off, hdr.size, "misplaced"))  # valid but out of order: not ours
                continue
            seg.add(hdr.seq, off, hdr.size, hdr.events, hdr.push_ns)
        totals: dict[str, list[int]] = {}
        for d in damage:
            t = totals.setdefault(d.reason, [0, 0])
            t[0] += d.records
            t[1] += d.nbytes
        key = str(first)
        before = seen.get(key, {})
        for reason, (records, nbytes) in totals.items():
            old_records, old_bytes = before.get(reason, (0, 0))
            if records > old_records or nbytes > old_bytes:
                where = f"{path} (records gone before seq {first})" if reason == "missing" else str(path)
                self._count_corrupt(reason, max(records - old_records, 0), max(nbytes - old_bytes, 0), where)
        seen[key] = totals  # what is on disk now (a cut tail takes its damage with it)
        if newest and size < fmt.SEG_HDR_SIZE:  # crashed while creating it: start it again
            with open(path, "wb") as f:
                f.write(fmt.segment_header(first, time.time_ns()))
            seg.size = fmt.SEG_HDR_SIZE
        if tail is None:
            return seg, 0, tail_counted
        self._count_corrupt("torn_tail", tail.records, tail.nbytes, str(path))
        if size >= fmt.SEG_HDR_SIZE:
            cut = found.valid_end
            os.truncate(path, cut)
            log.warning("spool tail cut path=%s at=%d removed_bytes=%d", path, cut, size - cut)
            seg.size = cut
        return seg, tail.records, tail_counted

    def _count_corrupt(self, reason: str, records: int, nbytes: int, where: str) -> None:
        self.corrupt_records += records
        tel.spool_corrupt(self.metrics, reason, records, nbytes, where)
