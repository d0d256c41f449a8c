"""Every metric shipper exports, declared once (type, help, label names), on prometheus_client.

`HELP` is the one list: a name maps to `counter(...)`, `gauge(...)` or `histogram(...)` with its label names.
(A bare help string is accepted too: the type then follows the name, `_total` a counter, else a gauge, and
the label names are fixed by the first use.) Using a name that is not declared raises `UndeclaredMetric`,
so a metric cannot be added without its declaration; a label that is not declared raises `ValueError`.

Call sites keep one small API: `inc`, `set`, `observe`, `get`, `snapshot`, `render`. They are called per
batch, never per event; each call is a dict lookup (the labelled child is cached) and a locked add.

Per-container series are removed by `forget_container` once a container is gone, so container churn does not
grow the exposition without bound; `get` without labels still includes what the forgotten series had counted,
so totals (the stats line, `/status`) never go backwards. Each `Metrics` has its own registry (tests make
many); the process collectors (CPU, RSS, open fds) are in the registry the daemon exports.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

prometheus_client.disable_created_metrics()  # no *_created series: they double every counter for nothing

Labels = tuple[tuple[str, str], ...]
Kind = Literal["counter", "gauge", "histogram"]
CONTAINER = "container"


class UndeclaredMetric(KeyError):
    """A metric name used without a declaration in `HELP`: a bug, meant to fail the tests that reach it."""


@dataclass(frozen=True)
class Spec:
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)  # a label a call site may leave out
    buckets: tuple[float, ...] = ()


def counter(help: str, *labels: str, **defaults: str) -> Spec:
    return Spec("counter", help, labels, defaults)


def gauge(help: str, *labels: str, **defaults: str) -> Spec:
    return Spec("gauge", help, labels, defaults)


def histogram(help: str, *labels: str, buckets: tuple[float, ...]) -> Spec:
    return Spec("histogram", help, labels, {}, buckets)


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HELP: dict[str, Spec | str] = {
    # --- reading ---
    "shipper_events_read_total": counter("Events rebuilt from container logs.", "container"),
    "shipper_entries_read_total": counter("json-file entries or API frames read.", "container"),
    "shipper_bytes_read_total": counter("Log bytes read.", "container"),
    "shipper_lines_invalid_total": counter("Log entries that could not be parsed, by reason (skipped).",
                                           "container", "reason"),
    "shipper_events_truncated_total": counter("Events cut at max_event_bytes or a sink's size limit.",
                                              "container", "where"),
    "shipper_json_unparsed_total": counter("Lines that looked like JSON but did not parse; shipped as text.",
                                           "container"),
    "shipper_log_gap_total": counter("Times log data was lost before being read (rotated away, compressed, "
                                     "truncated).", "container", "reason"),
    "shipper_log_gap_bytes_total": counter("Bytes of log data lost before being read: exact, or the least the "
                                           "files prove.", "container", "reason"),
    "shipper_log_gap_lines_total": counter("Log entries lost before being read: exact, or the least the files "
                                           "prove.", "container", "reason"),
    "shipper_log_gap_possible_total": counter("Times log data may have been lost before being read; the reader "
                                              "cannot tell.", "container", "reason"),
    "shipper_reader_failures_total": counter("Failures of a container's log reader (each is retried with "
                                             "backoff).", "container"),
    "shipper_containers_unreadable_total": counter("Containers whose log cannot be read, by reason (not shipped).",
                                                   "reason"),
    "shipper_containers": gauge("Containers being read."),
    "shipper_container_lag_bytes": gauge("Bytes of a container's json-file log not read yet (API readers: "
                                         "not exported).", "container"),
    "shipper_container_lag_seconds": gauge("Now minus the time of the newest event of a container a sink "
                                           "delivered (the slowest sink).", "container"),
    "shipper_reading_paused": gauge("1 while reading waits because the buffer is full or the spool cannot be "
                                    "written."),
    "shipper_reading_pauses_total": counter("Times reading paused: the buffer was full or the spool could not "
                                            "be written.", "reason"),
    # --- delivery ---
    "shipper_events_sent_total": counter("Events a sink delivered.", "sink"),
    "shipper_events_dropped_total": counter("Events dropped, by reason.", "reason", "where"),
    "shipper_sink_retries_total": counter("Sends that failed and were retried.", "sink"),
    "shipper_sink_state": gauge("Sink state: 0 up, 1 retrying, 2 failing, 3 starting.", "sink"),
    "shipper_sink_in_flight_requests": gauge("Requests a sink has sent and not yet had acknowledged.", "sink"),
    "shipper_sink_last_success_timestamp_seconds": gauge("Unix time of a sink's last delivered request.",
                                                         "sink"),
    "shipper_sink_failovers_total": counter("Times a sink moved to another of its addresses.", "sink"),
    "shipper_sink_stalls_total": counter("Times a stream receiver acknowledged nothing for write_timeout_secs.",
                                         "sink"),
    "shipper_sink_resent_events_total": counter("Events sent again: their connection was lost before they were "
                                                "acknowledged.", "sink"),
    "shipper_sink_file_slow_writes_total": counter("Writes of a file sink that took longer than 50 ms on the "
                                                   "event loop; its writes then go through a thread for a "
                                                   "minute.", "sink"),
    "shipper_sink_file_followed_total": counter("Times a file sink reopened its path (removed, moved, replaced, "
                                                "truncated).", "sink", "reason"),
    "shipper_sink_torn_bytes_total": counter("Bytes of a torn last line (left by a crash) a file sink cut at "
                                             "start or before its next write.", "sink"),
    "shipper_kafka_records_sent_total": counter("Records a Kafka sink had acknowledged by the broker.", "sink",
                                                "topic"),
    "shipper_kafka_bytes_sent_total": counter("Bytes (key, value, headers; before compression) of records a Kafka "
                                              "sink had acknowledged.", "sink", "topic"),
    "shipper_kafka_errors_total": counter("Records a Kafka send failed for, by kind of error (retried, or "
                                          "dropped for record_too_large and invalid_record).", "sink", "topic",
                                          "kind"),
    "shipper_kafka_request_seconds": histogram("Time from a Kafka request's send to the broker's last "
                                               "acknowledgement.", "sink", "topic", buckets=LATENCY_BUCKETS),
    "shipper_kafka_oversize_events_total": counter("Events larger than a Kafka sink's max_message_bytes, by "
                                                   "action (truncate, drop).", "sink", "container", "action"),
    "shipper_logstash_windows_total": counter("Lumberjack windows a Logstash host acknowledged in full.", "sink",
                                              "host"),
    "shipper_logstash_events_acked_total": counter("Events a Logstash host acknowledged (beats: ACKs; json_lines: "
                                                   "TCP acknowledgements; http: 2xx responses).", "sink", "host"),
    "shipper_logstash_partial_acks_total": counter("ACKs covering part of a Lumberjack window.", "sink", "host"),
    "shipper_logstash_keepalives_total": counter("Keep-alive ACKs (sequence 0 or repeated) from a busy Logstash.",
                                                 "sink", "host"),
    "shipper_logstash_host_failures_total": counter("Times a Logstash host failed (connect, window, timeout, "
                                                    "request).", "sink", "host", "what"),
    "shipper_logstash_host_up": gauge("1 while a Logstash host works, 0 after it failed until it works again.",
                                      "sink", "host"),
    "shipper_logstash_window_size": gauge("Events the next Lumberjack window to a host may carry (adaptive).",
                                          "sink", "host"),
    "shipper_logstash_events_moved_total": counter("Events not acknowledged by a failed Logstash host, sent to "
                                                   "another (possible duplicates).", "sink", "host"),
    "shipper_logstash_http_responses_total": counter("HTTP responses from Logstash's http input, by status.",
                                                     "sink", "host", "status"),
    # --- buffer and spool ---
    "shipper_buffer_events": gauge("Events in the buffer."),
    "shipper_buffer_bytes": gauge("Bytes in the buffer."),
    "shipper_buffer_max_bytes": gauge("The buffer's limit in bytes (buffer.max_bytes, or its default for the type)."),
    "shipper_spool_write_errors_total": counter("Pushes the disk spool refused (disk full, I/O error); reading "
                                                "waited."),
    "shipper_spool_corrupt_records_total": counter("Spool records that failed their check and were skipped or "
                                                   "cut.", "reason"),
    "shipper_spool_corrupt_bytes_total": counter("Bytes of spool records that failed their check.", "reason"),
    "shipper_spool_segments": gauge("Spool segment files on disk."),
    "shipper_spool_cursor_lag_events": gauge("Events in the spool a sink has not acknowledged yet.", "sink"),
    # --- the process ---
    "shipper_task_restarts_total": counter("Times a long-lived task failed and was restarted.", "task"),
    "shipper_config_reloads_total": counter("Config reloads (SIGHUP), by result: applied, or refused (a bad "
                                            "config; the running one kept).", "result"),
    "shipper_event_loop_lag_seconds": histogram("How late the event loop woke a timer: its lag, measured every "
                                                "0.25 s.", buckets=LATENCY_BUCKETS),
    "shipper_build_info": gauge("Always 1; the version, and whether the hot path is compiled, are labels.",
                                "version", "compiled"),
    # --- workers ([pipeline] workers > 1: served by the supervisor, every other series with a worker label) ---
    "shipper_workers_up": gauge("1 while a worker runs and answers its supervisor, else 0.", "worker"),
    "shipper_worker_restarts_total": counter("Workers started again after they ended unexpectedly.", "worker"),
    # --- the Docker daemon ---
    "shipper_docker_reconnects_total": counter("Times the Docker event stream (where=events) or a log stream "
                                               "(where=logs) was reconnected.", "where", where="events"),
    "shipper_docker_api_state": gauge("Engine API state: 0 connected, 1 unreachable, 2 client certificate "
                                      "refused, 3 connecting."),
    "shipper_docker_events_invalid_total": counter("Docker events that could not be read (skipped)."),
    "shipper_docker_config_invalid_total": counter("Container metadata that could not be read (skipped, "
                                                   "retried)."),
    "shipper_docker_client_cert_refused_total": counter("Connections to the Engine API whose TLS peer refused "
                                                        "shipper's client certificate."),
    "shipper_docker_event_queue_full_total": counter("Times discovery's event queue was full: /events reading "
                                                     "paused, then resubscribed and relisted to catch up."),
    "shipper_docker_inspect_failures_total": counter("Containers that could not be inspected after retries."),
    "shipper_docker_up": gauge("1 when the Docker daemon answered its last ping, else 0."),
    "shipper_docker_ping_seconds": histogram("Time the Docker daemon took to answer a ping.",
                                             buckets=LATENCY_BUCKETS),
    "shipper_docker_info": gauge("Always 1 while known; the daemon's version, API version and ID are labels.",
                                 "version", "api_version", "daemon_id"),
    "shipper_docker_start_time_seconds": gauge("Unix time the Docker daemon started (a change is a restart)."),
    "shipper_docker_restarts_total": counter("Restarts of the Docker daemon seen (its ID or start time changed)."),
    "shipper_docker_events_connected": gauge("1 while discovery's /events stream is connected."),
    "shipper_docker_last_event_age_seconds": gauge("Seconds since discovery last received a Docker event."),
    "shipper_docker_containers": gauge("Containers on the host by state (running, exited, paused, ...).",
                                       "state"),
    "shipper_docker_log_bytes": gauge("Bytes of json-file logs on disk under the data root (live and rotated)."),
    "shipper_docker_log_fs_free_bytes": gauge("Free bytes of the filesystem that holds the json-file logs."),
    "shipper_docker_log_fs_size_bytes": gauge("Size of the filesystem that holds the json-file logs."),
}


def spec_of(name: str) -> Spec:
    """The declaration of `name`; a bare help string is read by the naming convention."""
    try:
        s = HELP[name]
    except KeyError:
        raise UndeclaredMetric(f"metric {name!r} is not declared in shipper.telemetry.metrics.HELP") from None
    if isinstance(s, Spec):
        return s
    return Spec("counter" if name.endswith("_total") else "gauge", s)


class Metrics:
    def __init__(self, process: bool = False) -> None:
        """`process`: also export the process's CPU, memory and fds (the daemon's registry)."""
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            prometheus_client.ProcessCollector(registry=self.registry)
            prometheus_client.PlatformCollector(registry=self.registry)
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._specs: dict[str, Spec] = {}
        self._children: dict[tuple[str, Labels], object] = {}
        self._retired: dict[str, float] = {}  # what forgotten series of a counter had counted
        self.last_errors: dict[str, tuple[float, str]] = {}  # container -> (unix time, the last error said)
        self._lock = threading.Lock()
        for name, declared in HELP.items():
            if isinstance(declared, Spec):  # bare help strings wait for their first use to learn their labels
                self._family(name)

    # --- the call-site API ---------------------------------------------------------------------------------

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        child = self._children.get((name, tuple(sorted(labels.items()))))
        if child is None:
            child = self._child(name, labels)
        child.inc(value)  # type: ignore[attr-defined]

    def set(self, name: str, value: float, **labels: str) -> None:
        child = self._children.get((name, tuple(sorted(labels.items()))))
        if child is None:
            child = self._child(name, labels)
        child.set(value)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: str) -> None:
        child = self._children.get((name, tuple(sorted(labels.items()))))
        if child is None:
            child = self._child(name, labels)
        child.observe(value)  # type: ignore[attr-defined]

    def get(self, name: str, **labels: str) -> float:
        """The sum of the series of `name` whose labels include `labels` (no labels: every series, including
        those of forgotten containers). A histogram gives its count of observations."""
        total = 0.0 if labels else self._retired.get(name, 0.0)
        for lab, value in self.series(name).items():
            d = dict(lab)
            if all(d.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def series(self, name: str) -> dict[Labels, float]:
        """Every series of `name` and its value (histograms: the count of observations)."""
        spec = self._spec(name)
        fam = self._family(name)
        want = name + "_count" if spec.kind == "histogram" else name
        out: dict[Labels, float] = {}
        for mf in fam.collect():
            for s in mf.samples:
                if s.name == want:
                    out[tuple(sorted(s.labels.items()))] = s.value
        return out

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        return {name: self.series(name) for name in self._families if self.series(name)}

    def render(self) -> str:
        """Prometheus text exposition format. Every digit is kept (1855841 is written 1.855841e+06, as Go
        writes it); the renderer this replaced used `:g`, which cut it to 1.85584e+06."""
        return generate_latest(self.registry).decode()

    def note_error(self, container: str, text: str) -> None:
        """Keep the last error said about a container's reading, for /status (the log line says it in full)."""
        self.last_errors[container] = (time.time(), text[:300])

    def forget_container(self, container: str) -> int:
        """Remove every series labelled with `container` (it is gone); counters' values are kept in the
        totals `get` gives. Returns the number of series removed."""
        removed = 0
        self.last_errors.pop(container, None)
        with self._lock:
            for name, spec in self._specs.items():
                if CONTAINER not in spec.labels:
                    continue
                fam = self._families[name]
                for lab, value in self.series(name).items():
                    d = dict(lab)
                    if d.get(CONTAINER) != container:
                        continue
                    if spec.kind == "counter":
                        self._retired[name] = self._retired.get(name, 0.0) + value
                    fam.remove(*(d[k] for k in spec.labels))
                    removed += 1
                for key in [k for k in self._children if k[0] == name and dict(k[1]).get(CONTAINER) == container]:
                    del self._children[key]
        return removed

    def remove(self, name: str, **labels: str) -> None:
        """Remove one series (a sink or a state that no longer exists)."""
        spec = self._spec(name)
        values = self._label_values(name, spec, labels)
        with self._lock:
            self._children.pop((name, tuple(sorted(labels.items()))), None)
            with contextlib.suppress(KeyError):
                self._family(name).remove(*values)

    def clear(self, name: str) -> None:
        """Remove every series of a labelled gauge (before setting a fresh set of them)."""
        with self._lock:
            self._family(name).clear()
            for key in [k for k in self._children if k[0] == name]:
                del self._children[key]

    # --- declarations ----------------------------------------------------------------------------------------

    def _spec(self, name: str) -> Spec:
        spec = self._specs.get(name)
        if spec is None:
            self._family(name)
            spec = self._specs[name]
        return spec

    def _family(self, name: str, labels: tuple[str, ...] = ()) -> Counter | Gauge | Histogram:
        known = self._families.get(name)
        if known is not None:
            return known
        spec = spec_of(name)
        if labels and not spec.labels:
            spec = Spec(spec.kind, spec.help, labels)
        fam: Counter | Gauge | Histogram
        if spec.kind == "counter":
            fam = Counter(name, spec.help, spec.labels, registry=self.registry)
        elif spec.kind == "gauge":
            fam = Gauge(name, spec.help, spec.labels, registry=self.registry)
        else:
            fam = Histogram(name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)
        self._families[name] = fam
        self._specs[name] = spec
        return fam

    def _label_values(self, name: str, spec: Spec, labels: Mapping[str, str]) -> list[str]:
        extra = set(labels) - set(spec.labels)
        if extra:
            raise ValueError(f"metric {name!r} has no label {sorted(extra)} (declared: {list(spec.labels)})")
        try:
            return [str(labels[k]) if k in labels else spec.defaults[k] for k in spec.labels]
        except KeyError as e:
            raise ValueError(f"metric {name!r} needs label {e.args[0]!r} (declared: {list(spec.labels)})") from None

    def _child(self, name: str, labels: Mapping[str, str]) -> object:
        if name not in self._families and not isinstance(HELP.get(name), Spec):
            self._family(name, tuple(sorted(labels)))  # a bare help string: label names from the first use
        fam = self._family(name)
        spec = self._specs[name]
        values = self._label_values(name, spec, labels)
        child = fam.labels(*values) if spec.labels else fam
        with self._lock:
            self._children[(name, tuple(sorted(labels.items())))] = child
        return child
