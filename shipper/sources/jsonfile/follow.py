"""Following one container's json-file log: the reader's lifecycle, its loop, and its checkpoints.

Positions given to the assembler are "virtual": the file's generation in the upper bits, the byte offset
in the lower 40. They only grow, across rotations too, so the assembler's `safe_position` may compare
them, and the checkpoint of a batch names the file its offset belongs to (dev:ino and a checksum of its
first line, since rotation reuses inodes at once) even when an open multi-line event began in a file that
has since rotated. Resuming finds that file among the rotated ones, finishes it and the newer ones oldest
first, then follows the live file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque

from shipper.config import StartAt
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint
from shipper.sources.api import ts_to_ns
from shipper.sources.base import LogSource, SourceContext
from shipper.sources.jsonfile.inotify import _Inotify
from shipper.sources.jsonfile.parse import _Parser
from shipper.sources.jsonfile.rotation import (
    _LogFile,
    find_compressed,
    find_resume,
    fingerprint,
    first_read_gap,
    json_log_path,
    open_chain,
    open_newer,
)
from shipper.telemetry import events

log = logging.getLogger("shipper.sources.jsonfile")

GEN_SHIFT = 40  # offsets below 1 TiB; the generation of the file above
OFFSET_MASK = (1 << GEN_SHIFT) - 1
_MIN_IDLE = 0.005
_PROCESS_START_NS = time.time_ns() - 1_000_000_000  # containers started after this are ours to have read


class JsonFileSource(_Parser, LogSource):
    """Reads one container's json-file log; parsing the chunks it reads is `_Parser`'s (parse.py)."""

    def __init__(self, info: ContainerInfo, ctx: SourceContext, resume: Checkpoint | None) -> None:
        super().__init__(info, ctx, resume)
        cfg = ctx.config
        self.path = json_log_path(info, cfg.docker.data_root)
        self._chunk = cfg.input.read_chunk_bytes
        self._batch_max = cfg.input.batch_max_events
        self._poll_max = max(cfg.docker.poll_interval_secs, _MIN_IDLE)
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

    def _has_reader(self) -> bool:
        return self._cur is not None

    async def run(self) -> None:
        self._running = True
        try:
            if await self._open_start():
                self._watch = _Inotify.watch(os.path.dirname(self.path), self._changed)
                await self._follow()
        finally:
            self._running = False
            if self._watch is not None:
                self._watch[0].unwatch(self._watch[1], self._changed)
                self._watch = None
            self._close_files()
            self._done.set()

    def _changed(self) -> None:
        """inotify: the folder changed. Open a new live file at once, even while a push is waiting."""
        self._wake.set()
        if self._cur is not None and self._cur.fd >= 0:
            try:
                self._look()
            except OSError as e:
                log.debug("looking for a rotated log failed container=%s error=%r", self._label, e)

    # --- the loop --------------------------------------------------------------------------------------

    async def _follow(self) -> None:
        delay = 0.0
        monotonic = time.monotonic
        while True:
            at_end = self._pump()
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
            delay = min(max(delay * 2, _MIN_IDLE), self._poll_max)
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
            self._parse(data)
            self._look()
            return False
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
        cp = self._checkpoint()
        meta = self.meta
        self.ctx.metrics.inc("shipper_events_read_total", len(out), container=self._label)
        n = self._batch_max
        self._emitting = True
        if len(out) <= n:
            await self.ctx.emit(Batch(meta, out, cp))
        else:
            for i in range(0, len(out), n):
                last = i + n >= len(out)
                await self.ctx.emit(Batch(meta, out[i:i + n], cp if last else None))
        self._emitting = False

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
        """Open the files and pick where to start; False if the container went away before its log existed."""
        delay = _MIN_IDLE
        while True:
            chain = open_chain(self.path)
            if chain:
                break
            if self._removed or self._closing:
                return False
            await self._idle(delay)
            delay = min(delay * 2, self._poll_max)
        start, offset = self._resume_point(chain)
        for f in chain[:start]:
            os.close(f.fd)
        self._set_current(self._track(chain[start]), offset)
        for f in chain[start + 1:]:
            self._queue.append(self._track(f))
        self._skip_shipped()
        log.debug("reading json-file log container=%s path=%s file=%d/%d offset=%d", self._label, self.path,
                  start + 1, len(chain), offset)
        return True

    def _resume_point(self, chain: list[_LogFile]) -> tuple[int, int]:
        """(index in chain, byte offset) to start from."""
        cp = self.resume
        if cp is not None and isinstance(cp.position, int) and cp.file_id:
            start, offset, gap = find_resume(chain, cp.file_id, cp.position)
            if gap is not None:
                events.log_gap(self.ctx.metrics, self._label, gap, -1)
            if gap == "rotated_before_read":
                log.warning("checkpoint file no longer exists, starting at the oldest log file container=%s "
                            "file_id=%s offset=%s", self._label, cp.file_id, cp.position)
            return start, offset
        if cp is not None:
            log.info("checkpoint is not a json-file position (read mode changed?); applying start_at "
                     "container=%s", self._label)
        if self.ctx.config.docker.start_at is StartAt.BEGINNING:
            self._check_complete(chain)
            return 0, 0
        last = len(chain) - 1
        return last, os.fstat(chain[last].fd).st_size

    def _check_complete(self, chain: list[_LogFile]) -> None:
        """A first read finding every file dockerd keeps (max-file of them), or gzipped ones: older logs may
        be gone or are compressed (not read).

        A gap when the container started while shipper ran (the reader came too late for a burst); only a
        notice for a container older than shipper, whose rotated-away logs predate it.
        """
        reason, gz = first_read_gap(self.path, len(chain))
        if reason is None:
            return
        started = self.info.started_at or self.info.created
        try:
            started_ns = ts_to_ns(started) if started else 0
        except ValueError:
            started_ns = 0
        if started_ns >= _PROCESS_START_NS:
            events.log_gap(self.ctx.metrics, self._label, reason, -1)
            log.warning("at the first read of a new container its older logs were already rotated away or "
                        "compressed (not read) container=%s files=%d compressed=%d", self._label,
                        len(chain), gz)
        else:
            log.info("at the first read of this container its older logs were rotated away or compressed "
                     "(not read) before shipper started container=%s files=%d compressed=%d", self._label,
                     len(chain), gz)

    def _look(self) -> None:
        """Open the live file if it is one we do not hold yet (dockerd rotated)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # between rename and create, or the container is gone
        last = self._queue[-1] if self._queue else self._cur
        assert last is not None
        if st.st_ino == last.ino and st.st_dev == last.dev:
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
            at = find_compressed(self.path, last)
            if at > 1:
                # `compress=true`: the files between were rotated and gzipped before they were seen
                events.log_gap(self.ctx.metrics, self._label, "compressed_before_read", -1)
                log.warning("dockerd rotated and compressed %d log files between two looks; compressed files "
                            "are not read container=%s", at - 1, self._label)
            elif at < 0:
                # `last` is no longer among the rotated files: dockerd rotated max-file times or more since
                # it was live. Exactly max-file times loses nothing, more loses whole files; the file
                # system cannot tell the two apart, so it is reported as a possible gap, never kept quiet.
                events.log_gap(self.ctx.metrics, self._label, "rotation_overrun", -1)
                log.warning("dockerd rotated the log max-file times or more between two looks: a file may "
                            "have been deleted unread (reader too slow for max-size/max-file) container=%s",
                            self._label)
        for f in reversed(newer):
            self._queue.append(self._track(f))
        if len(newer) > 1:
            log.debug("dockerd rotated %d times between two looks container=%s", len(newer), self._label)

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
        cur = self._cur
        assert cur is not None
        events.log_gap(self.ctx.metrics, self._label, "truncated", -1)
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
