"""The durable disk buffer: append-only segment files, one cursor per sink, a small ledger of acks.

Why this shape (after Vector's disk_v2, libbeat's disk queue and Fluent Bit's chunks): records are only
appended, so a crash can damage nothing but the tail, and whole segments are deleted instead of being
rewritten. Each sink reads the files at its own pace through its own cursor, so a dead sink holds back no
other; a segment goes only when every open cursor has acked all of it and retention lets it go.

Durability (`fsync`): a batch's checkpoint goes to `on_safe` once the batch survives a crash of the
process ('never': after write(); survives the process, not the machine), of the machine ('always': after
an fsync covering it, shared by the pushes that arrive while one is running; 'interval': at the next
fsync tick, push returns first). Checkpoints are released strictly in push order.

Recovery (`open`): every segment is scanned and every record's CRC checked. A damaged record in the middle
is skipped by resync to the next record whose magic and CRC check out; a torn tail of the newest segment is
cut off. Both are counted in shipper_spool_corrupt_records_total / _bytes_total and logged once; the rest
is delivered. A crash re-delivers what was un-acked, plus at most the acks of the loop iteration in flight.

Records carry their batch's checkpoint. A crash between a write and the fsync that would release its
checkpoint leaves the record intact (kill -9 keeps the page cache) while the reader's offset never moved;
open() fsyncs such records and hands the newest checkpoint per container to `on_safe`, so the readers do
not read and send again what the spool already holds. After a power loss the same records are gone, and
so is the need to skip them. Only records above the ledger's `released` seq are decoded (about one fsync
interval of writes), and the walk stops at the first gap: past damage the reader reads again (duplicates,
never loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from pathlib import Path

from shipper.buffer import segment as fmt
from shipper.buffer.base import Buffer, Cursor, Lease, OnSafe, Signal
from shipper.buffer.ledger import Ledger, fsync_dir
from shipper.buffer.record import encode_record
from shipper.config import BufferConfig, FsyncPolicy, WhenFull
from shipper.errors import SpoolCorrupt, SpoolError
from shipper.event import Batch, Checkpoint
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

__all__ = ["DiskSpool", "SpoolCursor", "SpoolReader"]
SpoolReader = fmt.SpoolReader
log = logging.getLogger("shipper.spool")
LEDGER_SAVE_SECS = 0.2  # acks reach the ledger at most this often
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


class DiskSpool(Buffer):
    """See the module docstring; the format is in FORMAT.md. Open every cursor before sinks start acking:
    only open cursors hold data (a ledger entry of a sink no longer configured holds nothing back)."""

    def __init__(self, directory: Path, config: BufferConfig, metrics: Metrics, on_safe: OnSafe) -> None:
        super().__init__(on_safe)
        self.directory = Path(directory)
        self.config = config
        self.metrics = metrics
        self.corrupt_records = 0
        self._policy = config.fsync
        self._segments: list[_Segment] = []
        self._cursors: dict[str, SpoolCursor] = {}
        self._ledger = Ledger(self.directory / "ledger.json")
        self._next_seq = 1
        self._disk_bytes = 0
        self._pending: deque[tuple[Mark, Checkpoint]] = deque()
        self._synced: Mark = (0, 0)
        self._last_sync = time.monotonic()
        self._syncing = False
        self._sync_done = Signal()
        self._appended = Signal()
        self._space = Signal()
        self._waiting_space = 0
        self._write_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._ledger_dirty = False
        self._ledger_scheduled = False
        self._ledger_saved = 0.0  # monotonic time of the last ledger snapshot
        self._bad_reads: set[int] = set()
        self._released_seq = 0  # every record up to here had its checkpoint handed to on_safe
        self._recovered: list[Checkpoint] = []  # found at open, released once open() is back on the loop
        self._state = "new"

    # --- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Scan, check and recover the segments (off the event loop: it reads the whole spool once)."""
        if self._state != "new":
            raise SpoolError("spool already opened")
        try:
            await asyncio.to_thread(self._recover)
        except BaseException:
            self._release_files()
            raise
        self._state = "open"
        recovered, self._recovered = self._recovered, []
        for cp in recovered:
            self.on_safe(cp)
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="spool-ticker")
        self._gauges()

    async def close(self) -> None:
        """Make everything written durable, save the ledger, release the directory."""
        if self._state != "open":
            return
        self._state = "closing"
        self._space.fire()  # a push waiting for room gives up
        self._appended.fire()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        async with self._write_lock:
            try:
                if self._policy is not FsyncPolicy.NEVER:
                    await self._wait_durable(self._written())
                self._release(self._written())
                self._advance_released(self._next_seq - 1)
            finally:
                self._state = "closed"
                try:
                    self._save_ledger(fsync=self._policy is not FsyncPolicy.NEVER)
                except OSError as e:
                    log.error("spool ledger not saved at close (acks since the last save will be re-sent) "
                              "path=%s error=%r", self._ledger.path, e)
                self._release_files()
                self._sync_done.fire()

    def _release_files(self) -> None:
        for seg in self._segments:
            seg.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def _check_open(self) -> None:
        if self._state != "open":
            raise SpoolError(f"spool {self.directory} is {self._state}")

    # --- recovery -------------------------------------------------------------------------------------

    def _recover(self) -> None:
        seg_dir = fmt.segment_dir(self.directory)
        seg_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolError(f"spool {self.directory} is in use by another shipper process") from None
        self._ledger = Ledger.load(self.directory)
        if self._ledger.damaged:
            tel.spool_corrupt(self.metrics, "ledger", 0, 0, str(self._ledger.path))
        found = fmt.list_segments(self.directory)
        seen = self._ledger.damage
        last_seq = torn = 0
        for i, (first, path) in enumerate(found):
            newest = i == len(found) - 1
            seg, torn = self._load_segment(first, path, newest, last_seq,
                                           found[i + 1][0] if not newest else None, seen)
            last_seq = max(last_seq, seg.last_seq)
            self._segments.append(seg)
            self._disk_bytes += seg.size
        firsts = {str(s) for s, _ in found}
        self._ledger.damage = {k: v for k, v in seen.items() if k in firsts and v}
        on_disk_end = max(last_seq, self._segments[-1].first_seq - 1 if self._segments else 0)
        missing = self._ledger.next_seq - 1 - on_disk_end - torn
        if missing > 0:  # whole records gone from the end (a machine crash with fsync != always)
            self._count_corrupt("missing_tail", missing, 0, str(seg_dir))
        acked_max = max(self._ledger.cursors.values(), default=0)
        self._next_seq = max(on_disk_end + 1, self._ledger.next_seq, acked_max + 1)
        if self._segments:
            active = self._segments[-1]
            active.wfd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment()
        self._recovered = self._unreleased_checkpoints()
        self._ledger.next_seq = self._next_seq
        self._save_ledger()

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
                      seen: dict[str, dict[str, list[int]]]) -> tuple[_Segment, int]:
        """Index one segment; count its damage (what an earlier open counted is not counted again) and
        cut a torn tail off the newest one. Returns the segment and the records lost in that tail."""
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
        if damage and damage[-1].reason == "torn_tail" and next_first is not None:
            # a sealed segment ends damaged: not a torn write; the next segment's name tells what is lost
            last_good = found.headers[-1].seq if found.headers else first - 1
            end = damage.pop()
            damage.append(fmt.Damage(end.offset, end.nbytes, "corrupt", max(next_first - last_good - 1, 1)))
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
                self._count_corrupt(reason, max(records - old_records, 0), max(nbytes - old_bytes, 0),
                                    str(path))
        seen[key] = totals  # what is on disk now (a cut tail takes its damage with it)
        if newest and size < fmt.SEG_HDR_SIZE:  # crashed while creating it: start it again
            with open(path, "wb") as f:
                f.write(fmt.segment_header(first, time.time_ns()))
            seg.size = fmt.SEG_HDR_SIZE
        if tail is None:
            return seg, 0
        self._count_corrupt("torn_tail", tail.records, tail.nbytes, str(path))
        if size >= fmt.SEG_HDR_SIZE:
            cut = found.valid_end
            os.truncate(path, cut)
            log.warning("spool tail cut path=%s at=%d removed_bytes=%d", path, cut, size - cut)
            seg.size = cut
        return seg, tail.records

    def _count_corrupt(self, reason: str, records: int, nbytes: int, where: str) -> None:
        self.corrupt_records += records
        tel.spool_corrupt(self.metrics, reason, records, nbytes, where)

    # --- writing --------------------------------------------------------------------------------------

    async def push(self, batch: Batch) -> None:
        self._check_open()
        payload = encode_record(batch)
        flags = 0
        if self.config.compression:
            payload = zlib.compress(payload, 1)
            flags = fmt.FLAG_ZLIB
        size = fmt.REC_HDR_SIZE + len(payload)
        async with self._write_lock:
            self._check_open()
            if not await self._make_room(batch, size):
                return
            active = self._active
            if active.seqs and active.size + size > self.config.segment_bytes:
                await self._rotate(fsync=True)
                active = self._active
            seq = self._next_seq
            push_ns = time.time_ns()
            head = fmt.encode_header(seq, push_ns, batch, payload, flags)
            self._write(active, head, payload)
            active.add(seq, active.size, size, len(batch.events), push_ns)
            active.size += size
            self._disk_bytes += size
            self._next_seq = seq + 1
            mark = (active.first_seq, active.size)
            if self._policy is FsyncPolicy.NEVER:
                self._release(mark)
                if batch.checkpoint is not None:
                    self.on_safe(batch.checkpoint)
                self._released_seq = seq
            elif batch.checkpoint is not None:
                self._pending.append((mark, batch.checkpoint))
            self._appended.fire()
            self._gauges()
        if self._policy is FsyncPolicy.ALWAYS:
            await self._wait_durable(mark)

    def _write(self, seg: _Segment, head: bytes, payload: bytes) -> None:
        """One writev per batch; a short or failed write is cut back so no partial record stays."""
        assert seg.wfd is not None
        total = len(head) + len(payload)
        try:
            n = os.writev(seg.wfd, [head, payload])
            while n < total:  # only on a nearly full disk; finish or fail
                n += os.write(seg.wfd, (head + payload)[n:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(seg.wfd, seg.size)
            raise SpoolError(f"cannot write to spool {seg.path}: {e}") from e

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    def _written(self) -> Mark:
        return (self._active.first_seq, self._active.size)

    def _new_segment(self, created: tuple[int, int] | None = None) -> _Segment:
        """Start the segment of the next seq; `created` is (fd, time) when the file was made off the loop."""
        prev = self._segments[-1] if self._segments else None
        cum_before = prev.cum_before + prev.events if prev else 0
        path = fmt.segment_path(self.directory, self._next_seq)
        fd, now = created or _create_segment(path, self._next_seq)
        seg = _Segment(self._next_seq, path, fmt.SEG_HDR_SIZE, now, cum_before)
        seg.wfd = fd
        seg.dir_synced = self._policy is FsyncPolicy.NEVER
        self._segments.append(seg)
        self._disk_bytes += seg.size
        return seg

    async def _rotate(self, fsync: bool) -> None:
        """Seal the active segment and start the next. Without fsync (it is about to be deleted: delivered
        or dropped), the checkpoints it holds are released at once."""
        old = self._active
        end: Mark = (old.first_seq, old.size)
        if fsync and self._policy is not FsyncPolicy.NEVER and self._synced < end:
            assert old.wfd is not None
            try:
                await asyncio.to_thread(_fsync, old.wfd, None if old.dir_synced else old.path.parent)
            except OSError as e:
                raise SpoolError(f"cannot fsync spool {old.path}: {e}") from e
            old.dir_synced = True
        self._mark_synced(end, old.last_seq)
        if old.wfd is not None:
            os.close(old.wfd)
            old.wfd = None
        path = fmt.segment_path(self.directory, self._next_seq)
        try:
            created = await asyncio.to_thread(_create_segment, path, self._next_seq)
        except OSError as e:
            raise SpoolError(f"cannot create spool segment {path}: {e}") from e
        self._new_segment(created)
        if fsync:  # sealed with everything in it delivered already: it can go now
            self._reclaim(force=False)

    # --- durability -----------------------------------------------------------------------------------

    def _release(self, mark: Mark) -> None:
        """Hand the checkpoints of everything up to `mark` to on_safe, in push order."""
        pending = self._pending
        while pending and pending[0][0] <= mark:
            self.on_safe(pending.popleft()[1])

    def _safe_in_order(self, cp: Checkpoint | None) -> None:
        """A checkpoint with no data of its own (dropped batch) waits behind the ones pushed before it."""
        if cp is None:
            return
        if self._pending:
            self._pending.append((self._written(), cp))
        else:
            self.on_safe(cp)

    def _mark_synced(self, mark: Mark, seq: int) -> None:
        """Everything up to `mark` (the end of record `seq`) is durable: release its checkpoints."""
        if mark > self._synced:
            self._synced = mark
        self._last_sync = time.monotonic()
        self._release(self._synced)
        self._advance_released(seq)
        self._sync_done.fire()

    def _advance_released(self, seq: int) -> None:
        """Saved in the ledger at the next ack or tick: a lag only means decoding a few more records at open."""
        if seq > self._released_seq:
            self._released_seq = seq

    async def _sync_once(self) -> None:
        """fsync everything written so far (group commit: one fsync covers every push before it)."""
        if self._syncing:
            await self._sync_done.wait()
            return
        active = self._active
        mark = self._written()
        seq = self._next_seq - 1
        if mark <= self._synced:
            self._mark_synced(mark, seq)
            return
        assert active.wfd is not None
        fd = os.dup(active.wfd)  # the sync thread owns its fd: a rotation may close the original meanwhile
        self._syncing = True
        try:
            await asyncio.to_thread(_fsync_close, fd, None if active.dir_synced else active.path.parent)
            active.dir_synced = True
        finally:
            self._syncing = False
            self._sync_done.fire()
        self._mark_synced(mark, seq)

    async def _wait_durable(self, mark: Mark) -> None:
        while self._synced < mark:
            if self._state == "closed":
                raise SpoolError(f"spool {self.directory} closed before the write was made durable")
            try:
                await self._sync_once()
            except OSError as e:
                raise SpoolError(f"cannot fsync spool {self.directory}: {e}") from e

    async def _tick(self) -> None:
        """fsync ticks (interval policy), retention expiry and a retry of a failed ledger save."""
        cfg = self.config
        periods = [1.0]
        if self._policy is FsyncPolicy.INTERVAL:
            periods.append(cfg.fsync_interval_secs)
        if cfg.retention_secs > 0:
            periods.append(cfg.retention_secs / 2)
        period = max(min(periods), 0.01)
        while True:
            await asyncio.sleep(period)
            try:
                if (self._policy is FsyncPolicy.INTERVAL
                        and time.monotonic() - self._last_sync >= cfg.fsync_interval_secs - period / 2):
                    await self._sync_once()
                if self._reclaim(force=False):
                    self._gauges()
                if self._ledger_dirty or self._ledger.released != self._released_seq:
                    self._ledger_dirty = True
                    self._flush_ledger()
            except (OSError, SpoolError) as e:
                log.error("spool background work failed, will retry dir=%s error=%r", self.directory, e)

    # --- room -----------------------------------------------------------------------------------------

    def _low(self) -> int | None:
        """The highest seq every open cursor has acked; None with no cursor (then nothing is delivered)."""
        if not self._cursors:
            return None
        return min(c.acked for c in self._cursors.values())

    def _last_record_seq(self) -> int:
        return next((s.seqs[-1] for s in reversed(self._segments) if s.seqs), 0)

    def _undelivered(self) -> bool:
        """Is there a record some open cursor has not acked (with no cursor: any record)?"""
        last = self._last_record_seq()
        low = self._low()
        return last > 0 if low is None else last > low

    async def _make_room(self, batch: Batch, size: int) -> bool:
        """False if the batch was dropped (drop_newest); waits under 'block'."""
        limit = self.config.max_bytes
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
        try:
            asyncio.get_running_loop().run_in_executor(None, _unlink, seg.path)  # freeing blocks can take a while
        except RuntimeError:
            _unlink(seg.path)
        seg.deleted = True
        self._segments.remove(seg)
        self._disk_bytes -= seg.size
        self._ledger.damage.pop(str(seg.first_seq), None)
        self._mark_ledger_dirty()

    # --- reading --------------------------------------------------------------------------------------

    def cursor(self, name: str) -> SpoolCursor:
        if self._state == "new":
            raise SpoolError("open() the spool before asking for cursors")
        cur = self._cursors.get(name)
        if cur is not None:
            return cur
        if name in self._ledger.cursors:
            acked = self._ledger.cursors[name]
        else:  # a new sink starts with the oldest batch some other sink still needs, or everything on disk
            others = [c.acked for c in self._cursors.values()] or list(self._ledger.cursors.values())
            first = next((s.seqs[0] for s in self._segments if s.seqs), self._next_seq)
            acked = min(others) if others else first - 1
        cur = SpoolCursor(self, name, acked)
        self._cursors[name] = cur
        self._mark_ledger_dirty()
        return cur

    def remove_cursor(self, name: str) -> None:
        """Drop a sink that is gone from the config, so its ledger entry stops pinning a position."""
        self._cursors.pop(name, None)
        self._ledger.cursors.pop(name, None)
        self._mark_ledger_dirty()

    def known_cursors(self) -> list[str]:
        return sorted(set(self._ledger.cursors) | set(self._cursors))

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

    # --- ledger ---------------------------------------------------------------------------------------

    def _mark_ledger_dirty(self) -> None:
        """Acks are saved at most every LEDGER_SAVE_SECS, written in a worker thread: a stale ledger only
        means re-sending what was acked since (duplicates, never loss)."""
        self._ledger_dirty = True
        if self._ledger_scheduled or self._state != "open":
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_ledger()
            return
        self._ledger_scheduled = True
        loop.call_later(max(self._ledger_saved + LEDGER_SAVE_SECS - time.monotonic(), 0.0), self._flush_ledger)

    def _flush_ledger(self) -> None:
        self._ledger_scheduled = False
        if not self._ledger_dirty or self._state != "open":
            return
        snap = self._ledger_snapshot()
        self._ledger_saved = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_ledger(snap)
            return
        loop.run_in_executor(None, self._write_ledger, snap)

    def _write_ledger(self, snap: tuple[int, bytes]) -> None:
        try:
            self._ledger.write(snap)
        except OSError as e:
            self._ledger_dirty = True  # the ticker tries again
            log.error("spool ledger not saved, will retry path=%s error=%r", self._ledger.path, e)

    def _ledger_snapshot(self) -> tuple[int, bytes]:
        self._ledger.cursors.update({n: c.acked for n, c in self._cursors.items()})
        self._ledger.next_seq = self._next_seq
        self._ledger.released = self._released_seq
        self._ledger_dirty = False
        return self._ledger.snapshot()

    def _save_ledger(self, fsync: bool = False) -> None:
        """Write the ledger now, on this thread (open, close)."""
        self._ledger.write(self._ledger_snapshot(), fsync)

    # --- accounting -----------------------------------------------------------------------------------

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

    def _gauges(self) -> None:
        m = self.metrics
        if not self._segments:
            return
        m.set("shipper_buffer_events", self._total_events() - self._segments[0].cum_before)
        m.set("shipper_buffer_bytes", self._disk_bytes)
        m.set("shipper_spool_segments", len(self._segments))
        for cur in self._cursors.values():
            m.set("shipper_spool_cursor_lag_events", self._events_after(cur.acked), sink=cur.name)

    def stats(self) -> dict[str, int]:
        if not self._segments:
            return {}
        return {"events": self._total_events() - self._segments[0].cum_before, "bytes": self._disk_bytes,
                "segments": len(self._segments), "records": sum(len(s.seqs) for s in self._segments),
                "next_seq": self._next_seq, "corrupt_records": self.corrupt_records}


def _fsync(fd: int, directory: Path | None) -> None:
    os.fsync(fd)
    if directory is not None:
        fsync_dir(directory)


def _fsync_close(fd: int, directory: Path | None) -> None:
    try:
        _fsync(fd, directory)
    finally:
        os.close(fd)


def _create_segment(path: Path, first_seq: int) -> tuple[int, int]:
    """Create a segment file with its header; (write fd, creation time)."""
    now = time.time_ns()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        os.write(fd, fmt.segment_header(first_seq, now))
    except OSError:
        os.close(fd)
        raise
    return fd, now


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
