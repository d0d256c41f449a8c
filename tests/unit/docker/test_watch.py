"""The Docker daemon watcher's local measurements: dockerd's start time from /proc, json-file bytes on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shipper.docker.watch import daemon_start_time, json_log_usage


def test_start_time_of_this_process(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    pid.write_text(f"{os.getpid()}\n")
    started = daemon_start_time(str(pid))
    assert time.time() - 24 * 3600 < started <= time.time()
    assert daemon_start_time(str(tmp_path / "missing")) == 0.0
    pid.write_text("not a pid")
    assert daemon_start_time(str(pid)) == 0.0


def test_json_log_usage_counts_live_and_rotated(tmp_path: Path) -> None:
    d = tmp_path / "containers" / "abc"
    d.mkdir(parents=True)
    (d / "abc-json.log").write_bytes(b"x" * 100)
    (d / "abc-json.log.1").write_bytes(b"x" * 50)
    (d / "config.v2.json").write_bytes(b"x" * 999)
    assert json_log_usage(str(tmp_path)) == 150
    assert json_log_usage(str(tmp_path / "nope")) == 0
