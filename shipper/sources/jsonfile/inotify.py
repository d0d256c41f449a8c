"""Linux inotify through ctypes (the standard library has no binding): wakes json-file readers when their
folder changes.

Without it a reader notices a write or a rotation only at its next poll, and in that time a burst can
rotate a file past max-file, deleted unread. With it the reader opens the new live file at once, and can
count the live files dockerd created (`creates`): the file system alone cannot tell max-file rotations
between two looks (nothing lost) from more (whole files deleted unread); the count can.

Writes are another matter: dockerd writes every log line with a write of its own, and a reader woken for
each would spend a core chasing a container that logs as fast as it can, on the cores that container and
dockerd need. So a folder's entries (create, rename, delete: a rotation) and its writes are watched by two
kernel instances: the first is read as soon as the event loop can, the second at most every
`[docker] read_coalesce_secs` (after a read it is left unread that long; the kernel folds the writes to
one file meanwhile into one event). A write to a quiet file still wakes its reader at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import struct
from collections.abc import Callable

log = logging.getLogger("shipper.sources.jsonfile")

IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_ENTRIES_MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_WRITES_MASK = IN_MODIFY
_EVENT = struct.Struct("iIII")

Callback = Callable[[bool], None]  # called with True when the folder's entries changed, False for a write


class _Inotify:
    """One pair of inotify instances per event loop, shared by every reader: a rotation wakes the reader at
    once instead of at its next poll, which is what lets it open a new file before a burst rotates it away;
    a write wakes it at once too, then not again before `write_floor` seconds (see the module docstring).
    Optional: without inotify (not Linux, instance limit reached) readers poll as before."""

    _instances: dict[asyncio.AbstractEventLoop, _Inotify] = {}
    _unavailable = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._wfd = -1
        self._fd = self._init()  # the folders' entries: read at once
        try:
            self._wfd = self._init()  # writes to the files in them: read at most every write_floor
        except OSError:
            self._close()
            raise
        self._callbacks: dict[int, list[Callback]] = {}  # entries wd -> the readers of that folder
        self._floors: dict[Callback, float] = {}  # each reader's write floor; the smallest applies
        self._writes_wd: dict[int, int] = {}  # entries wd -> writes wd of the same folder
        self._entries_wd: dict[int, int] = {}  # and back
        self._creates: dict[tuple[int, bytes], int] = {}  # (wd, name) -> IN_CREATE events, for names counted
        self._resume: asyncio.TimerHandle | None = None  # writes left unread until then
        self.overflows = 0  # IN_Q_OVERFLOW seen: counts from before one are not comparable with later ones
        self.write_wakes = 0  # reads of the writes instance that woke readers: what the floor bounds
        loop.add_reader(self._fd, self._ready)
        loop.add_reader(self._wfd, self._writes_ready)

    def _init(self) -> int:
        fd = int(self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        return fd

    @property
    def write_floor(self) -> float:
        """Seconds the writes instance stays unread after a read: the smallest floor of its readers."""
        return min(self._floors.values(), default=0.0)

    @classmethod
    def watch(cls, folder: str, callback: Callback, write_floor: float = 0.0) -> tuple[_Inotify, int] | None:
        """Watch `folder` for `callback`: (instance, the entries watch's wd), or None (poll instead)."""
        if cls._unavailable:
            return None
        loop = asyncio.get_running_loop()
        inst = cls._instances.get(loop)
        try:
            if inst is None:
                inst = cls._instances[loop] = cls(loop)
            path = os.fsencode(folder)
            wd = inst._libc.inotify_add_watch(inst._fd, path, _ENTRIES_MASK)
            wwd = inst._libc.inotify_add_watch(inst._wfd, path, _WRITES_MASK) if wd >= 0 else -1
        except (OSError, AttributeError) as e:
            cls._unavailable = isinstance(e, AttributeError)
            log.debug("inotify not available, polling log files error=%r", e)
            return None
        if wwd < 0:
            log.debug("inotify watch failed, polling folder=%s errno=%d", folder, ctypes.get_errno())
            if wd >= 0 and wd not in inst._callbacks:
                inst._libc.inotify_rm_watch(inst._fd, wd)
            if not inst._callbacks:
                inst._close()
            return None
        inst._callbacks.setdefault(wd, []).append(callback)
        inst._floors[callback] = max(write_floor, 0.0)
        inst._writes_wd[wd] = wwd
        inst._entries_wd[wwd] = wd
        return inst, wd

    def count_creates(self, wd: int, name: str) -> None:
        """Count from now on the files created as `name` in the folder of `wd` (see `creates`)."""
        self._creates.setdefault((wd, os.fsencode(name)), 0)

    def creates(self, wd: int, name: str) -> tuple[int, int]:
        """(overflows, files created as `name` since `count_creates`), every event queued so far read first.

        The kernel queues an event within the call that changed the folder (a new file can be seen a moment
        before its event is queued: the reader's `_count_now` waits that out), so the count is exact as of
        now unless the queue overflowed (the first number changed: counts before and after it cannot be
        compared). The events read here wake their readers on the loop's next turn, never from inside this
        call.
        """
        woken = self._read()
        if woken:
            self._loop.call_soon(self._wake, woken, True)
        return self.overflows, self._creates.get((wd, os.fsencode(name)), 0)

    def unwatch(self, wd: int, callback: Callback) -> None:
        self._floors.pop(callback, None)
        cbs = self._callbacks.get(wd)
        if cbs is not None:
            with contextlib.suppress(ValueError):
                cbs.remove(callback)
            if not cbs:
                del self._callbacks[wd]
                self._forget(wd)
                self._libc.inotify_rm_watch(self._fd, wd)
                wwd = self._writes_wd.pop(wd, None)
                if wwd is not None and self._entries_wd.pop(wwd, None) is not None:
                    self._libc.inotify_rm_watch(self._wfd, wwd)
        if not self._callbacks:
            self._close()

    def _forget(self, wd: int) -> None:
        for key in [k for k in self._creates if k[0] == wd]:
            del self._creates[key]  # the kernel may hand the number to another folder

    def _close(self) -> None:
        if self._instances.get(self._loop) is self:
            del self._instances[self._loop]
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for fd in (self._fd, self._wfd):
            if fd < 0:
                continue
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._wfd = -1  # their numbers may be reused by any file opened from now on

    def _ready(self) -> None:
        self._wake(self._read(), True)

    def _writes_ready(self) -> None:
        """Writes: wake their readers, then leave the writes instance unread for `write_floor`."""
        woken = self._read_writes()
        floor = self.write_floor
        if floor > 0 and self._wfd >= 0:
            self._loop.remove_reader(self._wfd)
            self._resume = self._loop.call_later(floor, self._resume_writes)
        if woken:
            self.write_wakes += 1
            self._wake(woken, False)

    def _resume_writes(self) -> None:
        self._resume = None
        if self._wfd >= 0:
            self._loop.add_reader(self._wfd, self._writes_ready)

    def _events(self, fd: int) -> list[tuple[int, int, bytes]]:
        """Every event queued on `fd`: (wd, mask, name)."""
        out = []
        while fd >= 0:
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, off)
                start = off + _EVENT.size
                out.append((wd, mask, data[start:start + size] if mask & IN_CREATE else b""))
                off = start + size
        return out

    def _read(self) -> set[int]:
        """Read every queued entries event, count the creations asked for; the watches with news."""
        woken: set[int] = set()
        counted = self._creates
        for wd, mask, name in self._events(self._fd):
            if mask & IN_CREATE and counted:
                key = (wd, name.split(b"\0", 1)[0])
                if key in counted:
                    counted[key] += 1
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                woken.update(self._callbacks)
            elif mask & IN_IGNORED:
                self._callbacks.pop(wd, None)  # the folder is gone; the kernel dropped the watch
                self._forget(wd)
                wwd = self._writes_wd.pop(wd, None)
                if wwd is not None:
                    self._entries_wd.pop(wwd, None)
            else:
                woken.add(wd)
        return woken

    def _read_writes(self) -> set[int]:
        """Read every queued write event; the entries watches of the folders written to. An overflow here
        loses nothing (writes are not counted): it wakes every reader."""
        woken: set[int] = set()
        for wwd, mask, _ in self._events(self._wfd):
            if mask & IN_Q_OVERFLOW:
                woken.update(self._callbacks)
            elif mask & IN_IGNORED:
                self._entries_wd.pop(wwd, None)
            elif (wd := self._entries_wd.get(wwd)) is not None:
                woken.add(wd)
        return woken

    def _wake(self, woken: set[int], entries: bool) -> None:
        for wd in woken:
            for cb in list(self._callbacks.get(wd, ())):
                cb(entries)
