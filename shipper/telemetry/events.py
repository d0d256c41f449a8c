"""One function per thing worth recording: each logs (key=value, once per reason where it could flood)
and updates its metric together, so no drop or failure is counted without being explained, or the reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shipper.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from shipper.event import Batch

log = logging.getLogger("shipper")
_said: set[tuple[str, ...]] = set()


def _once(*key: str) -> bool:
    """True the first time `key` is seen: a flood of one failure gives one log line and a counter."""
    if key in _said:
        return False
    if len(_said) > 10_000:
        _said.clear()
    _said.add(key)
    return True


def line_invalid(m: Metrics, container: str, reason: str, sample: bytes | str = b"", n: int = 1) -> None:
    m.inc("shipper_lines_invalid_total", n, container=container, reason=reason)
    if _once("invalid", container, reason):
        log.warning("skipped log entry container=%s reason=%s sample=%r (counted in "
                    "shipper_lines_invalid_total; logged once per container and reason)",
                    container, reason, sample[:120])


def event_truncated(m: Metrics, container: str, where: str, size: int, limit: int) -> None:
    m.inc("shipper_events_truncated_total", container=container, where=where)
    if _once("truncated", container, where):
        log.warning("truncated event container=%s where=%s size=%d limit=%d (flagged 'truncated'; "
                    "logged once per container)", container, where, size, limit)


def log_gap(m: Metrics, container: str, reason: str, lost_bytes: int) -> None:
    m.inc("shipper_log_gap_total", container=container, reason=reason)
    if lost_bytes > 0:
        m.inc("shipper_log_gap_bytes_total", lost_bytes, container=container, reason=reason)
    log.error("log data lost before it was read container=%s reason=%s lost_bytes=%s",
              container, reason, lost_bytes if lost_bytes >= 0 else "unknown")


def events_dropped(m: Metrics, reason: str, n: int, where: str = "") -> None:
    m.inc("shipper_events_dropped_total", n, reason=reason, where=where)
    if _once("dropped", reason, where):
        log.error("dropped events count=%d reason=%s where=%s (counted in shipper_events_dropped_total; "
                  "logged once per reason)", n, reason, where)


def sink_retry(m: Metrics, sink: str, error: BaseException, attempt: int, delay: float, what: str = "send") -> None:
    m.inc("shipper_sink_retries_total", sink=sink)
    level = logging.WARNING if attempt <= 1 or attempt % 10 == 0 else logging.DEBUG
    log.log(level, "sink %s failed, will retry sink=%s attempt=%d retry_in=%.2fs error=%r",
            what, sink, attempt, delay, error)


def sink_rejected(m: Metrics, sink: str, n: int, error: BaseException) -> None:
    """The destination refused events for good (they can never succeed): dropped, with the reason."""
    m.inc("shipper_events_dropped_total", n, reason="sink_rejected", where=sink)
    if _once("rejected", sink, type(error).__name__):
        log.error("sink refused events for good count=%d sink=%s error=%r (counted in "
                  "shipper_events_dropped_total{reason=\"sink_rejected\"}; logged once per sink and kind)",
                  n, sink, error)


def request_given_up(m: Metrics, sink: str, batches: Sequence[Batch], n: int, error: BaseException,
                     reason: str) -> None:
    """A request that failed for a reason that is not an outage, too often: given up, so it cannot stall
    the sink. The log line names its time window and containers, for `shipper replay`."""
    m.inc("shipper_events_dropped_total", n, reason=reason, where=sink)
    stamps = [ev.timestamp for b in batches for ev in (b.events[0], b.events[-1]) if b.events]
    names = sorted({b.container.name for b in batches})
    log.error("sink gave up a request count=%d sink=%s reason=%s error=%r since=%s until=%s containers=%s "
              "(counted in shipper_events_dropped_total; with a disk spool and retention, `shipper replay "
              "--since/--until` can send it again)", n, sink, reason, error, min(stamps, default="-"),
              max(stamps, default="-"), ",".join(names[:20]))


SINK_STATES = {"up": 0, "retrying": 1, "failing": 2, "starting": 3}


def sink_state(m: Metrics, sink: str, state: str) -> None:
    """Called on every change of a sink's state (the runner keeps the previous one)."""
    log.info("sink state changed sink=%s state=%s", sink, state)
    m.set("shipper_sink_state", SINK_STATES[state], sink=sink)


def spool_push_failed(m: Metrics, error: BaseException, retry_in: float) -> None:
    m.inc("shipper_spool_write_errors_total")
    if _once("spool_push", type(error).__name__):
        log.error("cannot write to the spool, reading is paused until it can error=%r retry_in=%.1fs "
                  "(counted in shipper_spool_write_errors_total; Docker keeps the logs meanwhile)", error, retry_in)


def torn_output_cut(m: Metrics, sink: str, path: str, nbytes: int) -> None:
    m.inc("shipper_sink_torn_bytes_total", nbytes, sink=sink)
    log.warning("cut a torn last line left by a crash sink=%s path=%s bytes=%d (its batch is sent again whole)",
                sink, path, nbytes)


def spool_corrupt(m: Metrics, reason: str, records: int, nbytes: int, where: str) -> None:
    """Damage found in the spool; logged once per place and reason (a bad disk must not flood)."""
    if records:
        m.inc("shipper_spool_corrupt_records_total", records, reason=reason)
    if nbytes:
        m.inc("shipper_spool_corrupt_bytes_total", nbytes, reason=reason)
    if _once("spool_corrupt", where, reason):
        log.error("spool damage skipped reason=%s records=%d bytes=%d where=%s (the rest is delivered; "
                  "counted in shipper_spool_corrupt_records_total)", reason, records, nbytes, where)
