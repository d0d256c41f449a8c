"""`shipper replay`: send retained spool events to a sink again, after an outage or for a new destination.

Reads the spool with `SpoolReader`, which never writes (no lock, no ledger, no truncation), so it is safe
beside a running daemon and leaves the daemon's cursors alone. Events keep their `event.id`, so a store
that de-duplicates on it is not harmed by replaying a window that was partly delivered.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from shipper.buffer.segment import SpoolReader
from shipper.config import BufferType, Config
from shipper.errors import ConfigError
from shipper.event import Batch
from shipper.sinks import sink_class
from shipper.sinks.base import SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics
from shipper.timefmt import NS_PER_SEC, parse_ns

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_SECS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """RFC 3339 ('2026-11-26T10:00:00Z', fractions and offsets allowed; no zone: UTC) or relative to now
    ('10m', '2h'), as Unix seconds."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_SECS[m.group(2)]
    try:
        return parse_ns(text, assume_utc=True) / NS_PER_SEC
    except ValueError:
        raise ValueError(f"not a time: {text!r} (RFC 3339, or 30s, 10m, 2h, 1d ago)") from None


@dataclass
class ReplaySummary:
    events: int = 0
    batches: int = 0
    bytes: int = 0
    failed_events: int = 0
    seconds: float = 0.0
    containers: dict[str, int] = field(default_factory=dict)
    corrupt_records: int = 0

    def line(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (f"replayed events={self.events} batches={self.batches} bytes={self.bytes} "
                f"failed_events={self.failed_events} containers={len(self.containers)} "
                f"seconds={self.seconds:.2f} rate={rate:,.0f}/s corrupt_records_skipped={self.corrupt_records}")


class Progress:
    """A one-line progress bar on a terminal; nothing when output is not a terminal."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.out = out
        self.enabled = out.isatty()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        self.out.write(f"\r[{bar:<30}] {done:,}/{self.total:,} events {frac:6.1%}")
        if force:
            self.out.write("\n")
        self.out.flush()


def spool_dir(cfg: Config) -> str:
    if cfg.buffer.type is not BufferType.DISK:
        raise ConfigError("buffer.type", "replay reads the disk spool: set buffer.type = \"disk\" "
                                         "(with retention_secs or retention_bytes to keep delivered events)")
    return str(cfg.state.path / "spool")


async def replay(cfg: Config, sink_name: str, since: float | None, until: float | None, container: str | None,
                 dry_run: bool = False, max_attempts: int = 10, out: TextIO = sys.stdout) -> ReplaySummary:
    """Send every retained event in the window to `sink_name`, in spool order (so in order per container).

    Two passes over the spool: one to count (for the progress bar), one to send, so memory stays flat
    whatever the window holds. Records go in requests of up to the sink's `batch_max_events`; a request
    that still fails after `max_attempts` is counted as failed.
    """
    if sink_name not in cfg.sinks:
        raise ConfigError("--sink", f"no sink named {sink_name!r} (configured: {', '.join(cfg.sinks)})")
    directory = spool_dir(cfg)
    started = time.monotonic()
    summary = ReplaySummary()
    reader = SpoolReader(directory)
    if dry_run:
        for rec in reader.records(since=since, until=until, container=container):
            for ev in rec.batch.events:
                out.write(f"{ev.timestamp} {rec.batch.container.name} {ev.stream} {ev.message[:200]!r}\n")
            _count(summary, rec.batch)
        summary.corrupt_records = reader.corrupt_records
        summary.seconds = time.monotonic() - started
        return summary
    total = sum(len(rec.batch) for rec in SpoolReader(directory).records(since=since, until=until,
                                                                          container=container))
    sc = cfg.sinks[sink_name]
    metrics = Metrics()
    sink = sink_class(sc.type)(sc, SinkContext(sink_name, cfg.state.path, cfg.host.resolved_name, metrics))
    runner = SinkRunner(sink_name, sink, None, metrics)
    progress = Progress(total)
    group: list[Batch] = []

    async def flush() -> None:
        if group:
            done = await runner.deliver(sink.encode(group), max_attempts)
            summary.failed_events += done.failed + done.rejected
            for b in group:
                _count(summary, b)
            group.clear()
            progress.update(summary.events)

    try:
        await runner.start()
        pending = 0
        for rec in reader.records(since=since, until=until, container=container):
            group.append(rec.batch)
            pending += len(rec.batch)
            if pending >= sc.batch_max_events:
                await flush()
                pending = 0
        await flush()
        progress.update(summary.events, force=True)
    finally:
        await sink.close()
    summary.corrupt_records = reader.corrupt_records
    summary.seconds = time.monotonic() - started
    return summary


def _count(summary: ReplaySummary, b: Batch) -> None:
    summary.batches += 1
    summary.events += len(b)
    summary.bytes += sum(len(ev.message.encode()) for ev in b.events)
    summary.containers[b.container.name] = summary.containers.get(b.container.name, 0) + len(b)
