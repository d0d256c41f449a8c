"""Counters and gauges with labels, rendered in the Prometheus text format.

Updated per batch, never per event, so a dict lookup per call is cheap enough.
"""

from __future__ import annotations

import threading
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

HELP: dict[str, str] = {
    "shipper_events_read_total": "Events rebuilt from container logs.",
    "shipper_entries_read_total": "json-file entries or API frames read.",
    "shipper_bytes_read_total": "Log bytes read.",
    "shipper_events_sent_total": "Events a sink delivered.",
    "shipper_events_dropped_total": "Events dropped, by reason.",
    "shipper_lines_invalid_total": "Log entries that could not be parsed, by reason (skipped).",
    "shipper_events_truncated_total": "Events cut at max_event_bytes or a sink's size limit.",
    "shipper_log_gap_total": "Times log data was lost before being read (rotated away, compressed, truncated).",
    "shipper_log_gap_bytes_total": "Bytes of log data lost before being read: exact, or the least the files prove.",
    "shipper_log_gap_lines_total": "Log entries lost before being read: exact, or the least the files prove.",
    "shipper_log_gap_possible_total": "Times log data may have been lost before being read; the reader cannot tell.",
    "shipper_sink_retries_total": "Sends that failed and were retried.",
    "shipper_sink_state": "Sink state: 0 up, 1 retrying, 2 failing, 3 starting.",
    "shipper_containers": "Containers being read.",
    "shipper_buffer_events": "Events in the buffer.",
    "shipper_buffer_bytes": "Bytes in the buffer.",
    "shipper_json_unparsed_total": "Lines that looked like JSON but did not parse; shipped as text.",
    "shipper_spool_write_errors_total": "Pushes the disk spool refused (disk full, I/O error); reading waited.",
    "shipper_spool_corrupt_records_total": "Spool records that failed their check and were skipped or cut.",
    "shipper_spool_corrupt_bytes_total": "Bytes of spool records that failed their check.",
    "shipper_spool_segments": "Spool segment files on disk.",
    "shipper_spool_cursor_lag_events": "Events in the spool a sink has not acknowledged yet.",
    "shipper_docker_events_invalid_total": "Docker events that could not be read (skipped).",
    "shipper_docker_config_invalid_total": "Container metadata that could not be read (skipped, retried).",
    "shipper_sink_failovers_total": "Times a sink moved to another of its addresses.",
    "shipper_sink_stalls_total": "Times a stream receiver acknowledged nothing for write_timeout_secs.",
    "shipper_sink_resent_events_total": "Events sent again: their connection was lost before they were acknowledged.",
    "shipper_sink_file_followed_total": "Times a file sink reopened its path (removed, moved, replaced, truncated).",
    "shipper_sink_torn_bytes_total": "Bytes of a torn last line (left by a crash) a file sink cut at start.",
    "shipper_task_restarts_total": "Times a long-lived task failed and was restarted.",
    "shipper_docker_reconnects_total": "Times the Docker event stream was reconnected.",
    "shipper_docker_api_state": "Engine API state: 0 connected, 1 unreachable, 2 client certificate refused, "
                                "3 connecting.",
    "shipper_docker_client_cert_refused_total": "Connections to the Engine API whose TLS peer refused shipper's "
                                                "client certificate.",
    "shipper_docker_event_queue_full_total": "Times discovery's event queue was full: /events reading paused, "
                                             "then resubscribed and relisted to catch up.",
    "shipper_docker_inspect_failures_total": "Containers that could not be inspected after retries.",
    "shipper_reader_failures_total": "Failures of a container's log reader (each is retried with backoff).",
    "shipper_containers_unreadable_total": "Containers whose log cannot be read, by reason (not shipped).",
}


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges[name][key] = value

    def get(self, name: str, **labels: str) -> float:
        """The value of one series, or with no labels given the sum of every series of `name`."""
        with self._lock:
            series = self._counters.get(name) or self._gauges.get(name) or {}
            if labels:
                return series.get(tuple(sorted(labels.items())), 0)
            return sum(series.values())

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        with self._lock:
            out = {k: dict(v) for k, v in self._counters.items()}
            out.update({k: dict(v) for k, v in self._gauges.items()})
            return out

    def render(self) -> str:
        """Prometheus text exposition format."""
        lines = []
        with self._lock:
            for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
                for name in sorted(table):
                    if name in HELP:
                        lines.append(f"# HELP {name} {HELP[name]}")
                    lines.append(f"# TYPE {name} {kind}")
                    for labels, value in sorted(table[name].items()):
                        lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                        lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
