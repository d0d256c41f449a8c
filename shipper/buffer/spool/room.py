"""Room on disk: what a full spool does (`when_full`), and deleting segments once every open cursor acked
them and retention lets them go (whole files only: nothing is ever rewritten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shipper.buffer.base import Signal
from shipper.buffer.ledger import Ledger
from shipper.buffer.spool.cursor import SpoolCursor
from shipper.buffer.spool.index import Mark, SegmentIndex, _Segment
from shipper.config import BufferConfig, WhenFull
from shipper.errors import SpoolError
from shipper.event import Batch, Checkpoint
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.spool")


class Room(SegmentIndex):
    """`_make_room` before a write, `_reclaim` after an ack and on each tick."""

    config: BufferConfig
    metrics: Metrics
    _cursors: dict[str, SpoolCursor]
    _ledger: Ledger
    _disk_bytes: int
    _space: Signal  # fired when room may have been freed
    _waiting_space: int  # pushes waiting in _make_room ('block')

    if TYPE_CHECKING:  # defined by the other parts of DiskSpool
        def _check_open(self) -> None: ...
        async def _rotate(self, fsync: bool) -> None: ...
        def _release(self, mark: Mark) -> None: ...
        def _mark_synced(self, mark: Mark, seq: int) -> None: ...
        def _safe_in_order(self, cp: Checkpoint | None) -> None: ...
        def _advance_released(self, seq: int) -> None: ...
        def _mark_ledger_dirty(self) -> None: ...
        def _in_background(self, work: asyncio.Future[None]) -> None: ...
        def _ledger_snapshot(self) -> tuple[int, bytes]: ...
        def _write_ledger(self, snap: tuple[int, bytes]) -> None: ...
        async def idle(self) -> None: ...

    def _low(self) -> int | None:
        """The highest seq every open cursor has acked; None with no cursor (then nothing is delivered)."""
        if not self._cursors:
            return None
        return min(c.acked for c in self._cursors.values())

    def _undelivered(self) -> bool:
        """Is there a record some open cursor has not acked (with no cursor: any record)?"""
        last = self._last_record_seq()
        low = self._low()
        return last > 0 if low is None else last > low

    async def _make_room(self, batch: Batch, size: int) -> bool:
        """False if the batch was dropped (drop_newest); waits under 'block'."""
        limit = self.config.limit_bytes
        while self._disk_bytes + size > limit:
            if self._reclaim(force=True):
                continue
            low = self._low()
            active = self._active
            if active.seqs and low is not None and active.last_seq <= low:
                await self._rotate(fsync=False)  # all delivered: seal it so it can go
                continue
            if not self._undelivered():
                return True  # nothing will ever free: one batch always fits
            policy = self.config.when_full
            if policy is WhenFull.DROP_NEWEST:
                tel.events_dropped(self.metrics, "buffer_full", len(batch), "drop_newest")
                self._safe_in_order(batch.checkpoint)
                return False
            if policy is WhenFull.DROP_OLDEST:
                if await self._drop_oldest():
                    continue
                return True
            self._waiting_space += 1
            try:
                await self._space.wait()
            finally:
                self._waiting_space -= 1
            self._check_open()
        return True

    async def _free_for_write(self) -> bool:
        """A write failed (a full disk, whatever max_bytes says): delete every segment all open cursors have
        acked, even if retention would keep it, as a full spool does. The segment being written goes too when
        all of it is delivered: otherwise a spool that fits in one segment (the default 64 MiB segment_bytes
        on a small disk) could never free anything and reading would never resume. True if something was
        deleted (its blocks are free once this returns); SpoolError if the next segment cannot be created
        even then (the next push tries again)."""
        if self._low() is None:
            return False
        freed = False
        while self._reclaim(force=True):  # sealed ones first: their room lets the next segment be created
            freed = True
        if freed:
            await self.idle()
        low = self._low()
        active = self._active
        if active.seqs and low is not None and active.last_seq <= low:
            try:
                await self._rotate(fsync=False)
            except SpoolError:
                # no room even for the next segment's header: delete this one first (every cursor acked
                # all of it), then start the next; until that works, each push tries again (wfd is None)
                self._mark_synced((active.first_seq, active.size), active.last_seq)
                active.close()
                await asyncio.to_thread(_unlink, active.path)
                freed = True
                await self._rotate(fsync=False)
            while self._reclaim(force=True):
                freed = True
        if freed:
            await self.idle()
            log.info("spool: the disk was full; deleted the segments every sink had delivered dir=%s",
                     self._active.path.parent)
        return freed

    async def _drop_oldest(self) -> bool:
        """Delete the oldest segment although some cursor still needs it; its events are counted dropped."""
        if self._segments[0] is self._active:
            if not self._active.seqs:
                return False
            await self._rotate(fsync=False)
        seg = self._segments[0]
        low = self._low()
        lost = seg.events - (seg.events_upto(low) if low is not None else 0)
        if lost > 0:
            behind = sorted(c.name for c in self._cursors.values() if c.acked < seg.last_seq)
            tel.events_dropped(self.metrics, "buffer_full", lost, "drop_oldest")
            log.debug("spool full: dropped segment %s with %d undelivered events for sinks %s",
                      seg.path.name, lost, behind)
        for cur in self._cursors.values():  # given up on, counted: no cursor's gap waits for it
            cur.window.skip_to(seg.last_seq)
        self._release((seg.first_seq, seg.size))
        self._advance_released(seg.last_seq)
        self._delete(seg)
        return True

    def _reclaim(self, force: bool) -> bool:
        """Delete sealed segments every open cursor has acked, as retention allows (force: oldest one, even
        if retention would keep it, because the room is needed)."""
        low = self._low()
        if low is None:
            return False
        delivered = []
        for seg in self._segments[:-1]:
            if seg.last_seq > low:
                break
            delivered.append(seg)
        if not delivered:
            return False
        if force:
            self._delete(delivered[0])
            return True
        doomed = delivered[:self._retention_cut(delivered)]
        for seg in doomed:
            self._delete(seg)
        return bool(doomed)

    def _retention_cut(self, delivered: list[_Segment]) -> int:
        """How many of the oldest delivered segments retention lets go."""
        secs, max_keep = self.config.retention_secs, self.config.retention_bytes
        if secs <= 0 and max_keep <= 0:
            return len(delivered)
        now = time.time_ns()
        kept = 0
        for i in range(len(delivered) - 1, -1, -1):
            seg = delivered[i]
            too_old = secs > 0 and now - seg.last_push_ns > secs * 1e9
            if too_old or (max_keep > 0 and kept + seg.size > max_keep):
                return i + 1
            kept += seg.size
        return 0

    def _delete(self, seg: _Segment) -> None:
        seg.close()
        seg.deleted = True
        self._segments.remove(seg)
        self._disk_bytes -= seg.size
        self._ledger.damage.pop(str(seg.first_seq), None)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # at open, off the loop: the ledger is saved when recovery ends
            _unlink(seg.path)
            return
        # The ledger that says every sink acked the segment goes to disk before the segment goes: a crash in
        # between would otherwise read the acked records as lost. Both in a worker thread (freeing a
        # segment's blocks can take a while).
        snap = self._ledger_snapshot()
        self._in_background(loop.run_in_executor(None, self._write_then_unlink, snap, seg.path))

    def _write_then_unlink(self, snap: tuple[int, bytes], path: Path) -> None:
        self._write_ledger(snap)
        _unlink(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
