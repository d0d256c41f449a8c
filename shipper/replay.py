"""`shipper replay`: send retained spool events to a sink again, after an outage or for a new destination.

Reads the spool with `SpoolReader`, which never writes (no lock, no ledger, no truncation), so it is safe
beside a running daemon and leaves the daemon's cursors alone. Events keep their `event.id`, so a store
that de-duplicates on it is not harmed by replaying a window that was partly delivered.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from shipper.buffer.segment import ReplayRecord, SpoolReader
from shipper.config import BufferType, Config
from shipper.errors import ConfigError
from shipper.event import Batch
from shipper.sinks import sink_class
from shipper.sinks.base import SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics
from shipper.timefmt import NS_PER_SEC, parse_ns
from shipper.workers import state_dirs

_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_SECS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_YIELD_EVERY = 64  # records read between two returns to the event loop: Ctrl-C is seen at once


class ReplayError(Exception):
    """Replay cannot start or go on; `code` is the exit status (2: nothing to read or a bad window, 1: the
    sink failed)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_time(text: str, now: float | None = None) -> float:
    """RFC 3339 ('2026-11-26T10:00:00Z', fractions and offsets allowed; no zone: UTC) or relative to now,
    always meaning ago ('10m', '2h'; '-10m' is the same), as Unix seconds."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_SECS[m.group(2)]
    try:
        return parse_ns(text, assume_utc=True) / NS_PER_SEC
    except ValueError:
        raise ValueError(f"not a time: {text!r} (RFC 3339, or 30s, 10m, 2h, 1d ago)") from None


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ReplaySummary:
    """What a replay did; kept up to date as it goes, so an interrupted one can still say it."""

    events: int = 0  # dry run: matched; real run: delivered
    batches: int = 0
    message_bytes: int = 0  # UTF-8 bytes of the messages delivered (not the sink's encoding)
    failed_events: int = 0  # refused by the sink for good, or given up after --max-attempts
    send_seconds: float = 0.0  # from the sink's start to the last answer
    containers: dict[str, int] = field(default_factory=dict)
    corrupt_records: int = 0
    in_flight: int = 0  # events sent and not answered yet (an interrupted replay cannot know about them)
    first: tuple[int, str] | None = None  # (ns, as written) of the earliest event time seen
    last: tuple[int, str] | None = None

    def line(self) -> str:
        rate = self.events / self.send_seconds if self.send_seconds > 0 else 0.0
        return (f"replayed events={self.events} batches={self.batches} message_bytes={self.message_bytes} "
                f"failed_events={self.failed_events} containers={len(self.containers)} "
                f"send_seconds={self.send_seconds:.2f} rate={rate:,.0f} events/s "
                f"corrupt_records_skipped={self.corrupt_records}")

    def dry_line(self) -> str:
        first = self.first[1] if self.first else "-"
        last = self.last[1] if self.last else "-"
        return (f"replayed events={self.events} containers={len(self.containers)} first={first} last={last} "
                f"corrupt_records_skipped={self.corrupt_records}")

    def seen(self, b: Batch) -> None:
        """Count a batch as matched (dry run): events, containers and the span of their times."""
        self.batches += 1
        self.events += len(b)
        self.containers[b.container.name] = self.containers.get(b.container.name, 0) + len(b)
        for ev in b.events:
            try:
                ns = parse_ns(ev.timestamp, assume_utc=True)
            except ValueError:
                continue
            if self.first is None or ns < self.first[0]:
                self.first = (ns, ev.timestamp)
            if self.last is None or ns > self.last[0]:
                self.last = (ns, ev.timestamp)


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


def spool_dirs(cfg: Config) -> list[Path]:
    """The daemon's spools: its own, and each worker's (`[pipeline] workers`), whichever exist."""
    if cfg.buffer.type is not BufferType.DISK:
        raise ConfigError("buffer.type", "replay reads the disk spool: set buffer.type = \"disk\" "
                                         "(with retention_secs or retention_bytes to keep delivered events)")
    return [d / "spool" for d in state_dirs(cfg.state.path) if (d / "spool").is_dir()]


class SpoolsReader:
    """`SpoolReader` over several spools, one after the other (each in its own order: a container is read by
    one worker, so its events keep their order unless the number of workers changed while they were held)."""

    def __init__(self, directories: list[Path]) -> None:
        self.readers = [SpoolReader(d) for d in directories]

    @property
    def corrupt_records(self) -> int:
        return sum(r.corrupt_records for r in self.readers)

    def records(self, since: float | None = None, until: float | None = None,
                container: str | None = None) -> Iterator[ReplayRecord]:
        for r in self.readers:
            yield from r.records(since=since, until=until, container=container)


def check_window(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and until <= since:
        raise ReplayError(f"--until {rfc3339(until)} is not after --since {rfc3339(since)}: no event can be in "
                          "that window", 2)


async def replay(cfg: Config, sink_name: str, since: float | None, until: float | None, container: str | None,
                 dry_run: bool = False, max_attempts: int = 10, out: TextIO = sys.stdout,
                 summary: ReplaySummary | None = None) -> ReplaySummary:
    """Send every retained event in the window to `sink_name`, in spool order (so in order per container).

    Two passes over the spool: one to count (for the progress bar), one to send, so memory stays flat
    whatever the window holds. Records go in requests of up to the sink's `batch_max_events`. A sink that
    does not start within `max_attempts`, or a request still failing after `max_attempts`, ends the replay
    with a `ReplayError` (code 1) naming the time to replay again from: sending on would only reorder.
    Nothing is created when there is nothing to send. `summary` (made here when not given) is kept up to
    date, so the caller can report an interrupted replay.
    """
    summary = ReplaySummary() if summary is None else summary
    if sink_name not in cfg.sinks:
        raise ConfigError("--sink", f"no sink named {sink_name!r} (configured: {', '.join(cfg.sinks)})")
    check_window(since, until)
    directories = spool_dirs(cfg)
    if not directories:
        raise ReplayError(f"no spool in {cfg.state.path} (is buffer.type = \"disk\" and is this the daemon's "
                          "state dir?)", 2)
    reader = SpoolsReader(directories)
    if dry_run:
        try:
            for k, rec in enumerate(reader.records(since=since, until=until, container=container)):
                for ev in rec.batch.events:
                    out.write(f"{ev.timestamp} {rec.batch.container.name} {ev.stream} {ev.message[:200]!r}\n")
                summary.seen(rec.batch)
                if k % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            summary.corrupt_records = reader.corrupt_records
        return summary
    total = 0
    for k, rec in enumerate(SpoolsReader(directories).records(since=since, until=until, container=container)):
        total += len(rec.batch)
        if k % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    if total == 0:  # no sink started: a replay of nothing creates nothing
        return summary
    sc = cfg.sinks[sink_name]
    metrics = Metrics()
    sink = sink_class(sc.type)(sc, SinkContext(sink_name, cfg.state.path, cfg.host.resolved_name, metrics))
    runner = SinkRunner(sink_name, sink, None, metrics)
    progress = Progress(total)
    group: list[Batch] = []
    started = time.monotonic()

    async def flush() -> bool:
        """Send the group; False when it failed for good (`max_attempts` used up)."""
        if not group:
            return True
        n = sum(len(b) for b in group)
        summary.in_flight = n
        done = await runner.deliver(sink.encode(group), max_attempts)
        summary.in_flight = 0
        summary.failed_events += done.failed + done.rejected
        _delivered(summary, group, done.delivered, n)
        summary.send_seconds = time.monotonic() - started
        progress.update(summary.events)
        if done.failed:
            return False
        group.clear()
        return True

    try:
        try:
            await runner.start(max_attempts)
        except Exception as e:
            raise ReplayError(f"sink {sink_name!r} is down: it did not start in {max_attempts} attempts, the last "
                              f"failing with {e}; nothing was sent", 1) from e
        started = time.monotonic()
        pending = 0
        ok = True
        records = reader.records(since=since, until=until, container=container)
        for k, rec in enumerate(records):
            group.append(rec.batch)
            pending += len(rec.batch)
            if pending >= sc.batch_max_events:
                ok = await flush()
                if not ok:
                    break
                pending = 0
            elif k % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if ok:
            ok = await flush()
        if not ok:
            # Stop: sending on would only reorder. The rest is this request and every record after it, whose
            # earliest event time (spool order is not time order across containers) is where to go on from.
            earliest = _earliest(group, records)
            raise ReplayError(f"sink {sink_name!r}: a request of {sum(len(b) for b in group)} events still failed "
                              f"after {max_attempts} attempts ({runner.last_error}); replay stopped there, the "
                              f"rest was not sent. To send it, run again with --since {earliest} (and the same "
                              "--until/--container; events already sent after that time go again, with the "
                              "same event.id)", 1)
    finally:
        progress.update(summary.events, force=True)  # ends the bar's line, whatever ended the replay
        summary.corrupt_records = reader.corrupt_records
        await sink.close()
    return summary


def _earliest(group: list[Batch], rest: Iterator[ReplayRecord]) -> str:
    """The earliest event time, as written, in `group` and the records left in `rest`."""
    best: tuple[int, str] | None = None
    for b in itertools.chain(group, (rec.batch for rec in rest)):
        for ev in b.events:
            try:
                ns = parse_ns(ev.timestamp, assume_utc=True)
            except ValueError:
                continue
            if best is None or ns < best[0]:
                best = (ns, ev.timestamp)
    return best[1] if best else group[0].events[0].timestamp


def _delivered(summary: ReplaySummary, group: list[Batch], delivered: int, n: int) -> None:
    """Count what a request delivered. When the sink refused some events for good the runner does not say
    which, so message bytes are then counted in proportion."""
    nbytes = sum(len(ev.message.encode()) for b in group for ev in b.events)
    summary.message_bytes += nbytes if delivered == n else nbytes * delivered // max(n, 1)
    summary.events += delivered
    summary.batches += len(group)
    if delivered:
        for b in group:
            summary.containers[b.container.name] = summary.containers.get(b.container.name, 0) + len(b)
