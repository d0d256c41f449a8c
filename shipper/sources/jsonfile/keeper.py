"""Holds every new container's json-file log open from the moment dockerd creates it.

A container run with `--rm` that logs a few lines and exits is removed by dockerd, log and all, a moment later.
Its reader starts only once discovery has handled its start event, which on a busy host (a loaded dockerd, an
event loop busy reading) can come after the removal: the lines were lost. The keeper closes that window. A
thread of its own, blocked on inotify, watches Docker's containers folder: when a container's folder appears
it watches that folder, and when dockerd creates the container's `<id>-json.log` it opens it within
microseconds, whatever the event loop is doing. A file that is deleted while open stays readable to the end,
so a reader that finds the log gone takes the keeper's descriptors instead (`take`), and reads it whole.

A log that a reader opened by its path is of no more use here (`release`); one nobody asked for is closed
after `hold_secs`, and no more than `max_held` are held (the oldest is closed first), so the descriptors and
the disk space of deleted logs stay bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shipper.sources.jsonfile.inotify import _EVENT, IN_CLOEXEC, IN_CREATE, IN_IGNORED, IN_MOVED_TO, IN_Q_OVERFLOW

log = logging.getLogger("shipper.sources.jsonfile")

IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
LOG_SUFFIX = "-json.log"


@dataclass
class _Held:
    """The live files dockerd created for one container's log, in creation order (a rotation adds one)."""

    fds: list[int] = field(default_factory=list)
    since: float = 0.0  # monotonic: when the first was opened


class LogKeeper:
    def __init__(self, data_root: str, hold_secs: float = 60.0, max_held: int = 2048,
                 wanted: Callable[[str], bool] | None = None) -> None:
        self.folder = os.path.join(data_root, "containers")
        self.wanted = wanted  # which containers' logs to hold, by id (a worker's share); None: all
        self.hold_secs = hold_secs
        self.max_held = max_held
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}  # log path -> its open files
        self._released: set[str] = set()  # paths a reader opened itself: not opened again
        self._dirs: dict[int, str] = {}  # watch descriptor -> container folder
        self._fd = -1
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None
        self.opened = 0  # logs opened, for tests and debugging
        self.taken = 0

    # --- the event loop's side ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Start watching; False (and readers work as before) when inotify or the folder cannot be used."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(IN_CLOEXEC))
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        except (OSError, AttributeError) as e:
            log.info("json-file logs are not held open from their creation (no inotify: %r): a container "
                     "removed before its start event is handled may go unread", e)
            return False
        self._libc, self._fd = libc, fd
        if self._add_watch(self.folder, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0:
            log.info("json-file logs are not held open from their creation: cannot watch %s (errno %d): a "
                     "container removed before its start event is handled may go unread", self.folder,
                     ctypes.get_errno())
            os.close(fd)
            self._fd = -1
            return False
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="shipper-log-keeper", daemon=True)
        self._thread.start()
        return True  # containers there before: their logs exist, and their readers open them by path

    def take(self, path: str) -> list[int]:
        """The open files of the log at `path`, oldest first, now the caller's to close; [] if none."""
        with self._lock:
            held = self._held.pop(path, None)
            self._released.add(path)
        if held is None:
            return []
        self.taken += 1
        return held.fds

    def has(self, path: str) -> bool:
        with self._lock:
            return path in self._held

    def release(self, path: str) -> None:
        """A reader opened `path` itself: what is held of it is closed, and it is not opened again."""
        with self._lock:
            held = self._held.pop(path, None)
            self._released.add(path)
            if len(self._released) > 4 * self.max_held:
                self._released.clear()  # only saves re-opening the logs of readers already running
        if held is not None:
            _close_all(held.fds)

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
        with self._lock:
            held, self._held = self._held, {}
        for h in held.values():
            _close_all(h.fds)

    # --- the thread ---------------------------------------------------------------------------------------

    def _add_watch(self, folder: str, mask: int) -> int:
        return int(self._libc.inotify_add_watch(self._fd, os.fsencode(folder), mask))

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll(1000)}
            if self._stop_r in ready:
                return
            if self._fd in ready:
                try:
                    data = os.read(self._fd, 65536)
                except OSError as e:
                    log.warning("json-file log keeper stopped: cannot read inotify error=%r", e)
                    return
                self._events(data)
            self._expire(time.monotonic())

    def _events(self, data: bytes) -> None:
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _, size = _EVENT.unpack_from(data, off)
            name = data[off + _EVENT.size:off + _EVENT.size + size].rstrip(b"\0").decode(errors="replace")
            off += _EVENT.size + size
            if mask & IN_Q_OVERFLOW:
                log.debug("json-file log keeper: inotify queue overflowed; rescanning %s", self.folder)
                with contextlib.suppress(OSError):
                    for entry in os.listdir(self.folder):
                        self._watch_container(os.path.join(self.folder, entry))
            elif mask & IN_IGNORED:
                self._dirs.pop(wd, None)  # the container's folder was removed
            elif wd in self._dirs:
                if name.endswith(LOG_SUFFIX):
                    self._open(os.path.join(self._dirs[wd], name))
            elif mask & IN_ISDIR and name:
                self._watch_container(os.path.join(self.folder, name))

    def _watch_container(self, folder: str) -> None:
        if self.wanted is not None and not self.wanted(os.path.basename(folder)):
            return
        wd = self._add_watch(folder, IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            return  # gone already, or not a folder
        self._dirs[wd] = folder
        with contextlib.suppress(OSError):  # dockerd may have created the log before the watch was added
            for name in os.listdir(folder):
                if name.endswith(LOG_SUFFIX):
                    self._open(os.path.join(folder, name))

    def _open(self, path: str) -> None:
        with self._lock:
            if path in self._released:
                return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # removed already: nothing more could have been done
        st = os.fstat(fd)
        with self._lock:
            if path in self._released:
                os.close(fd)
                return
            held = self._held.setdefault(path, _Held(since=time.monotonic()))
            if any(_same(f, st) for f in held.fds):
                os.close(fd)  # seen twice (a rescan)
                return
            held.fds.append(fd)
            self.opened += 1
            over = len(self._held) - self.max_held
            oldest = sorted(self._held.items(), key=lambda kv: kv[1].since)[:over] if over > 0 else []
            for p, _ in oldest:
                del self._held[p]
        for _, h in oldest:
            _close_all(h.fds)

    def _expire(self, now: float) -> None:
        with self._lock:
            old = [p for p, h in self._held.items() if now - h.since > self.hold_secs]
            closing = [self._held.pop(p) for p in old]
        for h in closing:
            _close_all(h.fds)


def _same(fd: int, st: os.stat_result) -> bool:
    other = os.fstat(fd)
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
