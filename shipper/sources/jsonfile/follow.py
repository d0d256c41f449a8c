"""Following one container's json-file log: the reader's lifecycle, its loop, and its checkpoints.

Positions given to the assembler are "virtual": the file's generation in the upper bits, the byte offset
in the lower 40. They only grow, across rotations too, so the assembler's `safe_position` may compare
them, and the checkpoint of a batch names the file its offset belongs to (dev:ino and a checksum of its
first line, since rotation reuses inodes at once) even when an open multi-line event began in a file that
has since rotated. Resuming finds that file among the rotated ones, finishes it and the newer ones oldest
first, then follows the live file.

Gaps are reported only when data was lost, with its size: exact where the lost data can still be measured
(compressed files, which are not read), else the least the file system proves (`lost_bytes>=`): dockerd
rotates a file only once it holds max-size bytes, so a file deleted unread held at least that much, and
the rest of a checkpoint's deleted file at least max-size minus the position. Whether files were deleted
unread at all, when dockerd rotated max-file times or more between two looks, the file system cannot tell
(max-file rotations lose nothing); inotify's count of the live files dockerd created can: it is compared
with the files found at the next quiet look (`_settle`). Where nothing tells (no inotify, a checkpoint's
file gone after it was read to max-size, a truncation not dockerd's, a new container found with max-file
files), it is a possible gap: logged and counted apart, never as data lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from shipper.config import StartAt
from shipper.docker.metadata import ContainerInfo
from shipper.event import Checkpoint
from shipper.sources.api import ts_to_ns
from shipper.sources.base import LogSource, SourceContext
from shipper.sources.jsonfile.inotify import _Inotify
from shipper.sources.jsonfile.parse import _Parser
from shipper.sources.jsonfile.rotation import (
    MIN_ENTRY_BYTES,
    Measured,
    _LogFile,
    compressed_first_time,
    compressed_names,
    compressed_newer,
    find_resume,
    fingerprint,
    first_time,
    held_chain,
    json_log_path,
    last_time,
    log_limits,
    measure_compressed,
    open_chain,
    open_newer,
)
from shipper.telemetry import events

log = logging.getLogger("shipper.sources.jsonfile")

GEN_SHIFT = 40  # offsets below 1 TiB; the generation of the file above
OFFSET_MASK = (1 << GEN_SHIFT) - 1
_MIN_IDLE = 0.005
_PROCESS_START_NS = time.time_ns() - 1_000_000_000  # containers started after this are ours to have read
_COUNT_WAIT = 1.0  # seconds a count short of the files found is waited for (an inotify event on its way)


@dataclass(slots=True)
class _Unread:
    """Compressed log files never read (compressed files are not read): measured off the loop, reported."""
    reason: str
    files: list[BinaryIO]  # oldest first
    skip: int = 0  # bytes of the first one read already (a checkpoint's position)


@dataclass(slots=True)
class _Overrun:
    """A look that met neither the newest file known nor a compressed copy of it among the rotated files:
    dockerd rotated max-file times or more since it was live. Files were deleted unread only if more."""
    since: str  # time of the last entry before (read)
    until: str  # time of the first entry after (to be read)


class JsonFileSource(_Parser, LogSource):
    """Reads one container's json-file log; parsing the chunks it reads is `_Parser`'s (parse.py)."""

    def __init__(self, info: ContainerInfo, ctx: SourceContext, resume: Checkpoint | None) -> None:
        super().__init__(info, ctx, resume)
        cfg = ctx.config
        self.path = json_log_path(info, cfg.docker.data_root)
        self._chunk = cfg.input.read_chunk_bytes
        self._batch_max = cfg.input.batch_max_events
        self._poll_max = max(cfg.docker.poll_interval_secs, _MIN_IDLE)
        self._coalesce = cfg.docker.read_coalesce_secs
        self._reads = 0  # reads that returned data, so the poll restarts at its shortest after progress
        self._cur: _LogFile | None = None
        self._queue: deque[_LogFile] = deque()  # newer files, oldest first, already open
        self._next_gen = 0
        self._gens: dict[int, _LogFile] = {}  # generation -> file, for the checkpoint's file_id
        self._watch: tuple[_Inotify, int] | None = None
        self._vbase = 0  # the current file's generation, shifted
        self._offset = 0  # next byte of the current file to read
        self._consumed = 0  # first byte of the current file not yet handed to the assembler
        self._tail = b""  # an entry whose newline has not been written yet
        self._skip = 0  # > 0: inside an over-long line, this many bytes of it dropped so far
        # gaps: see the module docstring
        self._limits = (0, 0)  # (max-file, max-size) from hostconfig.json, read when first needed
        self._live_name = os.path.basename(self.path)
        self._seen = 0  # files found newer than the first ones: dockerd created each as the live file
        self._anchor: tuple[int, int, int] | None = None  # (overflows, creates, _seen) when they agreed
        self._lost_files = 0  # files reported deleted unread since the anchor
        self._overruns: list[_Overrun] = []  # waiting for the count
        self._unsettled = False  # the next quiet look takes the count (baseline or overruns)
        self._count_due = 0.0  # a count that does not add up is waited for until then (monotonic)
        self._unread: list[_Unread] = []  # waiting to be measured

    def _has_reader(self) -> bool:
        return self._cur is not None

    async def run(self) -> None:
        self._running = True
        try:
            self._start_watch()  # before the first listing when the folder is there: the count covers it
            if await self._open_start():
                self._start_watch()
                await self._follow()
        finally:
            self._running = False
            with contextlib.suppress(OSError):
                self._last_gaps()
            if self._watch is not None:
                self._watch[0].unwatch(self._watch[1], self._changed)
                self._watch = None
            self._close_files()
            self._done.set()

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = _Inotify.watch(os.path.dirname(self.path), self._changed, self._coalesce)
            if self._watch is not None:
                self._watch[0].count_creates(self._watch[1], self._live_name)
                self._unsettled = True  # the count's baseline, at the first quiet look

    def _changed(self, entries: bool = True) -> None:
        """inotify: the folder's entries changed (a rotation: open the new live file at once, even while a
        push is waiting), or with `entries` False the log was written to: wake the reader, nothing more
        (writes come at most every `read_coalesce_secs`, see inotify.py, and a busy or blocked reader reads
        them when it gets to them)."""
        self._wake.set()
        if entries and self._cur is not None and self._cur.fd >= 0:
            try:
                self._look()
            except OSError as e:
                log.debug("looking for a rotated log failed container=%s error=%r", self._label, e)

    # --- the loop --------------------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Read passes: a pass reads until the live file's end as of now, then the reader waits to be woken.
        A read shorter than a chunk is that end: the few lines written since are left to the next wake-up
        (at most every `read_coalesce_secs`) instead of being read one by one as they come, which would spin
        the reader at the writer's pace on the cores the writer and dockerd need."""
        delay = 0.0
        reads = 0
        monotonic = time.monotonic
        while True:
            at_end = self._pump()
            if self._unread:
                await self._measure()
            self._asm.flush_expired(monotonic())
            if self._closing:
                await self._emit()  # complete events only: open ones stay before the checkpoint
                return
            if not at_end:
                delay = 0.0
                if len(self._asm.out) >= self._batch_max:
                    await self._emit()
                else:
                    await asyncio.sleep(0)
                continue
            if self._removed or self._stop_pending:
                removed = self._removed
                self._stop_pending = False
                self._asm.flush()
                await self._emit()
                if removed:
                    return
            elif self._asm.out:
                await self._emit()
            # the poll is a fallback: with inotify it waits at least the floor, after a pass that read data
            # as after one that did not
            first = max(_MIN_IDLE, self._coalesce) if self._watch is not None else _MIN_IDLE
            delay = min(first if self._reads != reads else max(delay * 2, first), self._poll_max)
            reads = self._reads
            await self._idle(delay)

    async def _idle(self, delay: float) -> None:
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    def _pump(self) -> bool:
        """Read one chunk (or move to the next file); True when every known file is read to its end."""
        cur = self._cur
        assert cur is not None
        had_next = bool(self._queue)
        data = os.pread(cur.fd, self._chunk, self._offset)
        if data:
            if not had_next:  # the live file: make sure it was not truncated and refilled under the read
                if not cur.fp:
                    cur.file_id()
                elif fingerprint(cur.fd) != cur.fp:
                    self._truncated(os.fstat(cur.fd).st_size)
                    return False
            self._offset += len(data)
            self._reads += 1
            self._parse(data)
            self._look()
            # a short read of the live file is its end as of now, unless a newer file turned up meanwhile
            return not had_next and len(data) < self._chunk and not self._queue
        if had_next:
            # dockerd never writes to a file after creating its successor, and the successor was known
            # before this read: the file is complete.
            self._next_file()
            return False
        self._look()
        if self._queue:
            return False  # read the current file once more, to its final end, before switching
        self._check_truncated()
        return True

    async def _emit(self) -> None:
        out = self._asm.take()
        if not out:
            return
        await self._hand_over(out, self._checkpoint(), self._batch_max)

    def _checkpoint(self) -> Checkpoint:
        current = self._vbase + self._consumed
        safe = self._asm.safe_position(current)
        assert isinstance(safe, int)
        gen = safe >> GEN_SHIFT
        for g in [g for g in self._gens if g < gen]:
            del self._gens[g]
        f = self._gens.get(gen)
        streams = None
        per = self._asm.safe_positions(current)
        if any(p != safe for p in per.values()):  # one stream shipped past the other's open event
            streams = {}
            for name, p in per.items():
                pf = self._gens.get(int(p) >> GEN_SHIFT)
                if pf is not None:
                    streams[name] = [pf.file_id(), int(p) & OFFSET_MASK]
        return Checkpoint(self.meta.id, safe & OFFSET_MASK, f.file_id() if f is not None else "", streams)

    def _skip_shipped(self) -> None:
        """Resuming from the earliest open event of one stream: skip what the other stream had shipped."""
        cp = self.resume
        if cp is None or not cp.streams:
            return
        by_id = {f.file_id(): f for f in self._gens.values()}
        skip = {}
        for name, (file_id, offset) in cp.streams.items():
            f = by_id.get(file_id)
            if f is not None:  # else that stream is read again from the start: duplicates, never loss
                skip[name] = (f.gen << GEN_SHIFT) | offset
        self._asm.skip_before(skip)

    # --- files -----------------------------------------------------------------------------------------

    def _track(self, f: _LogFile) -> _LogFile:
        f.gen = self._next_gen
        self._next_gen += 1
        self._gens[f.gen] = f
        return f

    def _set_current(self, f: _LogFile, offset: int) -> None:
        self._cur = f
        self._vbase = f.gen << GEN_SHIFT
        self._offset = self._consumed = offset
        self._tail = b""
        self._skip = 0

    async def _open_start(self) -> bool:
        """Open the files and pick where to start; False if the container went away before its log was opened."""
        delay = _MIN_IDLE
        while True:
            chain = open_chain(self.path)
            keeper = self.ctx.keeper
            if chain:
                if keeper is not None:
                    keeper.release(self.path)
                break
            if keeper is not None and (chain := held_chain(keeper.take(self.path))):
                log.info("reading a json-file log held open since dockerd created it container=%s path=%s "
                         "(it was deleted before this reader started)", self._label, self.path)
                break
            if self._closing:
                return False
            if self._removed:  # its log went with it (`--rm`) before this reader got to open it
                events.container_unreadable(self.ctx.metrics, self._label, "gone_before_read",
                                            "removed before its json-file log could be opened (a container "
                                            "run with --rm on a busy host): what it logged is lost")
                return False
            await self._idle(delay)
            delay = min(delay * 2, self._poll_max)
        start, offset = self._resume_point(chain)
        for f in chain[:start]:
            os.close(f.fd)
        self._set_current(self._track(chain[start]), offset)
        for f in chain[start + 1:]:
            self._queue.append(self._track(f))
        if self._unsettled:
            self._settle()  # the count's baseline: every file there now is known
        self._skip_shipped()
        log.debug("reading json-file log container=%s path=%s file=%d/%d offset=%d", self._label, self.path,
                  start + 1, len(chain), offset)
        return True

    def _resume_point(self, chain: list[_LogFile]) -> tuple[int, int]:
        """(index in chain, byte offset) to start from."""
        cp = self.resume
        if cp is not None and isinstance(cp.position, int) and cp.file_id:
            start, offset, gap = find_resume(chain, cp.file_id, cp.position)
            if gap == "truncated":
                # the same first line, but shorter than the checkpoint: cut by something other than dockerd,
                # whose max-file=1 truncation refills the file with other lines. What was past the position
                # cannot be known.
                events.log_gap(self.ctx.metrics, self._label, "truncated", -1, until=first_time(chain[start].fd))
                log.warning("checkpoint is past the end of its file, reading it again from its start container=%s "
                            "file_id=%s offset=%s", self._label, cp.file_id, cp.position)
            elif gap == "rotated_before_read":
                self._checkpoint_gone(chain, cp.file_id, cp.position)
            return start, offset
        if cp is not None:
            log.info("checkpoint is not a json-file position (read mode changed?); applying start_at "
                     "container=%s", self._label)
        if self.ctx.config.docker.start_at is StartAt.BEGINNING:
            self._check_complete(chain)
            return 0, 0
        last = len(chain) - 1
        return last, os.fstat(chain[last].fd).st_size

    def _checkpoint_gone(self, chain: list[_LogFile], file_id: str, position: int) -> None:
        """The checkpoint's file is not among the log files: compressed (measured: exact), or deleted.

        A deleted one held max-size bytes or more (dockerd rotates or truncates a file only then), so with
        the position below max-size at least the difference was lost; files deleted whole after it cannot
        be seen (at least). With the position at max-size or past it, the file was read to its end and
        whether whole files were deleted after it cannot be told: a possible gap.
        """
        fp = file_id.split(":")[2] if file_id.count(":") > 1 else ""
        held = {f.fp for f in chain if f.file_id() and f.fp}
        gz, found = compressed_newer(self.path, fp, held)
        gz.reverse()
        if found is not None:  # compress=true: gzipped before it was read to its end
            self._unread.append(_Unread("compressed_before_read", [found, *gz], position))
            log.warning("checkpoint file was compressed by dockerd before it was read to its end; compressed files "
                        "are not read container=%s file_id=%s offset=%s", self._label, file_id, position)
            return
        until = compressed_first_time(gz[0]) if gz else first_time(chain[0].fd)
        if gz:
            self._unread.append(_Unread("compressed_before_read", gz))
        max_size = self._log_limits()[1]
        lost = max_size - position if max_size else 0
        events.log_gap(self.ctx.metrics, self._label, "rotated_before_read", lost if lost > 0 else -1,
                       1, exact=False, until=until)
        log.warning("checkpoint file no longer exists, starting at the oldest log file container=%s "
                    "file_id=%s offset=%s max_size=%s", self._label, file_id, position, max_size or "unknown")

    def _check_complete(self, chain: list[_LogFile]) -> None:
        """A first read finding gzipped files (not read: measured) or every file dockerd keeps (max-file of
        them: older ones may be gone).

        Gaps when the container started while shipper ran (the reader came too late for a burst), only a
        notice for a container older than shipper, whose rotated-away logs predate it. Whether the oldest
        file found is the container's first cannot be told: dockerd writes before it sets StartedAt (whole
        files in a burst), so neither the first entry's time nor the file's birth tells; a possible gap.
        """
        max_file = self._log_limits()[0]
        started = self.info.started_at or self.info.created
        try:
            started_ns = ts_to_ns(started) if started else 0
        except ValueError:
            started_ns = 0
        if started_ns < _PROCESS_START_NS:
            n_gz = len(compressed_names(self.path))
            if n_gz or (max_file >= 2 and len(chain) + n_gz >= max_file):
                log.info("at the first read of this container its older logs were rotated away or compressed "
                         "(not read) before shipper started container=%s files=%d compressed=%d", self._label,
                         len(chain) + n_gz, n_gz)
            return
        held = {f.fp for f in chain if f.file_id() and f.fp}
        gz, _ = compressed_newer(self.path, "", held)
        gz.reverse()
        files = len(chain) + len(gz)
        full = max_file >= 2 and files >= max_file
        until = (compressed_first_time(gz[0]) if gz else first_time(chain[0].fd)) if full else ""
        if gz:
            self._unread.append(_Unread("compressed_before_read", gz))
        if full:
            events.log_gap(self.ctx.metrics, self._label, "rotated_before_start", -1, since=started, until=until)
            log.warning("at the first read of a new container dockerd kept max-file=%d log files: older ones may "
                        "have been rotated away unread container=%s files=%d compressed=%d", max_file,
                        self._label, files, len(gz))

    def _log_limits(self) -> tuple[int, int]:
        """(max-file, max-size); (0, 0) while hostconfig.json cannot be read."""
        if not self._limits[0]:
            self._limits = log_limits(self.path)
        return self._limits

    def _look(self) -> None:
        """Open the live file if it is one we do not hold yet (dockerd rotated)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # between rename and create, or the container is gone
        last = self._queue[-1] if self._queue else self._cur
        assert last is not None
        if st.st_ino == last.ino and st.st_dev == last.dev:
            if self._unsettled:
                self._settle()
            return
        self._discover(last)

    def _discover(self, last: _LogFile) -> None:
        """Queue every file newer than `last`: the live one and any rotated in between."""
        held = {(f.dev, f.ino) for f in self._queue}
        if self._cur is not None:
            held.add((self._cur.dev, self._cur.ino))
        newer, met = open_newer(self.path, last, held)
        if not newer:
            return
        if not met:
            self._rotated_past(last, newer)
        self._seen += len(newer)
        for f in reversed(newer):
            self._queue.append(self._track(f))
        if len(newer) > 1:
            log.debug("dockerd rotated %d times between two looks container=%s", len(newer), self._label)

    def _rotated_past(self, last: _LogFile, newer: list[_LogFile]) -> None:
        """`last` (held open: read to its end) is no longer among the rotated files: dockerd rotated max-file
        times or more since it was live, or compressed it (compress=true)."""
        held = {f.fp for f in (*newer, *self._queue, self._cur) if f is not None and f.file_id() and f.fp}
        last.file_id()
        gz, found = compressed_newer(self.path, last.fp, held)
        gz.reverse()
        if gz:
            self._seen += len(gz)
            self._unread.append(_Unread("compressed_before_read", gz))
        if found is not None:  # every file since `last` is there, compressed or not: none deleted
            found.close()
            return
        overrun = _Overrun(last_time(last.fd), compressed_first_time(gz[0]) if gz else first_time(newer[-1].fd))
        if self._anchor is not None:
            self._overruns.append(overrun)
            self._unsettled = True  # the next quiet look tells how many files were deleted unread
            return
        events.log_gap(self.ctx.metrics, self._label, "rotation_overrun", -1, since=overrun.since,
                       until=overrun.until)
        log.warning("dockerd rotated the log max-file times or more between two looks: files may have been deleted "
                    "unread, which only inotify's count tells (not available) container=%s", self._label)

    def _count_now(self) -> tuple[int, int] | None:
        """inotify's (overflows, live files created) as of a moment the live file was the newest file known,
        or None (no inotify, or a rotation under way)."""
        if self._watch is None:
            return None
        inst, wd = self._watch
        before = inst.creates(wd, self._live_name)
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        last = self._queue[-1] if self._queue else self._cur
        if last is None or st.st_ino != last.ino or st.st_dev != last.dev:
            return None
        # the kernel shows a new file a moment before it queues its creation, both under the folder's
        # lock: listing the folder takes that lock, so every file the stat could see is counted after it
        try:
            os.listdir(os.path.dirname(self.path))
        except OSError:
            return None
        after = inst.creates(wd, self._live_name)
        return after if after == before else None

    def _settle(self) -> None:
        """At a quiet look: the files dockerd created since the baseline minus those found are the ones
        deleted unread (reported at the overruns waiting), or take the baseline."""
        count = self._count_now()
        if count is None:
            return
        epoch, creates = count
        a = self._anchor
        lost = -1
        if a is not None and a[0] == epoch:
            lost = (creates - a[1]) - (self._seen - a[2]) - self._lost_files
            if lost < 0:
                # more files found than created: a creation not counted yet (see _count_now); the next
                # quiet looks will have it
                now = time.monotonic()
                self._count_due = self._count_due or now + _COUNT_WAIT
                if now < self._count_due:
                    return
        self._count_due = 0.0
        if lost < 0:  # no baseline yet, the kernel's queue overflowed, or a count that does not add up
            for ov in self._overruns:
                events.log_gap(self.ctx.metrics, self._label, "rotation_overrun", -1, since=ov.since, until=ov.until)
            self._anchor, self._lost_files = (epoch, creates, self._seen), 0
        elif lost:
            self._lost(lost)
            self._lost_files += lost
        elif self._overruns:
            log.debug("dockerd rotated max-file times between two looks: no file was deleted unread container=%s",
                      self._label)
        self._overruns.clear()
        self._unsettled = False

    def _lost(self, files: int) -> None:
        """`files` log files were created and deleted between two looks: each held max-size bytes or more."""
        max_size = self._log_limits()[1]
        ovs = self._overruns
        events.log_gap(self.ctx.metrics, self._label, "rotation_overrun", files * (max_size or MIN_ENTRY_BYTES),
                       files, exact=False, since=ovs[0].since if ovs else "", until=ovs[-1].until if ovs else "")
        log.warning("dockerd rotated the log past max-file between two looks: %d file(s) deleted before they could "
                    "be opened, each of max-size=%s bytes or more (reader too slow for max-size/max-file) "
                    "container=%s", files, max_size or "unknown", self._label)

    async def _measure(self) -> None:
        """Measure the compressed files not read (off the loop: decompressing takes a while) and report them."""
        while self._unread:
            u = self._unread.pop(0)
            self._report_unread(u, await asyncio.to_thread(measure_compressed, u.files, u.skip))

    def _report_unread(self, u: _Unread, got: Measured) -> None:
        if got.nbytes or got.lines:
            events.log_gap(self.ctx.metrics, self._label, u.reason, got.nbytes, got.lines, exact=got.whole,
                           since=got.first, until=got.last)
            log.warning("dockerd compressed %d log file(s) before they were read to their end; compressed files are "
                        "not read container=%s", len(u.files), self._label)

    def _last_gaps(self) -> None:
        """The reader ends: settle what waits for the count if it still can, report what waits to be measured."""
        if self._overruns and self._cur is not None and self._cur.fd >= 0:
            self._settle()
        for ov in self._overruns:
            events.log_gap(self.ctx.metrics, self._label, "rotation_overrun", -1, since=ov.since, until=ov.until)
        self._overruns.clear()
        while self._unread:
            u = self._unread.pop(0)
            self._report_unread(u, measure_compressed(u.files, u.skip))

    def _next_file(self) -> None:
        cur = self._cur
        assert cur is not None
        m = self.ctx.metrics
        if self._skip:
            events.line_invalid(m, self._label, "line_too_long", b"")
        elif self._tail:
            events.line_invalid(m, self._label, "incomplete_line", self._tail[:120])
        cur.file_id()  # a checkpoint may still name this file after it is closed
        os.close(cur.fd)
        cur.fd = -1
        self._set_current(self._queue.popleft(), 0)

    def _check_truncated(self) -> None:
        cur = self._cur
        assert cur is not None
        try:
            size = os.fstat(cur.fd).st_size
        except OSError:
            return
        if size >= self._offset:
            # max-file=1: dockerd truncates the live file in place; it may have grown past us again
            if not cur.fp:
                cur.file_id()
                return
            if fingerprint(cur.fd) == cur.fp:
                return
        self._truncated(size)

    def _truncated(self, size: int) -> None:
        """The file was truncated under the reader. dockerd does it with max-file=1 once the file holds max-size
        bytes or more: read that far, nothing was lost (it writes no more to the old content); else at least
        the rest to max-size was. (A second truncation before the reader reads again, max-size more written
        in between, leaves no trace: no file is created, so inotify has nothing to count.) Anyone else's
        truncation loses what cannot be known: a possible gap."""
        cur = self._cur
        assert cur is not None
        max_file, max_size = self._log_limits()
        until = first_time(cur.fd)
        if max_file == 1 and max_size:
            if self._consumed < max_size:
                events.log_gap(self.ctx.metrics, self._label, "truncated", max_size - self._consumed, 1, exact=False,
                               until=until)
            else:
                log.debug("dockerd truncated the log (max-file=1) after it was read to its end container=%s",
                          self._label)
        else:
            events.log_gap(self.ctx.metrics, self._label, "truncated", -1, until=until)
            log.warning("log file was truncated under the reader container=%s size=%d offset=%d",
                        self._label, size, self._offset)
        cur.file_id()  # the old content's identity stays with the old generation
        fresh = _LogFile(cur.fd, cur.dev, cur.ino)
        cur.fd = -1
        self._set_current(self._track(fresh), 0)  # a new generation: positions stay monotonic

    def _close_files(self) -> None:
        for f in [self._cur, *self._queue]:
            if f is not None and f.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
                f.fd = -1
        self._queue.clear()
        for u in self._unread:
            for g in u.files:
                g.close()
        self._unread.clear()
