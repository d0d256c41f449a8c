"""The metrics registry: every name declared, exposition parsed back exactly, per-container series removed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper.telemetry import metrics as mod
from shipper.telemetry.metrics import HELP, Metrics, Spec, UndeclaredMetric

ROOT = Path(__file__).resolve().parents[3]


def parsed(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_large_counters_keep_every_digit() -> None:
    m = Metrics()
    m.inc("shipper_events_sent_total", 1_855_841, sink="a")
    m.inc("shipper_events_sent_total", 123_456_789_012, sink="b")
    got = parsed(m)
    assert got[("shipper_events_sent_total", (("sink", "a"),))] == 1_855_841
    assert got[("shipper_events_sent_total", (("sink", "b"),))] == 123_456_789_012


def test_undeclared_name_fails_loudly() -> None:
    m = Metrics()
    with pytest.raises(UndeclaredMetric):
        m.inc("shipper_not_declared_total")
    with pytest.raises(UndeclaredMetric):
        m.set("shipper_not_declared", 1)


def test_wrong_labels_fail() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="no label"):
        m.inc("shipper_events_sent_total", sink="a", colour="red")
    with pytest.raises(ValueError, match="needs label"):
        m.inc("shipper_events_sent_total")


def test_label_default() -> None:
    m = Metrics()
    m.inc("shipper_docker_reconnects_total")
    m.inc("shipper_docker_reconnects_total", where="logs")
    assert m.get("shipper_docker_reconnects_total", where="events") == 1
    assert m.get("shipper_docker_reconnects_total") == 2


def test_types_are_declared() -> None:
    m = Metrics()
    types = {f.name: f.type for f in text_string_to_metric_families(m.render())}
    assert types["shipper_events_sent"] == "counter"  # the parser strips _total from a counter's family
    assert types["shipper_buffer_events"] == "gauge"
    assert types["shipper_docker_ping_seconds"] == "histogram"


def test_every_name_used_in_the_code_is_declared() -> None:
    """A literal metric name anywhere in shipper/ that HELP does not declare is a bug."""
    used: set[str] = set()
    for path in (ROOT / "shipper").rglob("*.py"):
        used |= set(re.findall(r"[\"'](shipper_[a-z_]+)[\"']", path.read_text()))
    missing = sorted(n for n in used if n not in HELP)
    assert not missing, f"metric names used but not declared in HELP: {missing}"


def test_get_sums_matching_series() -> None:
    m = Metrics()
    m.inc("shipper_events_dropped_total", 2, reason="a", where="s1")
    m.inc("shipper_events_dropped_total", 3, reason="a", where="s2")
    m.inc("shipper_events_dropped_total", 5, reason="b", where="s1")
    assert m.get("shipper_events_dropped_total") == 10
    assert m.get("shipper_events_dropped_total", reason="a") == 5
    assert m.get("shipper_events_dropped_total", reason="a", where="s2") == 3


def test_forget_container_removes_series_and_keeps_totals() -> None:
    m = Metrics()
    for i in range(50):  # container churn
        m.inc("shipper_events_read_total", 10, container=f"c{i}")
        m.set("shipper_container_lag_bytes", 7, container=f"c{i}")
        m.forget_container(f"c{i}")
    m.inc("shipper_events_read_total", 1, container="live")
    text = m.render()
    assert 'container="c1"' not in text
    assert 'shipper_events_read_total{container="live"} 1.0' in text
    assert m.get("shipper_events_read_total") == 501  # totals never go backwards
    m.inc("shipper_events_read_total", 1, container="c3")  # a name seen again starts a fresh series
    assert m.get("shipper_events_read_total", container="c3") == 1


def test_histogram_and_process_metrics() -> None:
    m = Metrics(process=True)
    m.observe("shipper_docker_ping_seconds", 0.003)
    m.observe("shipper_docker_ping_seconds", 0.2)
    assert m.get("shipper_docker_ping_seconds") == 2
    names = {f.name for f in text_string_to_metric_families(m.render())}
    assert {"process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"} <= names


def test_bare_help_string_is_still_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HELP, "shipper_example_total", "An example.")
    m = Metrics()
    m.inc("shipper_example_total", 2, sink="k")
    assert m.get("shipper_example_total", sink="k") == 2
    assert mod.spec_of("shipper_example_total") == Spec("counter", "An example.")


def test_snapshot_shape() -> None:
    m = Metrics()
    m.inc("shipper_lines_invalid_total", 3, container="c", reason="bad_json")
    assert m.snapshot()["shipper_lines_invalid_total"] == {(("container", "c"), ("reason", "bad_json")): 3}


def test_last_error_per_container_is_kept_then_forgotten() -> None:
    from shipper.telemetry import events as tel

    m = Metrics()
    tel.reader_failed(m, "web", 2, 1.0, OSError("boom"))
    tel.log_gap(m, "web", "rotated_before_read", 100, 2, exact=False)
    assert m.last_errors["web"][1] == "log data lost before it was read: rotated_before_read, >=100 bytes"
    tel.reader_failed(m, "db", 1, 1.0, OSError("no such file"))
    assert "no such file" in m.last_errors["db"][1]
    m.forget_container("web")
    assert "web" not in m.last_errors and "db" in m.last_errors
