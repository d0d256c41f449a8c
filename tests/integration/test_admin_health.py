"""/health of a real daemon shipping to a real rsyslogd: 503 naming the sink once rsyslog is stopped and the
sink has failed past its retry budget, 200 again once rsyslog is back and the sink delivers. Its small buffer
fills meanwhile: reading pauses, said once in the log and in /status, and resumes after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.admin_support import WORKER_PREFIX, AdminShipper
from tests.integration.rsyslog import Rsyslog

pytestmark = [pytest.mark.docker, pytest.mark.rsyslog]
SCRIPT = "i=0; while true; do echo \"tick $i\"; i=$((i+1)); usleep 50000; done"


def test_health_follows_the_sink(tmp_path: Path, rsyslog_tcp: Rsyslog, run_container: Any) -> None:
    r = rsyslog_tcp
    r.start()
    d = AdminShipper(tmp_path, f"""
[sinks.central]
type = "syslog"
address = "{r.address("tcp")}"
retry_initial_secs = 0.05
retry_max_secs = 0.2
connect_timeout_secs = 1.0
[buffer]
max_events = 60
""", file_sink=False, stats_secs=0.5).start()
    d.wait_admin()
    run_container(["sh", "-c", SCRIPT], labels=d.labels)
    d.until(lambda: d.status()["sinks"]["central"]["sent_events"] > 5, 30, "events delivered to rsyslog")
    assert d.health()[0] == 200

    r.stop()
    _, doc = d.until(lambda: (h := d.health())[0] == 503 and h, 60, "/health to turn 503")
    assert any(WORKER_PREFIX.sub("", p).startswith("sink central: failing") for p in doc["problems"]), doc
    st = d.status()
    assert st["healthy"] is False and st["sinks"]["central"]["state"] == "failing"
    assert st["sinks"]["central"]["last_error"]
    m = d.metrics()
    assert m[("shipper_sink_state", (("sink", "central"),))] == 2
    assert m[("shipper_sink_retries_total", (("sink", "central"),))] >= 5
    assert d.cli("status").returncode == 1  # answered, unhealthy
    d.until(lambda: d.status()["buffer"]["reading_paused"], 30, "reading to pause on the full buffer")
    assert d.metrics()[("shipper_reading_paused", ())] == 1
    assert d.log_text().count("reading paused: the buffer is full reason=buffer_full") == 1

    r.start()
    d.until(lambda: d.health()[0] == 200, 60, "/health to turn 200 again")
    sent = d.status()["sinks"]["central"]["sent_events"]
    d.until(lambda: d.status()["sinks"]["central"]["sent_events"] > sent, 30, "delivery to resume")
    assert d.status()["sinks"]["central"]["state"] == "up"
    d.until(lambda: "reading resumed after paused_secs=" in d.log_text(), 30, "reading to resume")
    assert not d.status()["buffer"]["reading_paused"]
    d.until(lambda: "stats sink=central state=up" in d.log_text(), 10, "the stats line of the sink")
    assert d.stop() == 0
