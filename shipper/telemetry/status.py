"""What /status, /health and the status page say, gathered in one place from the running app.

`Status` samples the app every `STEP_SECS`: counters into a 15-minute history (events/s in and out per sink,
buffer fill, for the page's charts and `events_per_sec`), each container's lag into its gauges, the pause of
reading when the buffer is full (one log line when it starts, one when it ends). It measures the event loop's
lag (a timer's lateness) and keeps, per container, the time of the newest event read and the newest each
sink delivered; the runner calls `delivered` once per request, the app's push calls `pushed` once per batch.

Seconds behind, for a container: now minus the time of the newest of its events that every sink delivered;
0 when nothing of it is left to deliver (its reader is at the end of its log and every sink has delivered its
newest event read), so an idle container is not "behind". Bytes behind: for a json-file reader, what its files
hold past its offset (the live file, and the file being read when it is an older one; files between them are
not counted: at least this much); API readers cannot tell (null).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipper import __version__, compiled
from shipper.timefmt import parse_ns

if TYPE_CHECKING:
    from shipper.app import App
    from shipper.event import Batch
    from shipper.sources.base import LogSource

log = logging.getLogger("shipper")
STEP_SECS = 2.0  # one sample of the history
HISTORY_SECS = 15 * 60
RATE_WINDOW_SECS = 60.0
LOOP_TICK_SECS = 0.25
LOOP_STALLED_SECS = 1.0  # a timer woken this late (within the last LOOP_RECENT_SECS) makes /health fail
LOOP_RECENT_SECS = 10.0
PAUSE_AFTER_SECS = 0.5  # a push waiting this long means reading is paused


@dataclass
class Sample:
    t: float  # unix time
    read: float
    sent: dict[str, float]
    buffer_fill: float


@dataclass
class ContainerLag:
    newest_read: str = ""  # RFC 3339 of the newest event pushed into the buffer
    first_read: str = ""  # and of the first
    delivered: dict[str, str] = field(default_factory=dict)  # sink -> RFC 3339 of its newest delivered event


def _ts(text: str) -> float | None:
    if not text:
        return None
    try:
        return parse_ns(text) / 1e9
    except ValueError:
        return None


def bytes_behind(source: LogSource) -> int | None:
    """Bytes of a json-file reader's log not read yet (at least); None for readers that cannot tell."""
    path = getattr(source, "path", None)
    cur = getattr(source, "_cur", None)
    if not path or cur is None or getattr(cur, "fd", -1) < 0:
        return None
    try:
        behind = max(0, os.fstat(cur.fd).st_size - int(source._offset))  # type: ignore[attr-defined]
        live = os.stat(path)
    except (OSError, AttributeError, ValueError):
        return None
    if (live.st_dev, live.st_ino) != (cur.dev, cur.ino):  # reading a rotated file: the live one is all ahead
        behind += live.st_size
    return behind


class Status:
    def __init__(self, app: App) -> None:
        self.app = app
        self.metrics = app.metrics
        self.started_at = time.time()
        self.history: deque[Sample] = deque(maxlen=int(HISTORY_SECS / STEP_SECS) + 1)
        self.lags: dict[str, ContainerLag] = {}  # container id -> its lag
        self.loop_lag = 0.0  # the last measured
        self._loop_lags: deque[tuple[float, float]] = deque(maxlen=int(LOOP_RECENT_SECS / LOOP_TICK_SECS))
        self._loop_tick = time.monotonic()
        self._pushing: dict[int, float] = {}  # id(batch) -> monotonic time its push began
        self.paused_since = 0.0  # monotonic, 0 while reading flows
        self.pause_reason = ""
        self._labelled: dict[str, str] = {}  # container id -> the label its lag gauges carry
        self.metrics.set("shipper_build_info", 1, version=__version__, compiled=str(compiled()).lower())
        self.metrics.set("shipper_buffer_max_bytes", app.config.buffer.limit_bytes)

    # --- called by the pipeline (per batch or per request) -----------------------------------------------

    def push_started(self, batch: Batch) -> None:
        self._pushing[id(batch)] = time.monotonic()

    def push_ended(self, batch: Batch) -> None:
        """The push is over: done, or given up (its reader was stopped)."""
        self._pushing.pop(id(batch), None)

    def pushed(self, batch: Batch) -> None:
        if batch.events:
            lag = self.lags.get(batch.container.id)
            if lag is None:
                lag = self.lags[batch.container.id] = ContainerLag()
            ts = batch.events[-1].timestamp
            if not lag.first_read:
                lag.first_read = batch.events[0].timestamp
            if ts > lag.newest_read:
                lag.newest_read = ts

    def delivered(self, sink: str, batches: Sequence[Batch]) -> None:
        for b in batches:
            if not b.events:
                continue
            lag = self.lags.get(b.container.id)
            if lag is None:
                lag = self.lags[b.container.id] = ContainerLag()
            ts = b.events[-1].timestamp
            if ts > lag.delivered.get(sink, ""):
                lag.delivered[sink] = ts

    def forget(self, container_id: str) -> None:
        self.lags.pop(container_id, None)
        self._labelled.pop(container_id, None)

    # --- the periodic work ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every STEP_SECS and watch the event loop's lag (every LOOP_TICK_SECS)."""
        next_sample = 0.0
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_TICK_SECS)
            now = time.monotonic()
            self.loop_lag = max(0.0, now - before - LOOP_TICK_SECS)
            self._loop_tick = now
            self._loop_lags.append((now, self.loop_lag))
            self.metrics.observe("shipper_event_loop_lag_seconds", self.loop_lag)
            if now >= next_sample:
                next_sample = now + STEP_SECS
                self.sample()

    def sample(self) -> None:
        m = self.metrics
        sent = {n: float(r.sent_events) for n, r in self.app.runners.items()}
        self.history.append(Sample(time.time(), m.get("shipper_events_read_total"), sent, self.buffer_fill()))
        for n, r in self.app.runners.items():
            m.set("shipper_sink_in_flight_requests", r.in_flight, sink=n)
            if r.last_success:
                m.set("shipper_sink_last_success_timestamp_seconds", r.last_success, sink=n)
        self._container_gauges()
        self._watch_pause()

    def _container_gauges(self) -> None:
        m = self.metrics
        for cid, c in self.containers().items():
            name = c["name"]
            if self._labelled.get(cid, name) != name:  # renamed: the old label's series go
                m.forget_container(self._labelled[cid])
            self._labelled[cid] = name
            if c["bytes_behind"] is not None:
                m.set("shipper_container_lag_bytes", c["bytes_behind"], container=name)
            if c["seconds_behind"] is not None:
                m.set("shipper_container_lag_seconds", c["seconds_behind"], container=name)

    def refresh_gauges(self) -> None:
        """The gauges that change between samples, brought up to date (before /metrics is rendered)."""
        for n, r in self.app.runners.items():
            self.metrics.set("shipper_sink_in_flight_requests", r.in_flight, sink=n)
        self._container_gauges()
        watch = getattr(self.app, "docker_watch", None)
        if watch is not None:
            watch.snapshot()

    def _watch_pause(self) -> None:
        now = time.monotonic()
        waiting = min(self._pushing.values(), default=0.0)
        if waiting and now - waiting >= PAUSE_AFTER_SECS:
            if not self.paused_since:
                self.paused_since = waiting
                self.pause_reason = "spool_unwritable" if self.app._spool_failing else "buffer_full"
                b = self.app.buffer.stats() if self.app.buffer else {}
                log.warning("reading paused: the buffer is full reason=%s buffered_events=%s buffered_bytes=%s "
                            "fill=%.0f%% (Docker keeps the logs meanwhile; reading resumes as sinks deliver)",
                            self.pause_reason, b.get("events", "-"), b.get("bytes", "-"), 100 * self.buffer_fill())
                self.metrics.set("shipper_reading_paused", 1)
                self.metrics.inc("shipper_reading_pauses_total", reason=self.pause_reason)
        elif self.paused_since and not waiting:
            log.info("reading resumed after paused_secs=%.1f reason=%s", now - self.paused_since, self.pause_reason)
            self.paused_since = 0.0
            self.metrics.set("shipper_reading_paused", 0)

    # --- what is reported ------------------------------------------------------------------------------------

    def buffer_fill(self) -> float:
        buf = self.app.buffer
        if buf is None:
            return 0.0
        s = buf.stats()
        limit = self.app.config.buffer.limit_bytes
        fill = s.get("bytes", 0) / limit if limit else 0.0
        max_events = getattr(buf, "max_events", 0)
        if max_events:
            fill = max(fill, s.get("events", 0) / max_events)
        return round(min(fill, 1.0), 4)

    def rate(self, sink: str | None, window: float = RATE_WINDOW_SECS) -> float:
        """Events/s over the last `window` seconds: read (sink None) or delivered by `sink`."""
        if len(self.history) < 2:
            return 0.0
        last = self.history[-1]
        first = next((s for s in self.history if last.t - s.t <= window + STEP_SECS / 2), self.history[0])
        dt = last.t - first.t
        if dt <= 0:
            return 0.0
        if sink is None:
            return round((last.read - first.read) / dt, 2)
        return round((last.sent.get(sink, 0.0) - first.sent.get(sink, 0.0)) / dt, 2)

    def seconds_behind(self, cid: str, at_end: bool) -> float | None:
        lag = self.lags.get(cid)
        if lag is None or not lag.newest_read:
            return None
        sinks = list(self.app.runners)
        newest = [lag.delivered.get(s, "") for s in sinks]
        if at_end and all(n >= lag.newest_read for n in newest):
            return 0.0
        since = _ts(min(newest)) if all(newest) else _ts(lag.first_read)  # a sink with none: since the first
        if since is None:
            return None
        return round(max(0.0, time.time() - since), 3)

    def containers(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cid, r in list(self.app.readers.items()):
            behind = bytes_behind(r.source)
            at_end = behind == 0 if behind is not None else True
            label = r.source.meta.name or cid[:12]
            said = self.metrics.last_errors.get(label)
            last_error = f"{_iso(said[0])} {said[1]}" if said else ""
            out[cid] = {"id": cid[:12], "name": r.source.meta.name or cid[:12], "reader": _reader_kind(r.kind),
                        "bytes_behind": behind, "seconds_behind": self.seconds_behind(cid, at_end),
                        "last_error": last_error or ""}
        return out

    def sinks(self) -> dict[str, dict[str, Any]]:
        out = {}
        for n, r in self.app.runners.items():
            s = r.status()
            out[n] = {"type": getattr(r.sink.config, "type", ""), "state": s["state"], "in_flight": s["in_flight"],
                      "pending_events": s["pending_events"], "sent_events": s["sent_events"],
                      "events_per_sec": self.rate(n), "last_error": s["last_error"],
                      "last_success": _iso(float(s["last_success"] or 0.0))}  # type: ignore[arg-type]
        return out

    def drops(self) -> dict[str, Any]:
        m = self.metrics

        def by(name: str, *keys: str) -> dict[str, float]:
            out: dict[str, float] = {}
            for labels, v in m.series(name).items():
                d = dict(labels)
                k = "/".join(d.get(x, "") for x in keys if d.get(x, ""))
                out[k or "-"] = out.get(k or "-", 0) + v
            return {k: v for k, v in sorted(out.items()) if v}

        return {"dropped": by("shipper_events_dropped_total", "reason", "where"),
                "truncated": by("shipper_events_truncated_total", "where"),
                "invalid": by("shipper_lines_invalid_total", "reason"),
                "log_gaps": by("shipper_log_gap_total", "reason"),
                "unreadable_containers": by("shipper_containers_unreadable_total", "reason")}

    def snapshot(self) -> dict[str, Any]:
        """The /status document."""
        app = self.app
        buf = app.buffer.stats() if app.buffer else {}
        watch = getattr(app, "docker_watch", None)
        healthy, reasons = self.health()
        return {
            "version": __version__, "compiled": compiled(), "time": _iso(time.time()), "started": _iso(self.started_at),
            "healthy": healthy, "problems": reasons,
            "containers": sorted(self.containers().values(), key=lambda c: c["name"]),
            "waiting_inspect": {cid[:12]: p.info.meta.name for cid, p in app.pending.items()},
            "sinks": self.sinks(),
            "events_read_per_sec": self.rate(None),
            "buffer": {"type": app.config.buffer.type.value, "events": buf.get("events", 0),
                       "bytes": buf.get("bytes", 0), "max_bytes": app.config.buffer.limit_bytes,
                       "fill": self.buffer_fill(),
                       "reading_paused": bool(self.paused_since), "pause_reason": self.pause_reason},
            "drops": self.drops(),
            "docker": {"discovery": app._docker_state(), **(watch.snapshot() if watch is not None else {})},
            "event_loop_lag_secs": round(self.loop_lag, 4),
            "history": self.history_doc(),
        }

    def history_doc(self) -> dict[str, Any]:
        """Per-step rates (events/s) for the charts: t, in, out per sink, buffer fill."""
        pts = list(self.history)
        out: dict[str, Any] = {"step_secs": STEP_SECS, "t": [], "in": [], "out": {n: [] for n in self.app.runners},
                               "buffer_fill": []}
        for a, b in itertools.pairwise(pts):
            dt = b.t - a.t or STEP_SECS
            out["t"].append(round(b.t, 1))
            out["in"].append(round((b.read - a.read) / dt, 2))
            for n in out["out"]:
                out["out"][n].append(round((b.sent.get(n, 0.0) - a.sent.get(n, 0.0)) / dt, 2))
            out["buffer_fill"].append(b.buffer_fill)
        return out

    # --- health ----------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, list[str]]:
        """(healthy, the reasons it is not): discovery synced, every sink up or within its retry budget, the
        spool writable, the event loop not stalled."""
        app = self.app
        reasons: list[str] = []
        d = app.discovery
        if d is None:
            reasons.append("discovery: not started")
        else:
            synced = getattr(d, "synced", None)
            if isinstance(synced, asyncio.Event) and not synced.is_set():
                reasons.append(f"discovery: not synced with the Docker daemon (state {app._docker_state()})")
            elif getattr(d, "_root_missing", False):
                reasons.append("discovery: the Docker data root cannot be scanned")
        for n, r in app.runners.items():
            if r.state == "failing":
                reasons.append(f"sink {n}: failing, retries past its budget (last error: {r.last_error})")
        if app._spool_failing:
            reasons.append("buffer: the spool cannot be written (reading paused)")
        now = time.monotonic()
        worst = max((lag for t, lag in self._loop_lags if now - t <= LOOP_RECENT_SECS), default=0.0)
        if worst >= LOOP_STALLED_SECS:
            reasons.append(f"event loop: stalled {worst:.2f}s within the last {LOOP_RECENT_SECS:.0f}s")
        elif self._loop_lags and now - self._loop_tick > LOOP_STALLED_SECS + LOOP_TICK_SECS:
            reasons.append(f"event loop: its lag monitor has not run for {now - self._loop_tick:.1f}s")
        return not reasons, reasons

    def ready(self) -> tuple[bool, str]:
        """Ready once started and discovery has synced at least once; not while stopping."""
        app = self.app
        if app._stop.is_set():
            return False, "stopping"
        if not app.started.is_set():
            return False, "starting"
        d = app.discovery
        synced = getattr(d, "synced", None)
        if d is None or (isinstance(synced, asyncio.Event) and not synced.is_set()
                         and not getattr(d, "_connected_once", True)):
            return False, "discovery has not synced yet"
        return True, "ready"


def _reader_kind(kind: str) -> str:
    return {"JsonFileSource": "json-file", "ApiSource": "api"}.get(kind, kind)


def _iso(t: float) -> str | None:
    if not t:
        return None
    with contextlib.suppress(ValueError, OverflowError, OSError):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
    return None
