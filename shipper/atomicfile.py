"""Replacing a small state file whole, so a crash leaves the old content or the new, never a mix.

The data goes to a temporary file beside the target, then `os.replace` swaps it in (a rename is atomic
within one directory). With `fsync`, the data is on disk before the rename and the rename is on disk
before returning; without it a crash may bring back the old file, which callers must be able to live with.
Files are created owner-only (0600) by default: offsets and ledgers name the containers of the host.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, fsync: bool, mode: int = 0o600) -> None:
    """Replace `path` with `data` in a file whose permission bits are exactly `mode` (the umask aside).

    Raises OSError, after removing the temporary file: a failure leaves the old file and nothing else.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")  # hidden, and one name per target: a crash leaves one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # a tmp file left by a crash keeps its old mode through O_TRUNC
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a create, rename or unlink in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Snapshots:
    """One state file written from snapshots taken on the event loop and written in worker threads, so the
    loop never waits for the disk. Writes may finish out of order (a periodic save still running when the
    final one starts at shutdown): an older snapshot never replaces a newer one."""

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0

    def take(self) -> int:
        """Number the snapshot about to be serialised (on the loop, in the order they are taken)."""
        self._taken += 1
        return self._taken

    def write(self, data: bytes, fsync: bool, number: int) -> None:
        """Write snapshot `number` unless a newer one is already on disk; raises OSError."""
        with self._lock:
            if number <= self._written:
                return
            write_atomic(self.path, data, fsync, self.mode)
            self._written = number
