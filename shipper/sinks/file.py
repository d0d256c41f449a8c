"""ECS JSON lines in a local file, one event a line, rotated by size (path, path.1, ... path.N).

The file is followed by its path, as Filebeat's and Fluent Bit's file outputs do: before each request the
path is checked (one stat) against the open file's device and inode, so a file removed (`rm`), moved away
(`mv`, logrotate's default) or replaced under us is reopened at the path instead of written into an
inode nobody can see, and a file truncated under us (logrotate's `copytruncate`) resets the size that
rotation counts. A write that fails (a full disk) is cut back to where it started, so the retry does not
leave half a line.

Where the write happens: into a regular file on a local filesystem a write only copies into the page cache,
so it is made on the event loop, as Fluent Bit's and Filebeat's file outputs make it; handing it to a thread
cost a sixth of the daemon's CPU (the two threads on two cores, the GIL between them). Anything that can
block for long goes through a thread: a FIFO or a device, a network or unknown filesystem, `fsync = true`,
a write that rotates the file (removing the oldest waits for its pages still being written back), a write
while another worker holds the file's lock, and every write for SLOW_WRITES_APART seconds after one that
took longer than SLOW_WRITE_SECS on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch
from shipper.schema import doc
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.sinks.file")
_MODE = re.compile(r"^(?:0o?)?([0-7]{3})$")
SLOW_WRITE_SECS = 0.05  # a write on the loop that took longer moves this sink's writes to a thread...
SLOW_WRITES_APART = 60.0  # ...for this long
# Filesystems on a local block device or in memory, where writing to a file fills the page cache and does not
# wait for a server: ext2/3/4, XFS, btrfs, ZFS and the rest; the container's own overlay and tmpfs.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
                               "bcachefs", "overlay", "tmpfs", "ramfs", "vfat", "exfat", "ntfs3", "hfsplus"})


def parse_mode(text: str) -> int:
    """'0600', '600' or '0o600' -> 0o600; ValueError for anything else (no setuid/sticky bits)."""
    m = _MODE.match(text.strip())
    if not m:
        raise ValueError(f"not an octal file mode: {text!r}")
    return int(m.group(1), 8)


@dataclass(frozen=True)
class FileConfig(SinkBase):
    path: str = doc("", "the file to write (default: <state dir>/events.jsonl)")
    max_bytes: int = doc(100 * 1024 * 1024, "rotate when the file would grow past this (0: never)")
    max_files: int = doc(5, "rotated files kept beside the live one")
    fsync: bool = doc(False, "fsync after every batch")
    mode: str = doc("0600", "permissions of the files the sink creates, octal, applied as written (the umask "
                            "does not remove bits); never world-writable")
    group: str = doc("", "group of the files the sink creates, a name or a number (empty: the process's); with "
                         "mode = \"0640\" that group may read them")

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.max_bytes < 0:
            raise ConfigError(f"{key}.max_bytes", "must not be negative")
        try:
            mode = parse_mode(self.mode)
        except ValueError:
            raise ConfigError(f"{key}.mode", f"must be an octal mode such as \"0600\" or \"0640\", "
                                             f"got {self.mode!r}") from None
        if mode & 0o002:
            raise ConfigError(f"{key}.mode", f"{self.mode} is world-writable: anyone could forge or erase "
                                             "events (use 0600 or 0640)")
        if mode & 0o600 != 0o600:
            raise ConfigError(f"{key}.mode", f"{self.mode} must let the owner read and write the file")
        if self.group:
            try:
                group_id(self.group)
            except (KeyError, ValueError):
                raise ConfigError(f"{key}.group", f"no such group on this host: {self.group!r}") from None


def group_id(group: str) -> int:
    """A group name or number -> its id; KeyError when there is no such group."""
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


def filesystem_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem that holds `path`, by its device number in mountinfo; "" when unknown."""
    try:
        st = os.stat(path)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == dev and "-" in fields:
                    return fields[fields.index("-") + 1]  # after the optional fields and their "-"
    except (OSError, IndexError):
        pass
    return ""


def _path_followed(m: Metrics, sink: str, path: str, reason: str) -> None:
    """The path no longer named the file the sink had open (or the file shrank): followed, nothing lost."""
    m.inc("shipper_sink_file_followed_total", sink=sink, reason=reason)
    what = {"removed": "the file was removed: writing to a new file at the path",
            "moved": "the file was moved away (it keeps what was written): writing to a new file at the path",
            "replaced": "another file is at the path now: writing to it",
            "truncated": "the file was truncated under us (copytruncate): size for rotation reset"}[reason]
    log.warning("file sink followed its path sink=%s path=%s reason=%s (%s; counted in "
                "shipper_sink_file_followed_total)", sink, path, reason, what)


class _OpenFile:
    """The sink's one descriptor and the file (device, inode) it was opened on. Closed only here, once:
    `close` forgets the number before closing it, so a number the kernel has since given to another part
    of the process (a json-file reader) can never be closed a second time."""

    __slots__ = ("dev", "fd", "ino", "regular")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            st = os.fstat(fd)
        except OSError:
            self.close()
            raise
        self.dev, self.ino = st.st_dev, st.st_ino
        self.regular = stat.S_ISREG(st.st_mode)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class FileSink(Sink):
    Config = FileConfig
    config: FileConfig

    def __init__(self, config: FileConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.path = config.path or str(context.state_dir / "events.jsonl")
        self.encoder = JsonLinesEncoder()
        self._mode = parse_mode(config.mode)
        self._gid = group_id(config.group) if config.group else -1
        self._file: _OpenFile | None = None
        self._size = 0  # of the open file, as far as we wrote it or last saw it
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[bool] | None = None
        self.on_loop = False  # writes made on the event loop (see the module's docstring)
        self._threaded_until = 0.0  # monotonic time until which writes go through a thread: one was slow

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._open_locked)
            fs = await asyncio.to_thread(filesystem_of, os.path.dirname(os.path.abspath(self.path)))
        except OSError as e:
            raise RetryableSinkError(f"cannot open {self.path}: {e}") from e
        regular = self._file is not None and self._file.regular
        self.on_loop = regular and not self.config.fsync and fs in LOCAL_FILESYSTEMS
        log.info("file sink sink=%s path=%s filesystem=%s writes=%s", self.context.name, self.path, fs or "unknown",
                 "on the event loop" if self.on_loop else "in a thread")

    # --- the descriptor: opened and closed here only ----------------------------------------------------

    def _make_folder(self) -> None:
        folder_mode = 0o700 | (0o050 if self._mode & 0o040 else 0)  # a group that may read the files may enter
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=folder_mode, exist_ok=True)

    @contextlib.contextmanager
    def _folder_locked(self, wait: bool = True) -> Iterator[bool]:
        """An exclusive lock of the file's folder, held by whoever opens, cuts, rotates or appends to the file:
        the workers of one shipper (`[pipeline] workers`) all append to this path, and one that cut a torn
        line or rotated between another's check and write would lose what the other wrote. Without `wait`,
        yields False, holding nothing, when another holds the lock."""
        where = os.path.dirname(os.path.abspath(self.path))
        try:
            folder = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed under us: made again, as opening the file would
            self._make_folder()
            folder = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(folder)  # releases the lock

    def _open_locked(self) -> None:
        with self._folder_locked():
            self._open()

    def _open(self) -> None:
        """Open (creating it with `mode`) the file at `path` for appending, closing the one open before.
        Under the folder's lock (_folder_locked)."""
        self._close_file()
        self._make_folder()
        existed = os.path.lexists(self.path)
        f = _OpenFile(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode))
        self._file = f
        if not existed and f.regular:  # ours: the mode as configured whatever the umask, and the group
            try:
                if self._gid >= 0 and os.fstat(f.fd).st_gid != self._gid:  # a setgid folder may have done it
                    os.fchown(f.fd, -1, self._gid)
                os.fchmod(f.fd, self._mode)
            except OSError:
                self._close_file()
                raise
        self._size = os.fstat(f.fd).st_size if f.regular else 0
        if f.regular:
            self._cut_torn_line(f)

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def _cut_torn_line(self, f: _OpenFile) -> None:
        """A crash mid-write leaves a last line without its newline. Its batch was never acked, so it is sent
        again whole: cut the fragment, or the next event would be glued onto it. Under the folder's lock,
        where every other writer's lines are whole."""
        if self._size == 0:
            return
        with open(self.path, "rb") as r:
            r.seek(max(self._size - 1, 0))
            if r.read(1) == b"\n":
                return
            keep = 0
            pos = self._size
            while pos > 0 and not keep:
                start = max(pos - 65536, 0)
                r.seek(start)
                chunk = r.read(pos - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                pos = start
        os.ftruncate(f.fd, keep)
        tel.torn_output_cut(self.context.metrics, self.context.name, self.path, self._size - keep)
        self._size = keep

    def _follow_path(self, f: _OpenFile) -> None:
        """Once a request: reopen when `path` no longer names the open file; notice a truncation."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (f.dev, f.ino):
            if f.regular and st.st_size != self._size:  # a FIFO or a device has no size to follow
                if st.st_size < self._size:
                    _path_followed(self.context.metrics, self.context.name, self.path, "truncated")
                self._size = st.st_size  # O_APPEND writes land at the real end, wherever that is now
                # another worker wrote since we last did, and may have been killed in the middle of it
                self._cut_torn_line(f)
            return
        gone = "removed" if os.fstat(f.fd).st_nlink == 0 else "moved"  # no link left, or another name
        reason = "replaced" if st is not None else gone
        _path_followed(self.context.metrics, self.context.name, self.path, reason)
        self._open()

    def _rotate(self) -> None:
        self._close_file()  # first: a failed rename below leaves no descriptor behind, the next write reopens
        if self.config.max_files > 0:
            for k in range(self.config.max_files - 1, 0, -1):
                src = f"{self.path}.{k}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{k + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._open()

    # --- requests ---------------------------------------------------------------------------------------

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches))

    async def send(self, request: Request) -> None:
        async with self._lock:  # requests in flight append one after another, whole
            try:
                if self._write_on_loop(len(request.payload)) and self._append_on_loop(request.payload):
                    return
                self._writing = asyncio.ensure_future(asyncio.to_thread(self._append, request.payload))
                await asyncio.shield(self._writing)  # cancelled, the write still finishes before close()
            except OSError as e:
                raise RetryableSinkError(f"cannot write {self.path}: {e}") from e

    def _write_on_loop(self, size: int) -> bool:
        if not self.on_loop or self._file is None or time.monotonic() < self._threaded_until:
            return False
        return not self._rotation_due(size)  # a rotation goes through the thread

    def _rotation_due(self, size: int) -> bool:
        """Appending `size` bytes would take a regular file that holds something past `max_bytes`."""
        f = self._file
        return bool(self.config.max_bytes and self._size and self._size + size > self.config.max_bytes
                    and f is not None and f.regular)

    def _append_on_loop(self, data: bytes) -> bool:
        """False, having written nothing, when another worker holds the folder's lock (it may be rotating)."""
        start = time.monotonic()
        try:
            return self._append(data, wait=False)
        finally:
            took = time.monotonic() - start
            if took > SLOW_WRITE_SECS:
                self._threaded_until = start + took + SLOW_WRITES_APART
                m = self.context.metrics
                first = not m.get("shipper_sink_file_slow_writes_total", sink=self.context.name)
                m.inc("shipper_sink_file_slow_writes_total", sink=self.context.name)
                (log.warning if first else log.info)(
                    "file sink writes in a thread for %.0f s sink=%s path=%s reason=slow-write (a write of %d "
                    "bytes took %.0f ms on the event loop, where every reader waits; counted in "
                    "shipper_sink_file_slow_writes_total)", SLOW_WRITES_APART, self.context.name, self.path,
                    len(data), took * 1000)

    def _append(self, data: bytes, wait: bool = True) -> bool:
        """Without `wait` (on the event loop), False, having written nothing, when another holds the folder's
        lock or the write would rotate the file: the thread does those. Another worker's writes make this
        sink's idea of the size stale, so only under the lock is a rotation known to be due."""
        with self._folder_locked(wait) as locked:
            return locked and self._append_locked(data, rotate=wait)

    def _append_locked(self, data: bytes, rotate: bool = True) -> bool:
        if self._file is None:
            self._open()
        else:
            self._follow_path(self._file)
        assert self._file is not None
        if self._rotation_due(len(data)):
            if not rotate:
                return False
            self._rotate()
        for _ in range(2):
            f = self._file
            assert f is not None
            self._write(f, data)
            if os.fstat(f.fd).st_nlink > 0:
                if self.config.fsync:
                    self._sync(f, len(data))
                return True
            # removed between the check and the write: what we wrote is in a file no one can open
            _path_followed(self.context.metrics, self.context.name, self.path, "removed")
            self._open()
        raise OSError(errno.ENOENT, "the file keeps being removed while we write to it")

    def _write(self, f: _OpenFile, data: bytes) -> None:
        """Append `data` whole, or not at all: a failed write (ENOSPC) is cut back to where it started."""
        before = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(f.fd, view)
                view = view[n:]
        except OSError:
            if len(view) < len(data):
                self._cut_back(f, before)
            raise
        self._size = before + len(data) if f.regular else 0

    def _sync(self, f: _OpenFile, n: int) -> None:
        try:
            os.fsync(f.fd)
        except OSError:  # not known to be on disk: take it back, the request is sent again whole
            self._cut_back(f, self._size - n)
            raise

    def _cut_back(self, f: _OpenFile, size: int) -> None:
        if not f.regular:  # what went into a FIFO or a device cannot be taken back
            return
        try:
            os.ftruncate(f.fd, size)
            self._size = size
        except OSError:  # cannot even cut: reopening later cuts the torn line (_cut_torn_line)
            self._close_file()

    async def close(self) -> None:
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        async with self._lock:
            self._close_file()
