"""A container's json-file logs on disk: where they are, which file is which, and opening them in order.

dockerd rotates by renaming (live -> `.1` -> `.2` ...), deletes the oldest past max-file and creates a new
live file, so a name says nothing lasting about a file: files are known by identity (device and inode) and
held open, which keeps a renamed or deleted file readable. Rotation hands a freed inode straight to the
next file, so a file's identity also carries a checksum of its first line (whose nanosecond timestamp
tells the two apart). Compressed rotated files (`compress=true`, `.N.gz`) are not read; they are only
recognised, by the checksum of their first line, to tell a gap apart from a file read before dockerd
gzipped it.

Everything here is a function of the file system: what to make of it (gaps, where to read) is the
reader's. What a gap's size can be told from: dockerd rotates (or, with max-file=1, truncates) a file only
once it holds max-size bytes or more (`log_limits`), and every entry carries its time (`first_time`,
`last_time`); a compressed file can be measured exactly (`measure_compressed`).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from shipper.docker.metadata import ContainerInfo

MAX_ROTATED = 10_000  # safety bound on the `.N` names probed
FINGERPRINT_BYTES = 4096
MAX_LINE_BYTES = 1024 * 1024  # how far back or ahead an entry's time is looked for
# the shortest entry dockerd writes: what a lost file holds at least when max-size is not known
MIN_ENTRY_BYTES = len(b'{"log":"","stream":"stdout","time":"2006-01-02T15:04:05Z"}\n')


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


def held_chain(fds: list[int]) -> list[_LogFile]:
    """Files opened earlier (by the log keeper), oldest first, as `open_chain` gives them."""
    out = []
    for fd in fds:
        st = os.fstat(fd)
        out.append(_LogFile(fd, st.st_dev, st.st_ino))
    return out


def json_log_path(info: ContainerInfo, data_root: str) -> str:
    """Where dockerd keeps a container's json-file log (inspect's LogPath when discovery had it)."""
    cid = info.meta.id
    return info.log_path or os.path.join(data_root, "containers", cid, f"{cid}-json.log")


def open_newest_first(path: str) -> Iterator[_LogFile]:
    """Open the live file (if there is one), then `.1`, `.2` ... up to two missing names in a row.

    One missing name is a rotation under way: dockerd renames the oldest first, so the hole moves down
    while this looks up, and the file that was at the missing name is found at the next.
    """
    f = _open(path)
    if f is not None:
        yield f
    missing = 0
    for i in range(1, MAX_ROTATED):
        f = _open(f"{path}.{i}")
        if f is None:
            missing += 1
            if missing == 2:
                return
            continue
        missing = 0
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


def compressed_names(path: str) -> list[str]:
    """The `.N.gz` files there are, newest first (with compress=true `.1.gz` is missing until dockerd has
    compressed `.1`)."""
    names: list[str] = []
    missing = 0
    for i in range(1, MAX_ROTATED):
        name = f"{path}.{i}.gz"
        if os.path.exists(name):
            names.append(name)
            missing = 0
        else:
            missing += 1
            if missing == 2:
                break
    return names


def compressed_newer(path: str, fp: str, held: set[str]) -> tuple[list[BinaryIO], BinaryIO | None]:
    """The compressed files newer than the file whose first line has checksum `fp`, opened, newest first,
    and that file, opened, if it was met among them (else every compressed file is in the list).

    A file whose checksum is in `held` is one held uncompressed (dockerd compressing `.1`): left out, as is
    one not readable yet. Opened at once, so that a rotation deleting them cannot keep them from being
    measured.
    """
    newer: list[BinaryIO] = []
    for name in compressed_names(path):
        g = gz_fingerprint(name)
        if not g or (g in held and g != fp):
            continue
        try:
            f = open(name, "rb")  # noqa: SIM115  (closed by the reader once measured)
        except OSError:
            continue
        if fp and g == fp:
            return newer, f
        newer.append(f)
    return newer, None


def compressed_first_time(f: BinaryIO) -> str:
    """The time of a compressed log file's first entry; the file is left at its start."""
    try:
        with gzip.GzipFile(fileobj=f) as g:
            head = g.read(FINGERPRINT_BYTES)
            if b"\n" not in head:
                head += g.read(MAX_LINE_BYTES)
    except (OSError, EOFError, zlib.error):
        head = b""
    finally:
        f.seek(0)
    nl = head.find(b"\n")
    return entry_time(head[:nl]) if nl >= 0 else ""


@dataclass(slots=True)
class Measured:
    nbytes: int = 0
    lines: int = 0
    first: str = ""  # time of the first entry counted
    last: str = ""  # time of the last entry counted
    whole: bool = True  # False: a file could not be read to its end (the counts are what was read)


def measure_compressed(files: list[BinaryIO], skip: int = 0) -> Measured:
    """The uncompressed size, lines and first and last entry times of compressed log files, oldest first,
    the first counted from byte `skip` on (a checkpoint's position). Closes the files."""
    out = Measured()
    tail = b""
    head: bytes | None = b""  # the start of what is counted, until its first line is whole
    for i, f in enumerate(files):
        drop = skip if i == 0 else 0
        try:
            with f, gzip.GzipFile(fileobj=f) as g:
                while True:
                    chunk = g.read(1024 * 1024)
                    if not chunk:
                        break
                    if drop:
                        cut = min(drop, len(chunk))
                        chunk, drop = chunk[cut:], drop - cut
                        if not chunk:
                            continue
                    if head is not None:
                        head += chunk[:MAX_LINE_BYTES]
                        nl = head.find(b"\n")
                        if nl >= 0 or len(head) >= MAX_LINE_BYTES:
                            out.first, head = entry_time(head[:nl]) if nl >= 0 else "", None
                    out.nbytes += len(chunk)
                    out.lines += chunk.count(b"\n")
                    tail = (tail + chunk)[-MAX_LINE_BYTES:]
        except (OSError, EOFError, zlib.error, ValueError):  # truncated, damaged, or closed at shutdown
            out.whole = False
    lines = tail.rsplit(b"\n", 2)
    if len(lines) >= 2:
        out.last = entry_time(lines[-2])
    return out


def entry_time(line: bytes) -> str:
    """The `time` of a json-file entry, "" when the line is not one."""
    try:
        t = orjson.loads(line)["time"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return ""
    return t if isinstance(t, str) else ""


def first_time(fd: int) -> str:
    """The time of a log file's first entry ("" if it has no complete one)."""
    try:
        head = os.pread(fd, FINGERPRINT_BYTES, 0)
        if b"\n" not in head and len(head) == FINGERPRINT_BYTES:
            head = os.pread(fd, MAX_LINE_BYTES, 0)
    except OSError:
        return ""
    nl = head.find(b"\n")
    return entry_time(head[:nl]) if nl >= 0 else ""


def last_time(fd: int, end: int = -1) -> str:
    """The time of the last complete entry before byte `end` (the file's size by default)."""
    try:
        if end < 0:
            end = os.fstat(fd).st_size
        n = FINGERPRINT_BYTES
        while True:
            start = max(0, end - n)
            data = os.pread(fd, end - start, start)
            nl = data.rfind(b"\n")
            if nl < 0:
                return ""
            prev = data.rfind(b"\n", 0, nl)
            if prev >= 0 or start == 0:
                return entry_time(data[prev + 1:nl])
            if n >= MAX_LINE_BYTES:
                return ""
            n *= 16
    except OSError:
        return ""


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


_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """max-size as dockerd reads it (go-units FromHumanSize: decimal, "64k" is 64,000 bytes); 0 if invalid."""
    m = _SIZE.match(text.strip())
    if not m:
        return 0
    unit = m.group(2)
    return int(float(m.group(1)) * 1000 ** ("kmgtp".index(unit.lower()) + 1 if unit else 0))


def log_limits(path: str) -> tuple[int, int]:
    """(max-file, max-size in bytes) of the container whose log is `path`, from dockerd's hostconfig.json
    beside it. max-file is 1 when not set (dockerd's default) and 0 when unknown; max-size 0 when not set
    or unknown (then dockerd never rotates)."""
    try:
        with open(os.path.join(os.path.dirname(path), "hostconfig.json"), "rb") as f:
            opts = orjson.loads(f.read())["LogConfig"]["Config"]
        return int(opts.get("max-file") or 1), parse_size(str(opts.get("max-size") or ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, 0
