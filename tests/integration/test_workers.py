"""`[pipeline] workers = 2` against a real dockerd: the containers are split between two worker processes,
the supervisor speaks for both (admin server, reload, stop), a worker that dies is started again without
loss, and fewer workers later drain what the others left in their spools.

(The kill -9 and outage tests of test_delivery.py run with one and with two workers too.)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shipper.workers import shard_of
from tests.integration.admin_support import AdminShipper, by_label
from tests.integration.delivery_support import counting_loop, numbers, syslog_sink, workers_of
from tests.integration.harness import messages_of
from tests.integration.rsyslog import Rsyslog
from tests.unit.telemetry.test_alert_rules import promtool

pytestmark = pytest.mark.docker

WORKERS = "\n[pipeline]\nworkers = {n}\n"


def both_workers(run_container: Any, d: AdminShipper, command: str, per_worker: int = 2) -> list[Any]:
    """Containers until each worker has `per_worker` of them (ids are random: which worker reads a container
    is known only once it exists)."""
    cs: list[Any] = []
    while min(sum(1 for c in cs if shard_of(c.id, 2) == k) for k in range(2)) < per_worker:
        assert len(cs) < 24, "container ids keep landing on one worker"
        cs.append(run_container(command, labels=d.labels))
    return cs


def worker_pid(d: AdminShipper, k: int) -> int:
    """The pid of worker `k` of 2, 0 while there is none."""
    assert d.proc is not None
    for pid in workers_of(d.proc.pid):
        if f"\0--worker\0{k}/2\0" in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
            return pid
    return 0


@pytest.mark.timeout(120)
def test_two_workers_share_the_containers_and_speak_as_one(tmp_path: Path, run_container: Any) -> None:
    d = AdminShipper(tmp_path, WORKERS.format(n=2))
    d.start()
    d.wait_admin()
    per = 300
    cs = both_workers(run_container, d, counting_loop(per, "hello"))
    evs = d.wait_for(lambda evs: all(len(messages_of(evs, c.name)) >= per for c in cs), 60, "every line")
    for c in cs:
        assert messages_of(evs, c.name) == [f"n={i} hello" for i in range(per)], c.name
    log = d.log_text()
    for c in cs:  # read by its worker, and by that one only
        k = shard_of(c.id, 2)
        assert f"[worker {k}]: reading container name={c.name} " in log
        assert f"[worker {1 - k}]: reading container name={c.name} " not in log

    status = d.status()
    assert status["workers"] == {"0": "up", "1": "up"}
    listed = {c["name"]: c["worker"] for c in status["containers"]}
    assert {c.name: listed.get(c.name) for c in cs} == {c.name: shard_of(c.id, 2) for c in cs}
    assert status["sinks"]["out"]["sent_events"] == per * len(cs)
    assert d.health()[0] == 200
    code, page = d.get("/")
    assert code == 200 and all(c.name.encode() in page for c in cs)

    code, body = d.get("/metrics")
    assert code == 200
    checked = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    m = d.metrics(by_worker=True)
    read = {dict(k[1])["container"]: (dict(k[1])["worker"], v) for k, v in m.items()
            if k[0] == "shipper_events_read_total"}
    assert {c.name: read[c.name] for c in cs} == {c.name: (str(shard_of(c.id, 2)), per) for c in cs}
    assert by_label(m, "shipper_workers_up", "worker") == {"0": 1, "1": 1}
    assert sum(v for k, v in m.items() if k[0] == "shipper_events_sent_total") == per * len(cs)

    shown = d.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert all(c.name in shown.stdout for c in cs), shown.stdout
    reloaded = d.cli("reload")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    d.until(lambda: all(f"[worker {k}]: config reloaded" in d.log_text() for k in range(2)), 20,
            "both workers to reload")

    assert d.proc is not None
    supervisor = d.proc.pid
    assert len(workers_of(supervisor)) == 2
    assert d.stop() == 0
    assert not workers_of(supervisor), "a worker outlived its supervisor's stop"


@pytest.mark.timeout(120)
def test_a_worker_killed_is_started_again_and_its_containers_lose_nothing(tmp_path: Path,
                                                                          run_container: Any) -> None:
    d = AdminShipper(tmp_path, WORKERS.format(n=2))
    d.start()
    d.wait_admin()
    per = 4000
    cs = both_workers(run_container, d, counting_loop(per, "slow", burst=200, pause=0.1), per_worker=1)
    d.wait_for(lambda evs: all(len(messages_of(evs, c.name)) >= 200 for c in cs), 60, "some lines")
    victim = worker_pid(d, 0)
    assert victim
    subprocess.run(["kill", "-9", str(victim)], check=True)
    d.until(lambda: "worker 0 ended unexpectedly" in d.log_text(), 10, "the supervisor to notice")
    d.until(lambda: worker_pid(d, 0) not in (0, victim), 30, "worker 0 started again")
    evs = d.wait_for(lambda evs: all(set(numbers(messages_of(evs, c.name))) >= set(range(per)) for c in cs), 90,
                     "every line after the kill")
    for c in cs:
        assert set(numbers(messages_of(evs, c.name))) == set(range(per)), c.name
    assert by_label(d.metrics(by_worker=True), "shipper_worker_restarts_total", "worker") == {"0": 1, "1": 0}
    d.until(lambda: d.status()["workers"] == {"0": "up", "1": "up"}, 20, "both workers up")
    assert d.stop() == 0


@pytest.mark.rsyslog
@pytest.mark.timeout(180)
def test_fewer_workers_drain_the_spools_the_others_left(tmp_path: Path, run_container: Any,
                                                        rsyslog_tcp: Rsyslog) -> None:
    """Two workers spool what a dead rsyslog cannot take and stop; one worker starts: the two spools no
    worker owns any more are drained (each by a process that reads nothing), the containers' offsets are
    the one worker's now (nothing read again), and every line arrives once."""
    r = rsyslog_tcp

    def daemon(n: int, label: str | None = None) -> AdminShipper:
        return AdminShipper(tmp_path, WORKERS.format(n=n) + '[buffer]\ntype = "disk"\nshutdown_drain_secs = 1\n'
                            + syslog_sink(r.address("tcp")), file_sink=False, select_label=label)

    d = daemon(2)
    d.start()
    d.wait_admin()
    per = 500
    cs = both_workers(run_container, d, counting_loop(per, "held") + "; sleep 600")
    d.until(lambda: sum(v for k, v in d.metrics().items() if k[0] == "shipper_events_read_total") == per * len(cs),
            60, "every line read into the spools")
    assert d.stop() == 0
    assert all((tmp_path / "state" / "workers" / str(k) / "spool").is_dir() for k in range(2))

    one = daemon(1, d.run_id)
    r.start()
    one.start()
    one.until(lambda: len(r.records()) >= per * len(cs), 90, "every spooled line in rsyslog")
    time.sleep(1)  # anything read again would show now
    got: dict[str, list[str]] = {}
    for rec in r.records():
        got.setdefault(rec["app"], []).append(rec["msg"])
    for c in cs:
        assert got[c.name] == [f"n={i} held" for i in range(per)], c.name
    log = one.log_text()
    for k in range(2):
        folder = tmp_path / "state" / "workers" / str(k)
        assert f"spool drained: {folder} " in log, log[-3000:]
        assert (folder / "drained").exists()
    assert one.stop() == 0
