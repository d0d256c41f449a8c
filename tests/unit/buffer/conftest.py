"""Helpers for the spool tests, including an independent reader of the documented on-disk layout
(FORMAT.md), so the tests find records without trusting the code under test."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from shipper.buffer.record import decode_record
from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, FsyncPolicy, WhenFull
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics

CONTAINERS = {name: ContainerMeta(id=f"{name}-id-0123456789", name=name, image="busybox", host="h")
              for name in ("web", "db", "worker")}
SEG_HEADER = 32
REC_HEADER = 52


def make_batch(k: int, n: int = 1, container: str = "web", size: int = 40,
               second: int | None = None) -> Batch:
    """Batch number `k`: event messages 'b<k>-e<i>-xxx', checkpoint position k, Docker-style timestamps."""
    meta = CONTAINERS[container]
    sec = k if second is None else second
    events = [Event(f"2024-05-01T10:{sec // 60 % 60:02d}:{sec % 60:02d}.{i + 1}Z",
                    f"b{k}-e{i}-" + "x" * size, "stdout" if i % 2 == 0 else "stderr", seq=i)
              for i in range(n)]
    return Batch(meta, events, Checkpoint(meta.id, k))


def batch_id(batch: Batch) -> int:
    return int(batch.events[0].message.split("-", 1)[0][1:])


def config(**kw: object) -> BufferConfig:
    base: dict[str, object] = {"fsync": FsyncPolicy.NEVER, "segment_bytes": 1024, "max_bytes": 1 << 30,
                               "when_full": WhenFull.BLOCK}
    base.update(kw)
    return BufferConfig(**base)  # type: ignore[arg-type]


@dataclass
class Opened:
    spool: DiskSpool
    safe: list[int]
    metrics: Metrics


async def open_spool(directory: Path, cfg: BufferConfig, metrics: Metrics | None = None,
                     safe: list[int] | None = None) -> Opened:
    safe = [] if safe is None else safe
    m = metrics or Metrics()
    sp = DiskSpool(directory, cfg, m, lambda cp: safe.append(int(cp.position)))
    await sp.open()
    return Opened(sp, safe, m)


@dataclass
class RawRecord:
    path: Path
    offset: int
    size: int
    seq: int
    events: int
    batch: Batch


def segment_files(directory: Path) -> list[Path]:
    return sorted((directory / "segments").glob("*.seg"))


def raw_records(path: Path) -> list[RawRecord]:
    """Every record of one segment that checks out, found by brute force: magic, length, CRC."""
    data = path.read_bytes()
    out: list[RawRecord] = []
    off = SEG_HEADER
    while True:
        off = data.find(b"SREC", off)
        if off < 0 or off + REC_HEADER > len(data):
            return out
        crc, length, flags = struct.unpack_from("<IIH", data, off + 4)
        end = off + REC_HEADER + length
        if end <= len(data) and zlib.crc32(data[off + 8:end]) == crc:
            seq, = struct.unpack_from("<Q", data, off + 16)
            events, = struct.unpack_from("<I", data, off + 48)
            payload = data[off + REC_HEADER:end]
            batch = decode_record(zlib.decompress(payload) if flags & 1 else payload)
            out.append(RawRecord(path, off, end - off, seq, events, batch))
            off = end
        else:
            off += 1


def all_raw_records(directory: Path) -> list[RawRecord]:
    return [r for p in segment_files(directory) for r in raw_records(p)]


def flip_byte(path: Path, pos: int, xor: int = 0x5A) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ xor]))
        f.flush()
        os.fsync(f.fileno())


def corrupt_count(m: Metrics, reason: str | None = None) -> float:
    if reason is None:
        return m.get("shipper_spool_corrupt_records_total")
    return m.get("shipper_spool_corrupt_records_total", reason=reason)
