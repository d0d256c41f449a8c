"""One function per thing worth recording: each logs (key=value, once per reason where it could flood)
and updates its metric together, so no drop or failure is counted without being explained, or the reverse.
"""

from __future__ import annotations

import logging
import time
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


def log_gap(m: Metrics, container: str, reason: str, lost_bytes: int, lost_lines: int = 0, *, exact: bool = True,
            since: str = "", until: str = "") -> None:
    """Log data lost before it was read: one gap, its bytes and lines counted. `exact` False: they are the
    least it can be (what the files prove), logged as `lost_bytes>=N`. since/until: the times of the entries
    read on either side of the loss (or of the first and last lost ones, when they were measured).

    lost_bytes < 0: the reader cannot tell whether anything was lost. Logged as a possible gap and counted
    in shipper_log_gap_possible_total only, never as data lost.
    """
    window = f" since={since or '-'} until={until or '-'}" if since or until else ""
    if lost_bytes < 0:
        m.inc("shipper_log_gap_possible_total", container=container, reason=reason)
        log.warning("possible log gap: the reader cannot tell whether log data was lost container=%s reason=%s%s "
                    "(counted in shipper_log_gap_possible_total, not as lost)", container, reason, window)
        return
    m.inc("shipper_log_gap_total", container=container, reason=reason)
    m.note_error(container, f"log data lost before it was read: {reason}, {'' if exact else '>='}{lost_bytes} bytes")
    m.inc("shipper_log_gap_bytes_total", lost_bytes, container=container, reason=reason)
    m.inc("shipper_log_gap_lines_total", lost_lines, container=container, reason=reason)
    op = "=" if exact else ">="
    log.error("log data lost before it was read container=%s reason=%s lost_bytes%s%d lost_lines%s%d%s%s",
              container, reason, op, lost_bytes, op, lost_lines, window,
              "" if exact else " (at least: the files show no more)")


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


def sink_stalled(m: Metrics, sink: str, address: str, unacked_bytes: int, secs: float, kept: bool) -> None:
    """A stream receiver took nothing for `secs`: the request waiting on it is retried, not counted as sent.
    Called once per stall, not per retry."""
    m.inc("shipper_sink_stalls_total", sink=sink)
    log.warning("sink receiver stopped taking data sink=%s address=%s unacked_bytes=%d for_secs=%g action=%s "
                "(counted in shipper_sink_stalls_total; its events stay in the buffer until the receiver "
                "acknowledges them)", sink, address, unacked_bytes, secs,
                "wait_on_same_connection" if kept else "reconnect")


def sink_resent(m: Metrics, sink: str, n: int) -> None:
    """Events written again on a new connection because the old one went away before the receiver
    acknowledged them: they may arrive twice (same event), never zero times."""
    m.inc("shipper_sink_resent_events_total", n, sink=sink)
    if _once("resent", sink):
        log.warning("sink resent events not acknowledged on a lost connection count=%d sink=%s (the receiver may "
                    "get some twice; counted in shipper_sink_resent_events_total; logged once per sink)", n, sink)


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


DOCKER_API_STATES = {"connected": 0, "unreachable": 1, "client_cert_refused": 2, "connecting": 3}


def docker_api_state(m: Metrics, state: str, detail: str = "") -> None:
    """Called on every change of the Engine API's state as discovery sees it (it keeps the previous one)."""
    log.info("Docker API state changed state=%s%s", state, f" detail={detail}" if detail else "")
    m.set("shipper_docker_api_state", DOCKER_API_STATES[state])


def docker_client_cert_refused(m: Metrics, cert: str, alert: str, retry_in: float, first: bool) -> None:
    """The daemon's TLS stack refused shipper's client certificate: never connected, so not "lost". Counted
    at every attempt; said once (`first`) until a connection succeeds."""
    m.inc("shipper_docker_client_cert_refused_total")
    log.log(logging.ERROR if first else logging.DEBUG,
            "the Docker daemon refused shipper's client certificate (docker.tls_cert=%s) alert=%s: check that "
            "the daemon's --tlscacert signed it and that it is not expired; retrying, next in %.1fs (counted in "
            "shipper_docker_client_cert_refused_total; state in shipper_docker_api_state; said once until "
            "connected)", cert or "(none sent)", alert, retry_in)


def docker_event_queue_full(m: Metrics, size: int) -> None:
    """Discovery's bounded event queue filled up: reading /events pauses, then discovery resubscribes."""
    m.inc("shipper_docker_event_queue_full_total")
    if _once("event_queue_full"):
        log.warning("Docker event queue full size=%d: reading /events paused (dockerd drops events for a "
                    "subscriber that stops reading); resubscribing from the last event handled and relisting to "
                    "catch up (counted in shipper_docker_event_queue_full_total; logged once)", size)


def docker_inspect_failed(m: Metrics, container_id: str, attempts: int, error: BaseException) -> None:
    m.inc("shipper_docker_inspect_failures_total")
    log.warning("could not inspect container id=%s attempts=%d error=%s: it is read once an inspect answers "
                "(the next resync, or its next event) (counted in shipper_docker_inspect_failures_total)",
                container_id[:12], attempts, error)


def reader_failed(m: Metrics, container: str, attempt: int, retry_in: float, error: BaseException) -> None:
    """A container's log reader failed and retries: said at every failure, with the backoff."""
    m.inc("shipper_reader_failures_total", container=container)
    m.note_error(container, f"reader failed (attempt {attempt}): {error}")
    log.warning("log reader failed, will retry container=%s attempt=%d retry_in=%.1fs error=%s (counted in "
                "shipper_reader_failures_total)", container, attempt, retry_in, error)


def reader_crashed(m: Metrics, container: str) -> None:
    """A reader raised out of its loop (a bug): counted, logged with the traceback (call from `except`)."""
    m.inc("shipper_reader_failures_total", container=container)
    m.note_error(container, "reader crashed (a bug; the traceback is in shipper's log)")
    log.error("log reader crashed container=%s; it restarts when the container is seen again (counted in "
              "shipper_reader_failures_total)", container, exc_info=True)


def container_unreadable(m: Metrics, container: str, reason: str, detail: str) -> None:
    """A container whose log shipper cannot read (or could not learn how to): not shipped, never silently.
    `reason` is a short code (the metric label), `detail` says it for a person."""
    m.inc("shipper_containers_unreadable_total", reason=reason)
    m.note_error(container, f"cannot read its log: {reason}: {detail}")
    if _once("unreadable", container, reason):
        log.warning("cannot read container's log container=%s reason=%s: %s (counted in "
                    "shipper_containers_unreadable_total; logged once per container and reason)",
                    container, reason, detail)


def kafka_sent(m: Metrics, sink: str, topic: str, records: int, nbytes: int, secs: float) -> None:
    """Records the broker acknowledged for one topic of one request, and how long the request took."""
    m.inc("shipper_kafka_records_sent_total", records, sink=sink, topic=topic)
    m.inc("shipper_kafka_bytes_sent_total", nbytes, sink=sink, topic=topic)
    m.observe("shipper_kafka_request_seconds", secs, sink=sink, topic=topic)


def kafka_error(m: Metrics, sink: str, topic: str, kind: str, error: BaseException, n: int) -> None:
    """A Kafka send (or connect, `n` = 0) failed for `n` records. Kinds that need an operator (unknown_topic,
    authorization, unsupported) are logged as errors; once per sink, topic and kind."""
    m.inc("shipper_kafka_errors_total", n, sink=sink, topic=topic or "-", kind=kind)
    if _once("kafka", sink, topic, kind):
        needs_operator = kind in ("unknown_topic", "authorization", "unsupported")
        log.log(logging.ERROR if needs_operator or kind in ("record_too_large", "invalid_record")
                else logging.WARNING,
                "kafka send failed sink=%s topic=%s kind=%s records=%d error=%r (%s; counted in "
                "shipper_kafka_errors_total; logged once per sink, topic and kind)", sink, topic or "-", kind, n,
                error, "needs an operator: the events stay in the buffer and are retried" if needs_operator
                else "the broker refused these records for good: dropped"
                if kind in ("record_too_large", "invalid_record") else "retried")


def kafka_oversize(m: Metrics, sink: str, container: str, action: str, size: int, limit: int) -> None:
    """An event whose record would pass max_message_bytes: cut to fit (action=truncate) or left out (drop)."""
    m.inc("shipper_kafka_oversize_events_total", sink=sink, container=container, action=action)
    if action == "truncate":
        m.inc("shipper_events_truncated_total", container=container, where="kafka")
    if _once("kafka_oversize", sink, container, action):
        log.warning("event larger than the kafka sink's max_message_bytes sink=%s container=%s action=%s size=%d "
                    "limit=%d (counted in shipper_kafka_oversize_events_total; logged once per container)",
                    sink, container, action, size, limit)


def logstash_window_acked(m: Metrics, sink: str, host: str, events: int) -> None:
    """A Lumberjack window (or a json_lines/http request) the host acknowledged in full."""
    m.inc("shipper_logstash_windows_total", sink=sink, host=host)
    m.inc("shipper_logstash_events_acked_total", events, sink=sink, host=host)


def logstash_events_acked(m: Metrics, sink: str, host: str, events: int, status: int = 0) -> None:
    """Events a json_lines or http host acknowledged (TCP acknowledgements; a 2xx response, its `status`)."""
    m.inc("shipper_logstash_events_acked_total", events, sink=sink, host=host)
    if status:
        m.inc("shipper_logstash_http_responses_total", sink=sink, host=host, status=str(status))


def logstash_partial_ack(m: Metrics, sink: str, host: str, acked: int, count: int) -> None:
    """An ACK covering part of a window: those events are delivered; the rest follow or are sent again."""
    m.inc("shipper_logstash_partial_acks_total", sink=sink, host=host)
    log.debug("logstash partial ACK sink=%s host=%s acked=%d of=%d", sink, host, acked, count)


def logstash_keepalive(m: Metrics, sink: str, host: str) -> None:
    """Logstash is busy with a window and says so: the ACK timeout starts again, nothing is resent."""
    m.inc("shipper_logstash_keepalives_total", sink=sink, host=host)
    if _once("logstash_keepalive", sink, host):
        log.info("logstash host is busy and sends keep-alive ACKs sink=%s host=%s (waiting on; counted in "
                 "shipper_logstash_keepalives_total; logged once per host)", sink, host)


def logstash_host_down(m: Metrics, sink: str, host: str, what: str, error: str, retry_in: float, unacked: int,
                       first: bool) -> None:
    """A host failed (`what`: connect, window, request): its unacked events go to another host or are retried;
    the host is not used again for `retry_in` seconds while another works. Logged as a warning when it was
    up (or untried), then at debug level until it works again."""
    m.inc("shipper_logstash_host_failures_total", sink=sink, host=host, what=what)
    m.set("shipper_logstash_host_up", 0, sink=sink, host=host)
    log.log(logging.WARNING if first else logging.DEBUG,
            "logstash host failed sink=%s host=%s what=%s unacked_events=%d retry_in=%.1fs error=%s (its unacked "
            "events are sent again, to another host if one works; counted in shipper_logstash_host_failures_total)",
            sink, host, what, unacked, retry_in, error)


def logstash_host_up(m: Metrics, sink: str, host: str) -> None:
    m.set("shipper_logstash_host_up", 1, sink=sink, host=host)
    log.info("logstash host works sink=%s host=%s", sink, host)


def logstash_window_size(m: Metrics, sink: str, host: str, size: int) -> None:
    m.set("shipper_logstash_window_size", size, sink=sink, host=host)


def logstash_events_moved(m: Metrics, sink: str, host: str, n: int) -> None:
    """Events a failed host had not acknowledged, handed to another: Logstash may have taken some of them
    before failing, so they can arrive twice (same event.id), never zero times."""
    m.inc("shipper_logstash_events_moved_total", n, sink=sink, host=host)
    m.inc("shipper_sink_resent_events_total", n, sink=sink)


def logstash_failover(m: Metrics, sink: str, old: str, new: str) -> None:
    m.inc("shipper_sink_failovers_total", sink=sink)
    log.warning("logstash sink failed over sink=%s from=%s to=%s", sink, old, new)


def logstash_http_response(m: Metrics, sink: str, host: str, status: int, body: str, action: str) -> None:
    """A response other than 2xx from Logstash's http input; `body` (cut short) says why. Logged once per
    host and status; `action` is retry or reject."""
    m.inc("shipper_logstash_http_responses_total", sink=sink, host=host, status=str(status))
    if _once("logstash_http", sink, host, str(status)):
        log.log(logging.ERROR if action == "reject" else logging.WARNING,
                "logstash http input answered status=%d sink=%s host=%s action=%s body=%r (counted in "
                "shipper_logstash_http_responses_total; logged once per host and status)",
                status, sink, host, action, body)


def docker_daemon_up(m: Metrics, up: bool, error: str, first: bool) -> None:
    """The Docker daemon's ping changed: answering, or not (said on every change, once each way)."""
    m.set("shipper_docker_up", int(up))
    if up:
        log.log(logging.DEBUG if first else logging.WARNING, "Docker daemon answering again" if not first
                else "Docker daemon answering")
    else:
        log.error("Docker daemon not answering its ping error=%s (shipper_docker_up=0; readers of json-files go "
                  "on, discovery reconnects)", error)


def docker_restarted(m: Metrics, old_start: float, new_start: float, old_id: str, new_id: str, version: str) -> None:
    """dockerd restarted under shipper: its start time (or its ID) changed between two looks."""
    m.inc("shipper_docker_restarts_total")
    log.warning("Docker daemon restarted started_before=%s started_now=%s id_changed=%s version=%s (counted in "
                "shipper_docker_restarts_total; containers it restarted are followed again)",
                _utc(old_start), _utc(new_start), old_id != new_id, version)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def config_reload_refused(m: Metrics, error: Exception) -> None:
    m.inc("shipper_config_reloads_total", result="refused")
    log.error("reload refused, still running with the config it had: config error: %s", error)


def config_reloaded(m: Metrics, added: Sequence[str], removed: Sequence[str], changed: Sequence[str],
                    unchanged: int, restart: Sequence[str]) -> None:
    m.inc("shipper_config_reloads_total", result="applied")
    log.info("config reloaded: sinks added=%s removed=%s changed=%s unchanged=%d", ",".join(added) or "-",
             ",".join(removed) or "-", ",".join(changed) or "-", unchanged)
    if restart:
        log.warning("reload: [%s] changed, which takes a restart (%s); running on with the old values",
                    "], [".join(restart), "where events and offsets live" if {"buffer", "state"} & set(restart)
                    else "read at start only")
