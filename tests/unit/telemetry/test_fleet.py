"""The supervisor's view of its workers: metrics merged into one valid exposition, status documents into one."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from shipper.telemetry.fleet import merge_metrics, merge_status, supervisor_metrics
from shipper.telemetry.metrics import Metrics
from tests.unit.telemetry.test_alert_rules import promtool


def worker_metrics(containers: list[str], sent: int) -> str:
    m = Metrics(process=True)
    for c in containers:
        m.inc("shipper_events_read_total", 10, container=c)
    m.inc("shipper_events_sent_total", sent, sink="out")
    m.observe("shipper_event_loop_lag_seconds", 0.002)
    return m.render()


def test_metrics_of_every_worker_in_one_valid_exposition() -> None:
    own = supervisor_metrics({"0": 1, "1": 0}, {"0": 0, "1": 2})
    text = merge_metrics({"0": worker_metrics(["a", "b"], 20), "1": worker_metrics(["c"], 7), "": own})
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr + text[:2000]
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    read = {(s.labels["worker"], s.labels["container"]): s.value for s in fams["shipper_events_read"].samples
            if s.name == "shipper_events_read_total"}
    assert read == {("0", "a"): 10, ("0", "b"): 10, ("1", "c"): 10}
    sent = {s.labels["worker"]: s.value for s in fams["shipper_events_sent"].samples
            if s.name == "shipper_events_sent_total"}
    assert sent == {"0": 20, "1": 7}
    up = {s.labels["worker"]: s.value for s in fams["shipper_workers_up"].samples}
    assert up == {"0": 1, "1": 0}, "the supervisor's own series are not labelled again"
    restarts = {s.labels["worker"]: s.value for s in fams["shipper_worker_restarts"].samples}
    assert restarts == {"0": 0, "1": 2}
    buckets = [s for s in fams["shipper_event_loop_lag_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["worker"] for s in buckets} == {"0", "1"}
    assert text.count("# TYPE shipper_events_read_total counter") == 1


def status(containers: list[str], sent: int, state: str = "up", problems: list[str] | None = None) -> dict:
    return {"version": "1", "healthy": not problems, "problems": problems or [],
            "containers": [{"id": c, "name": c} for c in containers], "waiting_inspect": {},
            "sinks": {"out": {"type": "file", "state": state, "in_flight": 1, "pending_events": 5,
                              "sent_events": sent, "events_per_sec": 2.5, "last_error": "",
                              "last_success": None if not sent else f"2026-01-01T00:00:0{sent % 10}Z"}},
            "events_read_per_sec": 4.0,
            "buffer": {"type": "memory", "events": 3, "bytes": 100, "max_bytes": 1000, "fill": 0.1,
                       "reading_paused": False, "pause_reason": ""},
            "drops": {"dropped": {"full": 2}, "invalid": {}},
            "event_loop_lag_secs": 0.01,
            "history": {"step_secs": 5, "t": [1, 2, 3], "in": [1, 2, 3], "out": {"out": [1, 1, 1]},
                        "buffer_fill": [0.1, 0.2, 0.3]}}


def test_status_is_one_shipper_summed_over_its_workers() -> None:
    doc = merge_status({0: status(["b", "c"], 3), 1: status(["a"], 4, "retrying")}, {})
    assert [c["name"] for c in doc["containers"]] == ["a", "b", "c"]
    assert [c["worker"] for c in doc["containers"]] == [1, 0, 0]
    out = doc["sinks"]["out"]
    assert (out["state"], out["sent_events"], out["pending_events"], out["in_flight"]) == ("retrying", 7, 10, 2)
    assert out["last_success"] == "2026-01-01T00:00:04Z"
    assert doc["events_read_per_sec"] == 8.0
    assert (doc["buffer"]["events"], doc["buffer"]["bytes"], doc["buffer"]["max_bytes"]) == (6, 200, 2000)
    assert doc["drops"]["dropped"] == {"full": 4}
    assert doc["history"]["in"] == [2, 4, 6] and doc["history"]["out"]["out"] == [2, 2, 2]
    assert doc["healthy"] and doc["workers"] == {"0": "up", "1": "up"}


def test_a_worker_down_or_unhealthy_makes_the_shipper_unhealthy() -> None:
    doc = merge_status({0: status(["a"], 1, problems=["sink out: failing"])}, {1: "not running"})
    assert not doc["healthy"]
    assert doc["problems"] == ["worker 0: sink out: failing", "worker 1: not running"]
    assert doc["workers"] == {"0": "up", "1": "down: not running"}
