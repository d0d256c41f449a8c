"""`DiskSpool` itself: its state, open and close, the write path, the cursor registry, the background tick
and when the ledger is saved. The other modules of this package each add one concern to it as a mixin
over the same state (set up here, in `__init__`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path

from shipper.buffer import segment as fmt
from shipper.buffer.base import Buffer, OnSafe, Signal
from shipper.buffer.ledger import Ledger
from shipper.buffer.record import encode_record
from shipper.buffer.spool.cursor import Reading, SpoolCursor
from shipper.buffer.spool.durability import Durability, _fsync
from shipper.buffer.spool.index import Mark, _Segment
from shipper.buffer.spool.recovery import Recovery
from shipper.buffer.spool.room import Room
from shipper.config import BufferConfig, FsyncPolicy
from shipper.deflate import deflate
from shipper.errors import SpoolError
from shipper.event import Batch, Checkpoint
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.spool")
LEDGER_SAVE_SECS = 0.2  # acks reach the ledger at most this often


class DiskSpool(Room, Durability, Recovery, Reading, Buffer):
    """See the package docstring; the format is in FORMAT.md. Open every cursor before sinks start acking:
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
        self._ledger_failing = False  # the last ledger write failed (logged once per outage)
        self._background: set[asyncio.Future[None]] = set()
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
        await self.idle()
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

    # --- writing --------------------------------------------------------------------------------------

    async def push(self, batch: Batch) -> None:
        self._check_open()
        payload = encode_record(batch)
        flags = 0
        if self.config.compression:
            payload = deflate(payload, 1)
            flags = fmt.FLAG_ZLIB
        size = fmt.REC_HDR_SIZE + len(payload)
        async with self._write_lock:
            self._check_open()
            if not await self._make_room(batch, size):
                return
            active = self._active
            # wfd None: the last segment is gone or sealed and the next could not be created (a full disk)
            if active.wfd is None or (active.seqs and active.size + size > self.config.segment_bytes):
                await self._rotate(fsync=True)
                active = self._active
            seq = self._next_seq
            push_ns = time.time_ns()
            head = fmt.encode_header(seq, push_ns, batch, payload, flags)
            try:
                self._write(active, head, payload)
            except SpoolError:
                # the disk is full whatever max_bytes says: free what every sink has delivered, then try once
                # more (the caller retries later if that freed nothing)
                if not await self._free_for_write():
                    raise
                active = self._active
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
        or dropped), the checkpoints it holds are released at once. The next segment is created before the
        active one is closed, so a failure (a full disk) leaves the spool as it was, still writable."""
        old = self._active
        end: Mark = (old.first_seq, old.size)
        if fsync and self._policy is not FsyncPolicy.NEVER and self._synced < end:
            assert old.wfd is not None
            try:
                await asyncio.to_thread(_fsync, old.wfd, None if old.dir_synced else old.path.parent)
            except OSError as e:
                raise SpoolError(f"cannot fsync spool {old.path}: {e}") from e
            old.dir_synced = True
        path = fmt.segment_path(self.directory, self._next_seq)
        try:
            created = await asyncio.to_thread(_create_segment, path, self._next_seq)
        except OSError as e:
            raise SpoolError(f"cannot create spool segment {path}: {e}") from e
        self._mark_synced(end, old.last_seq)
        if old.wfd is not None:
            os.close(old.wfd)
            old.wfd = None
        self._new_segment(created)
        if fsync:  # sealed with everything in it delivered already: it can go now
            self._reclaim(force=False)

    # --- background -----------------------------------------------------------------------------------

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

    # --- cursors --------------------------------------------------------------------------------------

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
        self._in_background(loop.run_in_executor(None, self._write_ledger, snap))

    def _in_background(self, work: asyncio.Future[None]) -> None:
        """File work handed to a worker thread (ledger writes, segment deletes); close() waits for it."""
        self._background.add(work)
        work.add_done_callback(self._background.discard)

    async def idle(self) -> None:
        """Wait until the file work handed to worker threads so far is done."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _write_ledger(self, snap: tuple[int, bytes]) -> None:
        try:
            self._ledger.write(snap)
        except OSError as e:
            self._ledger_dirty = True  # the ticker tries again
            if not self._ledger_failing:  # once per outage: a full disk must not flood the log
                self._ledger_failing = True
                log.error("spool ledger not saved, will retry (logged once until it works) path=%s error=%r",
                          self._ledger.path, e)
            return
        if self._ledger_failing:
            self._ledger_failing = False
            log.warning("spool ledger saved again path=%s", self._ledger.path)

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
