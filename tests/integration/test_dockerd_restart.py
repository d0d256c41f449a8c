"""dockerd itself restarted under a running shipper: the real daemon is stopped (SIGTERM, as an upgrade or
`systemctl restart docker` does) and started again exactly as deploy/setup.sh starts it, while containers
with `--restart=always` log numbered lines. Two shippers watch the same containers through the Engine API
(`discovery = "api"`), one reading the json-files (`read = "files"`), one the log stream (`read = "api"`).

Each must come back by itself within 10 s of dockerd answering again (its log says when), and every line
the containers wrote to their json-files, before the restart and after dockerd restarted them, must be in
its sink. dockerd is running again at the end whatever happened (`finally`).

This test stops every container on the host for a few seconds (dockerd stops them when it stops): run it
alone, and not often.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, SESSION, SESSION_LABEL, TEST_IMAGE, TEST_LABEL
from tests.integration.delivery_support import by_container, read_sink, wait_until
from tests.integration.harness import RUNNING, Shipper

pytestmark = pytest.mark.docker

DOCKER_SOCK = "/var/run/docker.sock"
DOCKERD_LOG = "/tmp/dockerd.log"
RESUME_SECS = 10.0
LINE_RE = re.compile(r"^run=(\w+) n=(\d+)$")
RECONNECTED = "Docker API reconnected after"
CONTAINERS = 3
# ~50 lines/s each; `trap` so the shell (PID 1, which ignores an unhandled SIGTERM) stops when dockerd stops
# it, instead of after the 10 s stop timeout; a new run marker at every (re)start of the container
SCRIPT = ("trap 'exit 0' TERM; r=$(head -c 8 /proc/sys/kernel/random/uuid); i=0; "
          "while true; do echo \"run=$r n=$i\"; i=$((i+1)); usleep 20000; done")


def dockerd_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == "dockerd":
                    pids.append(int(entry))
    return pids


def docker_answers() -> bool:
    return subprocess.run(["docker", "version"], capture_output=True, timeout=30).returncode == 0


def start_dockerd(timeout: float = 90) -> None:
    """As deploy/setup.sh does on a host without systemd: `nohup dockerd >/tmp/dockerd.log 2>&1 &` (in a
    session of its own, from /, so it outlives the test run and pins no test directory)."""
    subprocess.run(["sh", "-c", f"nohup dockerd >{DOCKERD_LOG} 2>&1 &"], check=True, cwd="/",
                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while not docker_answers():
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd did not come back in {timeout}s; see {DOCKERD_LOG}")
        time.sleep(0.2)


def stop_dockerd(timeout: float = 90) -> None:
    """SIGTERM to the one dockerd; wait until it has exited and its socket is gone."""
    pids = dockerd_pids()
    assert len(pids) == 1, f"expected one dockerd, found {pids}"
    os.kill(pids[0], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pids[0]}") or os.path.exists(DOCKER_SOCK):
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd (pid {pids[0]}) did not stop within {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def dockerd_restartable(docker_client: Any) -> Iterator[None]:
    """This test may stop dockerd: whatever happens, it is running again afterwards."""
    if IN_CI:
        assert dockerd_pids(), "dockerd is not a process on this host (CI=true: it must be)"
    elif len(dockerd_pids()) != 1:
        pytest.skip("dockerd is not one local process here (systemd, rootless or remote): cannot restart it")
    try:
        yield
    finally:
        if not docker_answers():
            if not dockerd_pids():
                start_dockerd()
            else:
                wait_until(docker_answers, 90, "dockerd to answer again")


class Watcher(Shipper):
    """`shipper run` with discovery = "api" and the reader of `read`, into its own file sink."""

    def __init__(self, tmp: Path, read: str, label: str) -> None:
        tmp.mkdir()
        super().__init__(tmp, select_label=label, stats_secs=0.5, docker_toml=f'discovery = "api"\nread = "{read}"')
        self.read = read

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def by_container(self) -> dict[str, list[dict[str, Any]]]:
        return by_container(read_sink(self.out).events)


def log_time(line: str) -> float:
    """The wall-clock time of one of shipper's log lines (`2026-11-30 04:37:08,614 ...`)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def json_file_lines(c: Any) -> list[str]:
    """What Docker wrote to the container's json-file (one entry a line here), in order."""
    c.reload()
    with open(c.attrs["LogPath"], "rb") as f:
        return [json.loads(line)["log"].rstrip("\n") for line in f]


def runs(messages: list[str]) -> list[str]:
    """The run markers in the order they first appear."""
    seen: dict[str, None] = {}
    for m in messages:
        hit = LINE_RE.match(m)
        if hit:
            seen.setdefault(hit.group(1), None)
    return list(seen)


@pytest.mark.timeout(300)
def test_dockerd_restart_with_restart_always_containers(tmp_path: Path, docker_client: Any,
                                                        dockerd_restartable: None) -> None:
    label = uuid.uuid4().hex[:12]
    watchers = [Watcher(tmp_path / read, read, label) for read in ("files", "api")]
    for w in watchers:
        w.start()
    names = [f"shipper-test-restart-{i}-{uuid.uuid4().hex[:6]}" for i in range(CONTAINERS)]
    cs = [docker_client.containers.run(
        TEST_IMAGE, ["sh", "-c", SCRIPT], name=name, detach=True, restart_policy={"Name": "always"},
        labels={TEST_LABEL: "1", SESSION_LABEL: SESSION, "shipper.test.run": label},
        log_config={"type": "json-file", "config": {"max-size": "100m", "max-file": "2"}}) for name in names]
    try:
        def first_runs_seen() -> bool:
            return all(len(runs([e["message"] for e in w.by_container().get(n, [])])) == 1
                       for w in watchers for n in names)

        wait_until(first_runs_seen, 60, "the first lines of every container in both sinks")
        time.sleep(2.0)
        before = {n: runs([e["message"] for e in watchers[0].by_container()[n]])[0] for n in names}

        down_at = time.monotonic()
        stop_dockerd()
        stopped = time.monotonic() - down_at
        time.sleep(1.0)  # shippers see a daemon that is gone, not one that blinked
        start_dockerd()
        up_at, up_wall = time.monotonic(), time.time()
        back: dict[str, float | None] = {w.read: None for w in watchers}
        reconnected: dict[str, float | None] = {w.read: None for w in watchers}

        def all_back() -> bool:
            for w in watchers:
                assert w.running(), f"shipper ({w.read}) exited:\n{w.log_text()[-3000:]}"
                if back[w.read] is None:
                    got = w.by_container()
                    if all(len(runs([e["message"] for e in got.get(n, [])])) >= 2 for n in names):
                        back[w.read] = time.monotonic() - up_at
                if reconnected[w.read] is None:
                    line = next((x for x in w.log_text().splitlines() if RECONNECTED in x), None)
                    if line:
                        reconnected[w.read] = log_time(line) - up_wall
            return None not in back.values() and None not in reconnected.values()

        wait_until(all_back, 60, "lines of the restarted containers in both sinks", every=0.1)
        time.sleep(2.0)
        for c in cs:
            c.stop(timeout=5)  # stopped by hand: `always` does not start it again
        want = {c.name: json_file_lines(c) for c in cs}

        def complete() -> bool:
            return all(set(want[n]) <= {e["message"] for e in w.by_container().get(n, [])}
                       for w in watchers for n in names)

        wait_until(complete, 60, "every json-file line in both sinks")
        time.sleep(1.0)
    finally:
        for c in cs:
            with contextlib.suppress(Exception):
                c.remove(force=True)
    for w in watchers:
        assert w.stop() == 0
    report = [f"\ndockerd stopped in {stopped:.1f}s, answering again {up_at - down_at:.1f}s after the SIGTERM"]
    for w in watchers:
        got = w.by_container()
        dups = 0
        resumed, seen = reconnected[w.read], back[w.read]
        assert resumed is not None and seen is not None
        for n in names:
            evs = got[n]
            msgs = [e["message"] for e in evs]
            assert set(msgs) == set(want[n]), f"{w.read} {n}: lines that are not in the json-file"
            first_id: dict[str, str] = {}
            for e in evs:
                assert first_id.setdefault(e["message"], e["event"]["id"]) == e["event"]["id"], \
                    f"{w.read} {n}: a line sent twice with a new event.id"
            assert runs(msgs)[0] == before[n]
            assert len(runs(msgs)) == 2, f"{w.read} {n}: runs {runs(msgs)} (one restart by dockerd expected)"
            for run in runs(msgs):  # each run's numbers with no hole (the json-file has them all)
                nums = sorted({int(hit.group(2)) for m in msgs for hit in [LINE_RE.match(m)]
                               if hit and hit.group(1) == run})
                assert nums == list(range(len(nums))), f"{w.read} {n} run {run}: a hole in the numbers"
            dups += len(msgs) - len(set(msgs))
        log = w.log_text()
        assert "lost before it was read" not in log and "log reader crashed" not in log
        report.append(f"read={w.read}: lines {sum(len(want[n]) for n in names)} all arrived, duplicates {dups}; "
                      f"reconnected {resumed:.1f}s and new run's lines in the sink {seen:.1f}s after dockerd "
                      f"answered")
        assert resumed <= RESUME_SECS, f"{w.read}: reconnected {resumed:.1f}s after dockerd answered"
        assert seen <= RESUME_SECS, f"{w.read}: shipping resumed {seen:.1f}s after dockerd answered"
    print("\n".join(report))
    assert not RUNNING
