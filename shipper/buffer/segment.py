"""The spool's on-disk format (see FORMAT.md): segments of checksummed records, and how to read them back.

One record is one batch. Its header carries what recovery, accounting and replay need without decoding the
payload: sequence number, push time, the batch's event-time bounds and its event count. The CRC covers the
header and the payload, so any flipped byte fails the record; a magic number lets a reader find the next
record after damage. Scanning never trusts a length it cannot verify: a record is accepted only when its
CRC matches, so a torn write and a flipped length look the same, and resync decides which it was.

`SpoolReader` reads a spool without taking part in it (no lock, no truncation, no ledger), so `shipper
replay` can run beside the daemon.
"""

from __future__ import annotations

import fnmatch
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from shipper.buffer.record import decode_record, encode_record
from shipper.deflate import InflateError, deflate, inflate
from shipper.errors import SpoolCorrupt
from shipper.event import Batch, Event
from shipper.timefmt import parse_ns, second_ns

log = logging.getLogger("shipper.spool")

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"SHPSPOOL"
SEGMENT_HEADER = struct.Struct("<8sHHIQq")  # magic, version, flags, reserved, first_seq, created_ns
RECORD_MAGIC = b"SREC"
RECORD_HEADER = struct.Struct("<4sIIHHQqqqI")  # magic, crc, length, flags, reserved, seq, push, tmin, tmax, n
SEG_HDR_SIZE = SEGMENT_HEADER.size  # 32
REC_HDR_SIZE = RECORD_HEADER.size  # 52
CRC_FROM = 8  # the CRC covers the header from this byte on, then the payload
FLAG_ZLIB = 1
KNOWN_FLAGS = FLAG_ZLIB
MAX_PAYLOAD = 1 << 31  # a length beyond this is damage, not data
SEGMENTS_DIR = "segments"
SEGMENT_SUFFIX = ".seg"
_NS = 1_000_000_000
Buf = bytes | mmap.mmap  # a whole segment: read into memory (replay) or mapped (recovery)


class RecordHeader(NamedTuple):
    seq: int
    push_ns: int
    tmin_ns: int  # 0 with tmax_ns 0: unknown
    tmax_ns: int
    events: int
    flags: int
    length: int  # payload bytes on disk

    @property
    def size(self) -> int:
        return REC_HDR_SIZE + self.length


# --- event time ---------------------------------------------------------------------------------------


def parse_time_ns(ts: str) -> int | None:
    """An event's time -> ns since the epoch (zone-less: UTC); None if unparsable, so replay skips it."""
    try:
        return parse_ns(ts, assume_utc=True)
    except ValueError:
        return None


def event_time_bounds(events: list[Event]) -> tuple[int, int]:
    """(min, max) event time of a batch in ns, to the second; (0, 0) when unknown.

    Docker writes UTC with a fixed 19-character seconds prefix and a fraction of varying length, so the
    lexical min and max of the strings have the right seconds; widening to whole seconds keeps the bounds
    conservative without parsing every event on the hot path.
    """
    if not events:
        return 0, 0
    stamps = [ev.timestamp for ev in events]
    lo, hi = min(stamps), max(stamps)
    try:
        if lo[-1:] == "Z" and hi[-1:] == "Z" and len(lo) >= 20 and len(hi) >= 20:
            return second_ns(lo[:19]), second_ns(hi[:19]) + _NS - 1
    except ValueError:
        pass
    parsed = [parse_time_ns(s) for s in stamps]  # offsets or odd formats: slow but exact
    if any(p is None for p in parsed):
        return 0, 0
    good = [p for p in parsed if p is not None]
    return min(good), max(good)


# --- writing ------------------------------------------------------------------------------------------


def segment_header(first_seq: int, created_ns: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, 0, first_seq, created_ns)


def encode_header(seq: int, push_ns: int, batch: Batch, payload: bytes, flags: int) -> bytes:
    """The header of one record whose payload is already encoded (and compressed if `flags` say so)."""
    tmin, tmax = event_time_bounds(batch.events)
    head = RECORD_HEADER.pack(RECORD_MAGIC, 0, len(payload), flags, 0, seq, push_ns, tmin, tmax,
                              len(batch.events))
    crc = zlib.crc32(payload, zlib.crc32(memoryview(head)[CRC_FROM:]))
    return RECORD_MAGIC + crc.to_bytes(4, "little") + head[CRC_FROM:]


def encode(seq: int, push_ns: int, batch: Batch, compress: bool = False) -> bytes:
    """One whole record (tests and tools; the spool writes header and payload with one writev)."""
    payload = encode_record(batch)
    flags = 0
    if compress:
        payload = deflate(payload, 1)
        flags = FLAG_ZLIB
    return encode_header(seq, push_ns, batch, payload, flags) + payload


# --- reading ------------------------------------------------------------------------------------------


def read_record(buf: Buf, off: int, end: int, min_seq: int = 0) -> RecordHeader | None:
    """The header of a valid record at `off` (magic, sane length, CRC, seq >= min_seq), else None."""
    if end - off < REC_HDR_SIZE:
        return None
    magic, crc, length, flags, _, seq, push, tmin, tmax, n = RECORD_HEADER.unpack_from(buf, off)
    if magic != RECORD_MAGIC or length > MAX_PAYLOAD or off + REC_HDR_SIZE + length > end:
        return None
    if flags & ~KNOWN_FLAGS or seq < min_seq:
        return None
    view = memoryview(buf)
    got = zlib.crc32(view[off + REC_HDR_SIZE:off + REC_HDR_SIZE + length],
                     zlib.crc32(view[off + CRC_FROM:off + REC_HDR_SIZE]))
    if got != crc:
        return None
    return RecordHeader(seq, push, tmin, tmax, n, flags, length)


def decode_payload(hdr: RecordHeader, payload: bytes | memoryview) -> Batch:
    data = inflate(bytes(payload)) if hdr.flags & FLAG_ZLIB else bytes(payload)
    return decode_record(data)


def decode(buf: bytes, min_seq: int = 0) -> tuple[RecordHeader, Batch]:
    """Check and decode one whole record (as read back by a cursor); SpoolCorrupt if it fails."""
    hdr = read_record(buf, 0, len(buf), min_seq)
    if hdr is None or hdr.size != len(buf):
        raise SpoolCorrupt("record failed its check")
    try:
        return hdr, decode_payload(hdr, memoryview(buf)[REC_HDR_SIZE:])
    except (ValueError, TypeError, KeyError, IndexError, InflateError) as e:  # CRC-valid, yet unreadable
        raise SpoolCorrupt(f"record does not decode: {e!r}") from None


@dataclass
class Damage:
    """A stretch of a segment that holds no valid record."""

    offset: int
    nbytes: int
    reason: str  # 'corrupt' (a valid record follows), 'torn_tail' (none follows), 'bad_header', 'misplaced'
    records: int = 1  # records lost here, from the gap in sequence numbers where one is known


@dataclass
class Scan:
    """What one pass over a segment found: every valid record's place, and the damage between them."""

    first_seq: int
    size: int
    created_ns: int = 0
    headers: list[RecordHeader] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def valid_end(self) -> int:
        """Where the last valid record ends: a torn tail is cut here."""
        if self.headers:
            return self.offsets[-1] + self.headers[-1].size
        return SEG_HDR_SIZE


def _resync(buf: Buf, start: int, end: int, min_seq: int) -> tuple[int, RecordHeader] | None:
    """The next valid record at or after `start`: find the magic, then prove it with the CRC."""
    pos = start
    while True:
        pos = buf.find(RECORD_MAGIC, pos, end)
        if pos < 0:
            return None
        hdr = read_record(buf, pos, end, min_seq)
        if hdr is not None:
            return pos, hdr
        pos += 1


def scan(buf: Buf, first_seq: int) -> Scan:
    """Walk a segment's bytes record by record; damage is skipped by resync (magic + CRC) and noted."""
    end = len(buf)
    result = Scan(first_seq, end)
    off = SEG_HDR_SIZE
    if end < SEG_HDR_SIZE:
        if end:
            result.damage.append(Damage(0, end, "torn_tail", 0))  # died while writing the header
        return result
    magic, version, _, _, hdr_seq, created = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC or version != FORMAT_VERSION or hdr_seq != first_seq:
        result.damage.append(Damage(0, SEG_HDR_SIZE, "bad_header", 0))
    else:
        result.created_ns = created
    min_seq = first_seq
    while off < end:
        hdr = read_record(buf, off, end, min_seq)
        if hdr is None:
            found = _resync(buf, off + 1, end, min_seq)
            if found is None:
                result.damage.append(Damage(off, end - off, "torn_tail"))
                break
            nxt, hdr = found
            result.damage.append(Damage(off, nxt - off, "corrupt", max(hdr.seq - min_seq, 1)))
            off = nxt
        result.headers.append(hdr)
        result.offsets.append(off)
        min_seq = hdr.seq + 1
        off += hdr.size
    return result


def segment_dir(directory: Path) -> Path:
    return directory / SEGMENTS_DIR


def segment_path(directory: Path, first_seq: int) -> Path:
    return segment_dir(directory) / f"{first_seq:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first_seq, path) of every segment file, oldest first; files not named like a segment are ignored."""
    try:
        names = os.listdir(segment_dir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and "." + ext == SEGMENT_SUFFIX and stem.isdigit():
            out.append((int(stem), segment_dir(directory) / name))
    out.sort()
    return out


# --- replay -------------------------------------------------------------------------------------------


class ReplayRecord(NamedTuple):
    """What replay yields: unpack as `seq, push_time, batch`."""

    seq: int
    push_time: float  # seconds since the epoch
    batch: Batch


class SpoolReader:
    """Reads a spool directory for replay, read-only: safe beside a running daemon.

    What is there: every batch some sink has not acked yet, plus delivered batches kept by
    `retention_secs` / `retention_bytes`. A partly written record at the end of the newest segment is
    taken as a write in progress and left alone; damage elsewhere is skipped and counted in
    `corrupt_records` / `corrupt_bytes`. A segment the daemon deletes while we read is skipped.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.corrupt_records = 0
        self.corrupt_bytes = 0

    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def __iter__(self) -> Iterator[ReplayRecord]:
        return self.records()

    def records(self, since: float | None = None, until: float | None = None, container: str | None = None,
                from_seq: int = 0) -> Iterator[ReplayRecord]:
        """Records in order, their batches cut to events with since <= event time < until (epoch seconds)
        and to containers whose name or id matches the glob `container`."""
        lo = None if since is None else int(since * _NS)
        hi = None if until is None else int(until * _NS)
        done_seq = from_seq - 1
        seen: set[int] = set()
        while True:  # list again at the end: the daemon may have rotated while we read
            todo = [(s, p) for s, p in list_segments(self.directory) if s not in seen]
            if not todo:
                return
            for i, (first, path) in enumerate(todo):
                seen.add(first)
                last_segment = i == len(todo) - 1
                for rec in self._read_segment(path, first, last_segment, done_seq + 1, lo, hi):
                    done_seq = rec.seq
                    kept = _filter(rec, lo, hi, container)
                    if kept is not None:
                        yield kept

    def _read_segment(self, path: Path, first: int, newest: bool, min_seq: int, lo: int | None,
                      hi: int | None) -> Iterator[ReplayRecord]:
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return
        found = scan(buf, first)
        for d in found.damage:
            if d.reason == "torn_tail" and newest:
                continue  # the daemon may be writing it right now
            self.corrupt_records += d.records
            self.corrupt_bytes += d.nbytes
        for hdr, off in zip(found.headers, found.offsets, strict=True):
            if hdr.seq < min_seq or not _may_overlap(hdr, lo, hi):
                continue
            try:
                batch = decode_payload(hdr, memoryview(buf)[off + REC_HDR_SIZE:off + hdr.size])
            except (ValueError, TypeError, KeyError, IndexError, InflateError):
                self.corrupt_records += 1
                self.corrupt_bytes += hdr.size
                continue
            yield ReplayRecord(hdr.seq, hdr.push_ns / _NS, batch)


def _may_overlap(hdr: RecordHeader, lo: int | None, hi: int | None) -> bool:
    """False only when the header's event-time bounds prove no event is in the window (saves decoding)."""
    if hdr.tmin_ns == 0 and hdr.tmax_ns == 0:
        return True
    return not ((lo is not None and hdr.tmax_ns < lo) or (hi is not None and hdr.tmin_ns >= hi))


def _filter(rec: ReplayRecord, lo: int | None, hi: int | None, glob: str | None) -> ReplayRecord | None:
    batch = rec.batch
    if glob is not None and not (fnmatch.fnmatchcase(batch.container.name, glob)
                                 or fnmatch.fnmatchcase(batch.container.id, glob)):
        return None
    if lo is None and hi is None:
        return rec
    kept = []
    for ev in batch.events:
        try:
            t = parse_ns(ev.timestamp, assume_utc=True)
        except ValueError:
            continue
        if (lo is not None and t < lo) or (hi is not None and t >= hi):
            continue
        kept.append(ev)
    if not kept:
        return None
    if len(kept) != len(batch.events):
        rec = ReplayRecord(rec.seq, rec.push_time, Batch(batch.container, kept))
    return rec
