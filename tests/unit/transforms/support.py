"""Helpers for the transform tests: a config from plain tables, dockerd's 16 KiB split, feeding entries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shipper.config import Config
from shipper.event import Event
from shipper.schema import build
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler

PARTIAL_BYTES = 16 * 1024


def make_config(**sections: dict[str, Any]) -> Config:
    return build(Config, dict(sections))


def make_asm(metrics: Metrics | None = None, **sections: dict[str, Any]) -> LineAssembler:
    return LineAssembler("c1", make_config(**sections), metrics or Metrics())


def docker_entries(line: str) -> list[str]:
    """How dockerd's json-file driver stores one written line (with its newline): 16 KiB pieces, every
    piece but the last without a newline. ASCII/char based, as benchmarks/workload.py does."""
    chunk = line
    out = []
    while len(chunk) > PARTIAL_BYTES:
        out.append(chunk[:PARTIAL_BYTES])
        chunk = chunk[PARTIAL_BYTES:]
    out.append(chunk)
    return out


def ts(n: int) -> str:
    return f"2026-11-26T21:19:{17 + n // 1_000_000_000:02d}.{n % 1_000_000_000:09d}Z"


class Feeder:
    """Adds entries with increasing timestamps and byte positions, as a json-file reader would."""

    def __init__(self, asm: LineAssembler) -> None:
        self.asm = asm
        self.n = 0
        self.pos = 0
        self.events: list[Event] = []

    def entry(self, text: str, stream: str = "stdout", timestamp: str | None = None) -> int:
        pos = self.pos
        self.asm.add(timestamp or ts(self.n), stream, text, pos)
        self.n += 1
        self.pos += len(text.encode()) + 40
        return pos

    def lines(self, lines: Iterable[str], stream: str = "stdout") -> None:
        for line in lines:
            for part in docker_entries(line + "\n"):
                self.entry(part, stream)

    def take(self) -> list[Event]:
        got = self.asm.take()
        self.events.extend(got)
        return got

    def finish(self) -> list[Event]:
        self.asm.flush()
        self.take()
        return self.events
