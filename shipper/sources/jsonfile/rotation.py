"""A container's json-file logs on disk: where they are, which file is which, and opening them in order.

dockerd rotates by renaming (live -> `.1` -> `.2` ...), deletes the oldest past max-file and creates a new
live file, so a name says nothing lasting about a file: files are known by identity (device and inode) and
held open, which keeps a renamed or deleted file readable. Rotation hands a freed inode straight to the
next file, so a file's identity also carries a checksum of its first line (whose nanosecond timestamp
tells the two apart). Compressed rotated files (`compress=true`, `.N.gz`) are not read; they are only
recognised, by the checksum of their first line, to tell a gap apart from a file read before dockerd
gzipped it.

Everything here is a function of the file system: what to make of it (gaps, where to read) is the
reader's.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from shipper.docker.metadata import ContainerInfo

MAX_ROTATED = 10_000  # safety bound on the `.N` names probed
FINGERPRINT_BYTES = 4096


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


def open_newest_first(path: str) -> Iterator[_LogFile]:
    """Open the live file (if there is one), then `.1`, `.2` ... up to the first missing one."""
    f = _open(path)
    if f is not None:
        yield f
    for i in range(1, MAX_ROTATED):
        f = _open(f"{path}.{i}")
        if f is None:
            return
        yield f


def open_chain(path: str) -> list[_LogFile]:
    """Every log file of the container, oldest first, all opened.

    Newest first, so a rotation during the listing can only show a file twice (dropped), never hide
    one: the files not yet opened move to higher numbers, where they are still found.
    """
    found: list[_LogFile] = []
    keys: set[tuple[int, int]] = set()
    for f in open_newest_first(path):
        if (f.dev, f.ino) in keys:
            os.close(f.fd)
            continue
        keys.add((f.dev, f.ino))
        found.append(f)
    found.reverse()
    return found


def open_newer(path: str, last: _LogFile, held: set[tuple[int, int]]) -> tuple[list[_LogFile], bool]:
    """The files newer than `last` and not in `held`, opened, newest first; and whether `last` was met
    among the rotated files (if not, files between may have been deleted or compressed unseen)."""
    newer: list[_LogFile] = []
    for f in open_newest_first(path):
        key = (f.dev, f.ino)
        if key == (last.dev, last.ino):
            os.close(f.fd)
            return newer, True
        if key in held or any(key == (n.dev, n.ino) for n in newer):
            os.close(f.fd)
            continue
        newer.append(f)
    return newer, False


def find_compressed(path: str, f: _LogFile) -> int:
    """N when `f` (open, renamed away) is now `path.N.gz` (dockerd's compress=true), else -1."""
    fp = f.file_id() and f.fp
    if not fp:
        return -1
    for i in range(1, MAX_ROTATED):
        name = f"{path}.{i}.gz"
        if not os.path.exists(name):
            return -1
        if gz_fingerprint(name) == fp:
            return i
    return -1


def find_resume(chain: list[_LogFile], file_id: str, position: int) -> tuple[int, int, str | None]:
    """Where a checkpoint of `file_id` at `position` resumes in `chain`: (index, byte offset, gap reason).

    The reason is None when the file is there and the position starts a line; "truncated" when the file
    is shorter than the position (read from its start); "rotated_before_read" when the file is gone, or
    its inode was reused for other content (read from the oldest file).
    """
    dev_ino, _, fp = file_id.rpartition(":") if file_id.count(":") > 1 else (file_id, "", "")
    for i, f in enumerate(chain):
        if f"{f.dev}:{f.ino}" != dev_ino or (fp and fingerprint(f.fd) != fp):
            continue
        size = os.fstat(f.fd).st_size
        if position > size:
            return i, 0, "truncated"
        if position == 0 or os.pread(f.fd, 1, position - 1) == b"\n":
            return i, position, None
        break  # same inode, other content: the saved file is gone and its inode reused
    return 0, 0, "rotated_before_read"


def first_read_gap(path: str, files: int) -> tuple[str | None, int]:
    """Whether a first read finding `files` files may have come too late: (gap reason or None, number of
    compressed files).

    "compressed_before_read" when dockerd had gzipped some (they are not read), "rotated_before_start"
    when there are max-file of them (the oldest may have been deleted already).
    """
    gz = 0
    while os.path.exists(f"{path}.{gz + 1}.gz"):
        gz += 1
    max_file = _max_file(os.path.join(os.path.dirname(path), "hostconfig.json"))
    if gz:
        return "compressed_before_read", gz
    if max_file >= 2 and files >= max_file:
        return "rotated_before_start", gz
    return None, gz


def _max_file(hostconfig: str) -> int:
    """The container's max-file from dockerd's hostconfig.json (0 when unknown)."""
    try:
        with open(hostconfig, "rb") as f:
            return int(orjson.loads(f.read())["LogConfig"]["Config"].get("max-file") or 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
