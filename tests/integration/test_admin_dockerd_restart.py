"""dockerd restarted under a running shipper: /status and the metrics show it down (its ping fails, /health
503), then up again with a new start time, one restart counted, /health 200. dockerd is running again at the
end whatever happens (the fixture of test_dockerd_restart.py). It stops every container on the host for a
moment: run it alone, and not often.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.admin_support import WORKER_PREFIX, AdminShipper
from tests.integration.test_dockerd_restart import (  # noqa: F401 - dockerd_restartable is a fixture
    dockerd_restartable,
    start_dockerd,
    stop_dockerd,
)

pytestmark = pytest.mark.docker


@pytest.mark.usefixtures("dockerd_restartable")
def test_restart_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPPER_TELEMETRY_DOCKER_PING_INTERVAL_SECS", "0.3")
    d = AdminShipper(tmp_path).start()
    d.wait_admin()
    before: dict[str, Any] = d.until(lambda: (s := d.status()["docker"])["up"] and s["started"] and s, 20,
                                     "dockerd's state")
    assert before["restarts_seen"] == 0
    started_before = d.metrics()[("shipper_docker_start_time_seconds", ())]

    stop_dockerd()
    down = d.until(lambda: (s := d.status()["docker"])["up"] is False and s, 20, "dockerd seen down")
    assert down["last_error"]
    assert d.metrics()[("shipper_docker_up", ())] == 0
    _, health = d.until(lambda: (h := d.health())[0] == 503 and h, 20, "/health 503 while dockerd is down")
    assert any(WORKER_PREFIX.sub("", p).startswith("discovery:") for p in health["problems"]), health

    start_dockerd()
    after = d.until(lambda: (s := d.status()["docker"])["restarts_seen"] == 1 and s["up"] and s, 60,
                    "the restart seen")
    assert after["started"] != before["started"] and after["last_restart"]
    assert after["daemon_id"] == before["daemon_id"]  # the same daemon, started again
    m = d.metrics()
    assert m[("shipper_docker_restarts_total", ())] == 1 and m[("shipper_docker_up", ())] == 1
    assert m[("shipper_docker_start_time_seconds", ())] > started_before
    d.until(lambda: d.health()[0] == 200, 60, "/health 200 after dockerd is back")
    assert d.stop() == 0
    assert "Docker daemon restarted" in d.log_text()
    assert os.path.exists("/var/run/docker.sock")
