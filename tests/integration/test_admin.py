"""The admin server of a real daemon while real containers log: /metrics read by prometheus_client's parser
matches what arrived in the sink and what the json-files hold, /status says the same, `shipper status` shows
it in the terminal (and says so when the daemon is not running)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.admin_support import AdminShipper, by_label
from tests.integration.harness import env_workers

pytestmark = pytest.mark.docker

LINES = 400
SCRIPT = f"i=1; while [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i+1)); usleep 4000; done"


def test_metrics_match_what_arrived(tmp_path: Path, run_container: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPPER_TELEMETRY_LOG_FORMAT", "json")  # its own log as JSON lines, checked at the end
    d = AdminShipper(tmp_path, stats_secs=0.5).start()
    d.wait_admin()
    containers = [run_container(["sh", "-c", SCRIPT], labels=d.labels) for _ in range(3)]
    names = {c.name for c in containers}
    # while they log: counters only grow, and nothing is sent that was not read
    seen: list[float] = []
    for _ in range(6):
        m = d.metrics()
        read, sent = sum(by_label(m, "shipper_events_read_total", "container").values()), \
            m.get(("shipper_events_sent_total", (("sink", "out"),)), 0.0)
        assert sent <= read
        seen.append(read)
        time.sleep(0.3)
    assert seen == sorted(seen) and seen[-1] > 0
    evs = d.wait_for(lambda e: len(e) >= 3 * LINES, timeout=90)
    for c in containers:
        c.wait(timeout=60)
    time.sleep(1.0)  # one more read round after the last line
    m = d.metrics()
    arrived = [e for e in d.events() if e["container"]["name"] in names]
    assert len(arrived) == len(evs) == 3 * LINES
    assert m[("shipper_events_sent_total", (("sink", "out"),))] == 3 * LINES
    read = by_label(m, "shipper_events_read_total", "container")
    entries = by_label(m, "shipper_entries_read_total", "container")
    nbytes = by_label(m, "shipper_bytes_read_total", "container")
    for c in containers:
        c.reload()
        assert read[c.name] == LINES and entries[c.name] == LINES
        assert nbytes[c.name] == os.path.getsize(c.attrs["LogPath"])  # every byte of the json-file, once
        assert m[("shipper_container_lag_bytes", (("container", c.name),))] == 0
    assert m[("shipper_containers", ())] == 3  # exited, not removed: still followed
    assert m[("shipper_sink_state", (("sink", "out"),))] == 0
    assert m[("shipper_docker_up", ())] == 1
    assert ("process_resident_memory_bytes", ()) in m and ("process_open_fds", ()) in m
    assert sum(by_label(m, "shipper_events_dropped_total", "reason").values()) == 0

    st = d.status()
    assert st["healthy"] is True and st["problems"] == []
    sink = st["sinks"]["out"]
    assert sink["state"] == "up" and sink["pending_events"] == 0 and sink["sent_events"] == 3 * LINES
    assert sink["last_success"] and sink["type"] == "file"
    rows = {c["name"]: c for c in st["containers"]}
    for name in names:  # a container that exited is still followed until it is removed
        assert rows[name]["reader"] == "json-file" and rows[name]["bytes_behind"] == 0
        assert rows[name]["seconds_behind"] == 0
    assert st["docker"]["up"] is True and st["docker"]["version"] and st["docker"]["api_version"]
    assert st["docker"]["events_connected"] is True and st["docker"]["ping_ms"] > 0
    d.until(lambda: len(d.status()["history"]["in"]) >= 2, 10, "two samples of history")

    code, health = d.health()
    assert code == 200 and health == {"healthy": True, "problems": []}

    # the terminal view of the same daemon
    out = d.cli("status")
    assert out.returncode == 0, out.stderr
    assert "healthy" in out.stdout and "\x1b[" not in out.stdout  # not a terminal: no colours
    for name in names:
        assert name in out.stdout
    assert "out   file  up" in out.stdout
    js = d.cli("status", "--json")
    assert js.returncode == 0 and '"sinks"' in js.stdout
    watch = subprocess.Popen([sys.executable, "-m", "shipper", "status", "--watch", "--interval", "0.5", "--config",
                              str(d.config)], stdout=subprocess.PIPE, text=True)
    time.sleep(2.5)
    watch.send_signal(signal.SIGINT)
    text, _ = watch.communicate(timeout=10)
    assert watch.returncode == 0
    assert text.count("\x1b[H\x1b[2J") >= 3 and text.count("SINK") >= 3  # redrawn in place, again and again

    assert d.stop() == 0
    logged = [orjson.loads(line) for line in d.log_text().splitlines()]  # every line is a JSON object
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(e["time"])) for e in logged)
    reading = {e["name"] for e in logged if e["message"] == "reading container"}
    assert reading >= names  # the fields are fields
    sink_stats = [e for e in logged if e["message"] == "stats" and e.get("sink") == "out"]
    newest = {e["logger"]: e for e in sink_stats}  # each worker's newest line, when there are several
    assert sink_stats and sum(e["events_sent"] for e in newest.values()) == 3 * LINES
    assert all(e["state"] == "up" for e in newest.values())
    gone = d.cli("status")
    assert gone.returncode == 3 and "not running" in gone.stdout


def test_reload_on_the_admin_server_adds_a_sink(tmp_path: Path, run_container: Any) -> None:
    d = AdminShipper(tmp_path).start()
    d.wait_admin()
    run_container(["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); usleep 50000; done"], labels=d.labels)
    d.until(lambda: d.status()["sinks"]["out"]["sent_events"] > 0, 30, "delivery")
    good = d.config.read_text()
    d.config.write_text(good + '\n[sinks.extra]\ntype = "null"\n')
    req = urllib.request.Request(d.base + "/-/reload", method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and orjson.loads(r.read()) == {"reloaded": True}
    d.until(lambda: d.status()["sinks"].get("extra", {}).get("sent_events", 0) > 0, 30, "the new sink delivering")
    d.config.write_text(good + "\n[sinks.broken]\ntype = \"nope\"\n")  # refused: the running config is kept
    try:
        urllib.request.urlopen(urllib.request.Request(d.base + "/-/reload", method="POST"), timeout=30)
        raise AssertionError("a refused config answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code == 422
    assert set(d.status()["sinks"]) == {"out", "extra"}
    # each worker read the config and refused it, when there are several
    assert d.metrics()[("shipper_config_reloads_total", (("result", "refused"),))] == env_workers()
    assert d.stop() == 0
