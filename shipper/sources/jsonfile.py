"""Reads a container's json-file log straight from disk, following dockerd's rotation.

dockerd writes `<id>-json.log`, one JSON object per line (`log`, `stream`, `time`), and with `max-size`
rotates by renaming: the live file becomes `.1`, `.1` becomes `.2` and so on, the oldest past `max-file` is
deleted, and a new live file is created. The reader therefore tracks files by identity (device and inode),
never by name, and keeps every file it knows about open: an open descriptor keeps a renamed or deleted file
readable, so once a file has been seen its data cannot be lost (the approach of Filebeat's harvesters).
inotify on the folder wakes the reader on every write and rotation (polling is the fallback), and while
busy it stat's the path every few hundred lines, so a new live file is opened almost as soon as it appears;
if dockerd rotates several times between two looks, the files in between are found among `.1 .. .N` by
identity. Only a file created and deleted entirely between two looks is lost: that is a gap, counted and
logged (`shipper_log_gap_total`), as is a truncation or a checkpoint whose file no longer exists. Gap
reasons: `rotated_before_read` (the checkpoint's file is gone), `rotation_overrun` (dockerd rotated
max-file times or more between two looks: the file system cannot tell whether a whole file was lost, so it
is reported as possible), `rotated_before_start` (a container started while shipper ran had all max-file
files at its first read: the oldest may be gone), `compressed_before_read` (with `compress=true`, files
rotated and gzipped before they were seen: compressed files are not read), `truncated` (also max-file=1,
where dockerd truncates the live file in place, noticed by its first line changing).

Positions given to the assembler are "virtual": the file's generation in the upper bits, the byte offset
in the lower 40. They only grow, across rotations too, so the assembler's `safe_position` may compare
them, and the checkpoint of a batch names the file its offset belongs to (dev:ino and a checksum of its
first line, since rotation reuses inodes at once) even when an open multi-line event began in a file that
has since rotated. Resuming finds that file among the rotated ones,
finishes it and the newer ones oldest first, then follows the live file.

The hot loop is batch-shaped: one `os.pread` per chunk, `bytes.split`, then per line one `orjson.loads`
and one `assembler.add`; everything unusual (invalid JSON or UTF-8, NUL padding, missing keys) leaves the
loop through an exception and is classified off the fast path. Compressed rotated files (`compress=true`)
are not read: a file already open is read whole before dockerd's gzip copy replaces it, and one that was
never opened is a gap (found by the checksum of its first line inside the `.gz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gzip
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from shipper.config import StartAt
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint
from shipper.sources.api import ts_to_ns
from shipper.sources.base import LogSource, SourceContext
from shipper.telemetry import events

log = logging.getLogger("shipper.sources.jsonfile")

GEN_SHIFT = 40  # offsets below 1 TiB; the generation of the file above
OFFSET_MASK = (1 << GEN_SHIFT) - 1
# dockerd writes at most 16 KiB of text per entry; JSON escaping can grow that 6-fold, plus the keys and
# attributes. A longer line is not an entry dockerd wrote: it is skipped without being held in memory whole.
MAX_ENTRY_BYTES = 256 * 1024
MAX_ROTATED = 10_000  # safety bound on the `.N` names probed
_BAD = (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError)
_MIN_IDLE = 0.005
# the path is checked for a new live file after this many lines: a 64 KiB file rotates in ~2 ms in a burst,
# and a file must be opened before max-file rotations delete it
_LOOK_EVERY = 256
FINGERPRINT_BYTES = 4096
_PROCESS_START_NS = time.time_ns() - 1_000_000_000  # containers started after this are ours to have read


@dataclass(slots=True)
class _LogFile:
    fd: int
    dev: int
    ino: int
    gen: int = 0
    fp: str = ""  # checksum of the first line, "" until it has one

    def file_id(self) -> str:
        """dev:ino, plus a checksum of the first line once there is one.

        dockerd's rotation deletes a file and creates the next at once, so the file system hands the freed
        inode straight to the new file: dev:ino alone would let a checkpoint of a deleted file seek into
        its successor. The first line carries a nanosecond timestamp, which tells them apart.
        """
        if not self.fp and self.fd >= 0:
            self.fp = fingerprint(self.fd)
        return f"{self.dev}:{self.ino}:{self.fp}" if self.fp else f"{self.dev}:{self.ino}"


def fingerprint(fd: int) -> str:
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[:nl + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return ""  # the first line is not written whole yet
    return f"{zlib.crc32(head):08x}"


def _open(name: str) -> _LogFile | None:
    """Open a log file read-only; None when it does not exist (mid-rotation or not created yet)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    st = os.fstat(fd)
    return _LogFile(fd, st.st_dev, st.st_ino)


def json_log_path(info: ContainerInfo, data_root: str) -> str:
    """Where dockerd keeps a container's json-file log (inspect's LogPath when discovery had it)."""
    cid = info.meta.id
    return info.log_path or os.path.join(data_root, "containers", cid, f"{cid}-json.log")


class JsonFileSource(LogSource):
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

    # --- parsing ---------------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Hand every complete entry of `data` (plus the kept tail) to the assembler."""
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                self._skip += len(data)
                return
            self._skip += nl + 1
            events.line_invalid(self.ctx.metrics, self._label, "line_too_long", data[:nl][-120:])
            self._consumed += self._skip
            self._skip = 0
            data = data[nl + 1:]
        if self._tail:
            data = self._tail + data
        pos = self._vbase + self._consumed
        lines = data.split(b"\n")
        tail = lines.pop()
        m = self.ctx.metrics
        m.inc("shipper_entries_read_total", len(lines), container=self._label)
        m.inc("shipper_bytes_read_total", len(data) - len(tail), container=self._label)
        if len(data) > MAX_ENTRY_BYTES and lines and max(map(len, lines)) > MAX_ENTRY_BYTES:
            self._parse_careful(lines, pos)
        else:
            add = self._asm.add
            loads = orjson.loads
            n = len(lines)
            for start in range(0, n, _LOOK_EVERY):
                if start:
                    self._look()
                for line in lines[start:start + _LOOK_EVERY] if n > _LOOK_EVERY else lines:
                    try:
                        d = loads(line)
                        add(d["time"], d["stream"], d["log"], pos)
                    except _BAD:
                        if not self._bad(line, pos):
                            raise
                    pos += len(line) + 1
        self._consumed += len(data) - len(tail)
        if len(tail) > MAX_ENTRY_BYTES:
            self._skip = len(tail)
            self._tail = b""
        else:
            self._tail = tail

    def _parse_careful(self, lines: list[bytes], pos: int) -> None:
        """The loop for a chunk holding an over-long line (only with read_chunk_bytes > MAX_ENTRY_BYTES)."""
        for line in lines:
            if len(line) > MAX_ENTRY_BYTES:
                events.line_invalid(self.ctx.metrics, self._label, "line_too_long", line[:120])
            else:
                try:
                    self._add(orjson.loads(line), pos)
                except _BAD:
                    if not self._bad(line, pos):
                        raise
            pos += len(line) + 1

    def _add(self, d: Any, pos: int) -> None:
        self._asm.add(d["time"], d["stream"], d["log"], pos)

    def _bad(self, line: bytes, pos: int) -> bool:
        """Count and skip a line the fast path refused; False when the line was fine (so the error is ours).

        Leading NUL bytes are what a crash leaves where the file system had allocated but not written:
        the padding is counted and an entry behind it is still delivered.
        """
        m = self.ctx.metrics
        stripped = line.lstrip(b"\x00")
        if len(stripped) != len(line):
            events.line_invalid(m, self._label, "nul_bytes", line[:120])
            if not stripped:
                return True
            line = stripped  # its position stays the padding's start: a re-read strips it again
            reason, d = _classify(line)
            if reason is None:
                self._add(d, pos)
                return True
        else:
            reason, d = _classify(line)
            if reason is None:
                return False
        events.line_invalid(m, self._label, reason, line[:120])
        return True

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

    def _open_newest_first(self) -> Iterator[_LogFile]:
        """Open the live file (if there is one), then `.1`, `.2` ... up to the first missing one."""
        f = _open(self.path)
        if f is not None:
            yield f
        for i in range(1, MAX_ROTATED):
            f = _open(f"{self.path}.{i}")
            if f is None:
                return
            yield f

    def _open_chain(self) -> list[_LogFile]:
        """Every log file of the container, oldest first, all opened.

        Newest first, so a rotation during the listing can only show a file twice (dropped), never hide
        one: the files not yet opened move to higher numbers, where they are still found.
        """
        found: list[_LogFile] = []
        keys: set[tuple[int, int]] = set()
        for f in self._open_newest_first():
            if (f.dev, f.ino) in keys:
                os.close(f.fd)
                continue
            keys.add((f.dev, f.ino))
            found.append(f)
        found.reverse()
        return found

    async def _open_start(self) -> bool:
        """Open the files and pick where to start; False if the container went away before its log existed."""
        delay = _MIN_IDLE
        while True:
            chain = self._open_chain()
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
        m = self.ctx.metrics
        if cp is not None and isinstance(cp.position, int) and cp.file_id:
            dev_ino, _, fp = cp.file_id.rpartition(":") if cp.file_id.count(":") > 1 else (cp.file_id, "", "")
            for i, f in enumerate(chain):
                if f"{f.dev}:{f.ino}" != dev_ino or (fp and fingerprint(f.fd) != fp):
                    continue
                size = os.fstat(f.fd).st_size
                if cp.position > size:
                    events.log_gap(m, self._label, "truncated", -1)
                    return i, 0
                if cp.position == 0 or os.pread(f.fd, 1, cp.position - 1) == b"\n":
                    return i, cp.position
                break  # same inode, other content: the saved file is gone and its inode reused
            events.log_gap(m, self._label, "rotated_before_read", -1)
            log.warning("checkpoint file no longer exists, starting at the oldest log file container=%s "
                        "file_id=%s offset=%s", self._label, cp.file_id, cp.position)
            return 0, 0
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
        gz = 0
        while os.path.exists(f"{self.path}.{gz + 1}.gz"):
            gz += 1
        max_file = _max_file(os.path.join(os.path.dirname(self.path), "hostconfig.json"))
        if gz:
            reason = "compressed_before_read"
        elif max_file >= 2 and len(chain) >= max_file:
            reason = "rotated_before_start"
        else:
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
        newer: list[_LogFile] = []
        met = False
        for f in self._open_newest_first():
            key = (f.dev, f.ino)
            if key == (last.dev, last.ino):
                os.close(f.fd)
                met = True
                break
            if key in held or any(key == (n.dev, n.ino) for n in newer):
                os.close(f.fd)
                continue
            newer.append(f)
        if not newer:
            return
        if not met:
            at = self._find_compressed(last)
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

    def _find_compressed(self, f: _LogFile) -> int:
        """N when `f` (open, renamed away) is now `.N.gz` (dockerd's compress=true), else -1."""
        fp = f.file_id() and f.fp
        if not fp:
            return -1
        for i in range(1, MAX_ROTATED):
            name = f"{self.path}.{i}.gz"
            if not os.path.exists(name):
                return -1
            if gz_fingerprint(name) == fp:
                return i
        return -1

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


def gz_fingerprint(name: str) -> str:
    """`fingerprint` of a file dockerd compressed (its first line, uncompressed)."""
    try:
        with gzip.open(name, "rb") as g:
            head = g.read(FINGERPRINT_BYTES)
    except (OSError, EOFError, zlib.error):
        return ""  # being written, or gone
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[:nl + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return ""
    return f"{zlib.crc32(head):08x}"


def _max_file(hostconfig: str) -> int:
    """The container's max-file from dockerd's hostconfig.json (0 when unknown)."""
    try:
        with open(hostconfig, "rb") as f:
            return int(orjson.loads(f.read())["LogConfig"]["Config"].get("max-file") or 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def _classify(line: bytes) -> tuple[str | None, Any]:
    """Why a line is not a json-file entry (None: it is one), and the parsed object."""
    if not line.strip():
        return "empty_line", None
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8", None
        if b"\x00" in line:
            return "nul_bytes", None
        return "invalid_json", None
    if not isinstance(d, dict):
        return "not_an_object", None
    for key in ("log", "stream", "time"):
        if key not in d:
            return "missing_field", None
        if not isinstance(d[key], str):
            return "wrong_type", None
    return None, d


# --- inotify ------------------------------------------------------------------------------------------

IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_WATCH_MASK = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_EVENT = struct.Struct("iIII")


class _Inotify:
    """One inotify instance per event loop, shared by every reader: a write or a rotation wakes the reader
    at once instead of at its next poll, which is what lets it open a new file before a burst rotates it
    away. Optional: without inotify (not Linux, instance limit reached) readers poll as before."""

    _instances: dict[asyncio.AbstractEventLoop, _Inotify] = {}
    _unavailable = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self._callbacks: dict[int, list[Callable[[], None]]] = {}
        loop.add_reader(fd, self._ready)

    @classmethod
    def watch(cls, folder: str, callback: Callable[[], None]) -> tuple[_Inotify, int] | None:
        if cls._unavailable:
            return None
        loop = asyncio.get_running_loop()
        inst = cls._instances.get(loop)
        try:
            if inst is None:
                inst = cls._instances[loop] = cls(loop)
            wd = inst._libc.inotify_add_watch(inst._fd, os.fsencode(folder), _WATCH_MASK)
        except (OSError, AttributeError) as e:
            cls._unavailable = isinstance(e, AttributeError)
            log.debug("inotify not available, polling log files error=%r", e)
            return None
        if wd < 0:
            log.debug("inotify watch failed, polling folder=%s errno=%d", folder, ctypes.get_errno())
            if not inst._callbacks:
                inst._close()
            return None
        inst._callbacks.setdefault(wd, []).append(callback)
        return inst, wd

    def unwatch(self, wd: int, callback: Callable[[], None]) -> None:
        cbs = self._callbacks.get(wd)
        if cbs is not None:
            with contextlib.suppress(ValueError):
                cbs.remove(callback)
            if not cbs:
                del self._callbacks[wd]
                self._libc.inotify_rm_watch(self._fd, wd)
        if not self._callbacks:
            self._close()

    def _close(self) -> None:
        if self._instances.get(self._loop) is self:
            del self._instances[self._loop]
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _ready(self) -> None:
        woken: set[int] = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, off)
                off += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    woken.update(self._callbacks)
                elif mask & IN_IGNORED:
                    self._callbacks.pop(wd, None)  # the folder is gone; the kernel dropped the watch
                else:
                    woken.add(wd)
        for wd in woken:
            for cb in list(self._callbacks.get(wd, ())):
                cb()
