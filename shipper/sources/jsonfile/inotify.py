"""Linux inotify through ctypes (the standard library has no binding): wakes json-file readers when their
folder changes.

Without it a reader notices a write or a rotation only at its next poll, and in that time a burst can
rotate a file past max-file, deleted unread. With it the reader opens the new live file at once, and can
count the live files dockerd created (`creates`): the file system alone cannot tell max-file rotations
between two looks (nothing lost) from more (whole files deleted unread); the count can.
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
        self._creates: dict[tuple[int, bytes], int] = {}  # (wd, name) -> IN_CREATE events, for names counted
        self.overflows = 0  # IN_Q_OVERFLOW seen: counts from before one are not comparable with later ones
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
            self._loop.call_soon(self._wake, woken)
        return self.overflows, self._creates.get((wd, os.fsencode(name)), 0)

    def unwatch(self, wd: int, callback: Callable[[], None]) -> None:
        cbs = self._callbacks.get(wd)
        if cbs is not None:
            with contextlib.suppress(ValueError):
                cbs.remove(callback)
            if not cbs:
                del self._callbacks[wd]
                self._forget(wd)
                self._libc.inotify_rm_watch(self._fd, wd)
        if not self._callbacks:
            self._close()

    def _forget(self, wd: int) -> None:
        for key in [k for k in self._creates if k[0] == wd]:
            del self._creates[key]  # the kernel may hand the number to another folder

    def _close(self) -> None:
        if self._instances.get(self._loop) is self:
            del self._instances[self._loop]
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1  # its number may be reused by any file opened from now on

    def _ready(self) -> None:
        self._wake(self._read())

    def _read(self) -> set[int]:
        """Read every queued event, count the creations asked for; the watches with news."""
        woken: set[int] = set()
        counted = self._creates
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, off)
                if mask & IN_CREATE and counted:
                    start = off + _EVENT.size
                    key = (wd, data[start:start + size].split(b"\0", 1)[0])
                    if key in counted:
                        counted[key] += 1
                off += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    woken.update(self._callbacks)
                elif mask & IN_IGNORED:
                    self._callbacks.pop(wd, None)  # the folder is gone; the kernel dropped the watch
                    self._forget(wd)
                else:
                    woken.add(wd)
        return woken

    def _wake(self, woken: set[int]) -> None:
        for wd in woken:
            for cb in list(self._callbacks.get(wd, ())):
                cb()
