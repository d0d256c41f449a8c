"""A full disk under the whole daemon: the state dir (offsets, ledger and the disk spool) on a real 2 MiB tmpfs
that fills while a container logs, a real dockerd, a real rsyslogd that is down at first and pins the spool.

The file sink writes to the normal disk. What the test checks is where every line went: the spool fills the
tmpfs, the push that does not fit fails, reading pauses (Docker keeps the json-file meanwhile) and the daemon
keeps running and says so once; when space comes back shipping resumes by itself, and every line the
container wrote is in both sinks, duplicates (if any) carrying the first copy's event.id.

Needs root (mount -t tmpfs) and rsyslogd; under CI=true either missing fails the test.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, require
from tests.integration.delivery_support import (
    Daemon,
    assert_exist,
    by_container,
    counting_loop,
    numbers,
    read_sink,
    wait_until,
)
from tests.integration.rsyslog import Rsyslog
from tests.integration.rsyslog import available as rsyslog_available

pytestmark = [pytest.mark.docker, pytest.mark.rsyslog]

RunContainer = Callable[..., Any]
TMPFS_SIZE = "2m"
PUSH_FAILED = "cannot write to the spool, reading is paused until it can"
# Lines of ~100 bytes at ~2,000 lines/s: the spool (about 200 bytes an event on disk) fills 2 MiB in ~5 s.
LINES = 40_000
BURST, PAUSE = 200, 0.1
TEXT = "full-disk " + "x" * 80


@pytest.fixture
def rsyslog_tcp() -> Iterator[Rsyslog]:
    """A real rsyslogd with one plain TCP input, not started: the test starts it when space should return."""
    require("rsyslogd", rsyslog_available(), "apt-get install rsyslog")
    r = Rsyslog(inputs=("tcp",))
    yield r
    r.close()


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """The daemon's state dir on a 2 MiB tmpfs, unmounted after the test whatever happened."""
    d = tmp_path / "state"
    d.mkdir()
    ok = os.geteuid() == 0 and shutil.which("mount") is not None
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(d)],
                          capture_output=True, text=True) if ok else None
    require(f"a {TMPFS_SIZE} tmpfs (mount -t tmpfs needs root)", proc is not None and proc.returncode == 0,
            proc.stderr.strip() if proc is not None else "not root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def json_file_lines(c: Any) -> int:
    """Lines Docker has kept in the container's json-file (one entry a line here)."""
    c.reload()
    with open(c.attrs["LogPath"], "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def syslog_msgs(r: Rsyslog) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for rec in r.records():
        out[rec["app"]].append(rec["msg"])
    return out


def config(r: Rsyslog, segment_bytes: int) -> str:
    seg = f"segment_bytes = {segment_bytes}\n" if segment_bytes else ""
    return f"""
[buffer]
type = "disk"
{seg}
[sinks.out]
type = "file"
path = "{{out}}"
max_bytes = 0

[sinks.central]
type = "syslog"
address = "{r.address("tcp")}"
retry_initial_secs = 0.2
retry_max_secs = 1.0
connect_timeout_secs = 1.0
"""


def check_all_arrived(name: str, evs: list[dict[str, Any]], want: int, where: str) -> int:
    """Every number 0..want-1 at least once; every repeat has the first copy's event.id. Returns duplicates."""
    nums = numbers([e["message"] for e in evs])
    assert len(nums) == len(evs), f"{where}: an event without its number (a line cut or merged)"
    missing = sorted(set(range(want)) - set(nums))
    assert not missing, f"{where}: {len(missing)} of {want} lines missing, first {missing[:10]}"
    first_id: dict[int, str] = {}
    for n, e in zip(nums, evs, strict=True):
        assert first_id.setdefault(n, e["event"]["id"]) == e["event"]["id"], f"{where} n={n}: a new event.id"
        assert e["message"] == f"n={n} {TEXT}", f"{where}: line {n} corrupted: {e['message']!r:.200}"
    return len(nums) - want


@pytest.mark.timeout(240)
@pytest.mark.parametrize("segment_bytes", [0, 256 * 1024], ids=["default-segments", "256k-segments"])
def test_state_dir_on_a_full_disk_pauses_reading_and_resumes_by_itself(
        tmp_path: Path, small_state: Path, run_container: RunContainer, rsyslog_tcp: Rsyslog,
        segment_bytes: int) -> None:
    """rsyslog down from the start, so its cursor holds every record: the spool fills the 2 MiB tmpfs and the
    push that does not fit fails. Reading must pause (the file sink stops growing while Docker's json-file
    keeps growing), the daemon must keep running, the failure must be logged once and counted; once rsyslog
    comes up the spool drains, its segments are deleted, the tmpfs has room again, reading resumes by
    itself, and every line reaches both sinks.

    `default-segments` keeps buffer.segment_bytes at its default (64 MiB, far more than the disk): the whole
    spool is one segment, the one being written."""
    r = rsyslog_tcp
    d = Daemon(tmp_path, config(r, segment_bytes), stats_secs=0.5)
    assert d.state == small_state
    d.start()
    c = run_container(counting_loop(LINES, TEXT, burst=BURST, pause=PAUSE, then="sleep 600"), labels=d.labels,
                      log_config={"type": "json-file", "config": {"max-size": "500m", "max-file": "2"}})
    started = time.monotonic()

    def out_count() -> int:
        return len(by_container(read_sink(d.out).events).get(c.name, []))

    wait_until(lambda: PUSH_FAILED in d.log_text(), 90, "the spool push to fail on the full tmpfs", alive=d)
    full_at = time.monotonic() - started
    assert free_bytes(small_state) < 64 * 1024, f"the tmpfs is not full: {free_bytes(small_state)} bytes free"
    held = out_count()
    time.sleep(3.0)  # reading is paused: the file sink gets nothing new while the container goes on writing
    assert d.running, f"shipper exited on a full disk:\n{d.log_text()[-3000:]}"
    paused = out_count()
    written = json_file_lines(c)
    assert paused - held < 2048, f"reading went on with the spool full: {held} -> {paused}"
    assert written > paused + 2000, f"the container did not write on ({written} in its log, {paused} shipped)"
    log = d.log_text()
    assert log.count(PUSH_FAILED) == 1, "the spool push failure was not logged exactly once"
    assert "shipper_spool_write_errors_total" in log
    errors_line = [line for line in log.splitlines() if "spool_write_errors=" in line]
    if errors_line:  # the stats line shows the counter (when shipper's stats line has it)
        assert int(errors_line[-1].split("spool_write_errors=")[1].split()[0]) >= 1

    r.start()  # space comes back: rsyslog takes the spool, its segments go
    back_at = time.monotonic()

    def complete() -> bool:
        assert_exist([c])
        return (len(set(numbers([e["message"] for e in by_container(read_sink(d.out).events).get(c.name, [])])))
                >= LINES and len(syslog_msgs(r).get(c.name, [])) >= LINES)

    try:
        wait_until(complete, 150, f"all {LINES} lines in both sinks after rsyslog came back", alive=d, every=0.5)
    finally:
        print(f"\nsegment_bytes={segment_bytes or 'default'} full after {full_at:.1f}s; shipped when paused "
              f"{paused}/{LINES}; json-file had {written}; after rsyslog up: file sink {out_count()}, "
              f"rsyslog {len(syslog_msgs(r).get(c.name, []))}; tmpfs free {free_bytes(small_state)} bytes; "
              f"'{PUSH_FAILED}' logged {d.log_text().count(PUSH_FAILED)}x; "
              f"offsets-save errors {d.log_text().count('cannot save offsets')}x; "
              f"ledger-save errors {d.log_text().count('spool ledger not saved')}x")
    resumed = time.monotonic() - back_at
    time.sleep(1.0)  # anything extra would show now
    assert d.stop() == 0
    dup_file = check_all_arrived(c.name, by_container(read_sink(d.out).events)[c.name], LINES, "file sink")
    got = syslog_msgs(r)[c.name]
    nums = numbers(got)
    assert set(nums) == set(range(LINES)), f"rsyslog: missing {sorted(set(range(LINES)) - set(nums))[:10]}"
    assert all(m == f"n={n} {TEXT}" for m, n in zip(got, nums, strict=True)), "rsyslog: a line corrupted"
    assert not [line for line in read_sink(d.out).torn], "a torn line in the file sink"
    log = d.log_text()
    assert "lost before it was read" not in log
    assert "dropped events" not in log
    print(f"complete {resumed:.1f}s after rsyslog came back; duplicates: file sink {dup_file}, "
          f"rsyslog {len(nums) - LINES}")
    if IN_CI:
        assert resumed < 120
