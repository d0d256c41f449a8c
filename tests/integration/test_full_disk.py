"""A full disk under the whole daemon: the state dir (offsets, ledger and the disk spool) on a real 2 MiB tmpfs
that fills while a container logs, a real dockerd, a real rsyslogd that is down at first and pins the spool.

The file sink writes to the normal disk. What the test checks is where every line went: the spool fills the
tmpfs, the push that does not fit fails, reading pauses (Docker keeps the json-file meanwhile) and the daemon
keeps running and says so once; when space comes back shipping resumes by itself, and every line the
container wrote is in both sinks, duplicates (if any) carrying the first copy's event.id.

Two tests of the spool alone (no dockerd) pin down what the daemon test found: a spool whose segment
being written holds everything could never free room on a full disk, and a segment that could not be
created at rotation left the spool broken for the next push.

Needs root (mount -t tmpfs) and rsyslogd; under CI=true either missing fails the test.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.buffer.spool import DiskSpool
from shipper.buffer.spool import disk as spool_disk
from shipper.config import load_dict
from shipper.errors import SpoolError
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics
from tests.conftest import IN_CI, require
from tests.integration.delivery_support import (
    Daemon,
    assert_exist,
    by_container,
    counting_loop,
    newest_per_worker,
    numbers,
    read_sink,
    syslog_sink,
    wait_until,
)
from tests.integration.rsyslog import Rsyslog

RunContainer = Callable[..., Any]
TMPFS_SIZE = "2m"
PUSH_FAILED = "cannot write to the spool, reading is paused until it can"
RESUMED = "spool writable again, reading resumed"
WRITE_ERRORS_RE = re.compile(r"stats containers=.* spool_write_errors=(\d+)")
# Lines of ~100 bytes at ~2,000 lines/s: the spool (~150 bytes an event on disk) fills 2 MiB in ~7 s.
LINES = 40_000
BURST, PAUSE = 200, 0.1
TEXT = "full-disk " + "x" * 80


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """The daemon's state dir on a 2 MiB tmpfs, unmounted after the test whatever happened."""
    yield from mount_tmpfs(tmp_path / "state")


def mount_tmpfs(d: Path) -> Iterator[Path]:
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


def spool_write_errors(d: Daemon) -> int:
    """shipper_spool_write_errors_total as the newest stats line shows it (each worker's, added)."""
    return sum(int(v[0]) for v in newest_per_worker(WRITE_ERRORS_RE, d.log_text()).values())


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
""" + syslog_sink(r.address("tcp"))


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


@pytest.mark.docker
@pytest.mark.rsyslog
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("segment_bytes", "space"), [(0, "rsyslog"), (256 * 1024, "rsyslog"), (0, "remount")],
                         ids=["default-segments-drained", "256k-segments-drained", "default-segments-remounted"])
def test_state_dir_on_a_full_disk_pauses_reading_and_resumes_by_itself(
        tmp_path: Path, small_state: Path, run_container: RunContainer, rsyslog_tcp: Rsyslog,
        segment_bytes: int, space: str) -> None:
    """rsyslog down from the start, so its cursor holds every record: the spool fills the 2 MiB tmpfs and the
    push that does not fit fails. Reading must pause (the file sink stops growing while Docker's json-file
    keeps growing), the daemon must keep running, the failure must be logged once and counted. Then space
    comes back, and reading must resume by itself and every line reach both sinks:

    - `drained`: rsyslog comes up, the spool drains and its delivered segments are deleted;
    - `remounted`: the tmpfs is remounted at 64 MiB while rsyslog is still down (the file sink gets every
      line first), then rsyslog comes up.

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
    errors_before = spool_write_errors(d)
    assert errors_before >= 1, "shipper_spool_write_errors_total is not counted in the stats line"
    assert RESUMED not in log

    back_at = time.monotonic()
    if space == "remount":  # more room while rsyslog is still down: the file sink must get everything first
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_state)], check=True, capture_output=True)
        wait_until(lambda: RESUMED in d.log_text(), 60, "reading to resume after the remount", alive=d)
        print(f"\nremounted: reading resumed {time.monotonic() - back_at:.1f}s later (the push retry backoff)")
        wait_until(lambda: len(set(numbers([e["message"] for e in by_container(read_sink(d.out).events)
                                            .get(c.name, [])]))) >= LINES,
                   120, f"all {LINES} lines in the file sink after the remount", alive=d, every=0.5)
        assert not r.running and not syslog_msgs(r)
    r.start()  # rsyslog takes the spool; its delivered segments go

    def complete() -> bool:
        assert_exist([c])
        return (len(set(numbers([e["message"] for e in by_container(read_sink(d.out).events).get(c.name, [])])))
                >= LINES and len(syslog_msgs(r).get(c.name, [])) >= LINES)

    try:
        wait_until(complete, 150, f"all {LINES} lines in both sinks after space came back", alive=d, every=0.5)
    finally:
        print(f"\n{space}, segment_bytes={segment_bytes or 'default'}: full after {full_at:.1f}s; shipped when "
              f"paused {paused}/{LINES}; json-file had {written}; at the end: file sink {out_count()}, "
              f"rsyslog {len(syslog_msgs(r).get(c.name, []))}; tmpfs free {free_bytes(small_state)} bytes; "
              f"'{PUSH_FAILED}' logged {d.log_text().count(PUSH_FAILED)}x; "
              f"offsets-save errors {d.log_text().count('cannot save offsets')}x; "
              f"ledger-save errors {d.log_text().count('spool ledger not saved')}x")
    resumed = time.monotonic() - back_at
    time.sleep(1.0)  # anything extra would show now
    errors_after = spool_write_errors(d)
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
    assert "log reader crashed" not in log and "Traceback" not in log
    assert log.count(PUSH_FAILED) == 1, "the spool push failure was not logged exactly once"
    assert RESUMED in log, "shipper did not say that reading resumed"
    print(f"complete {resumed:.1f}s after space came back; duplicates: file sink {dup_file}, "
          f"rsyslog {len(nums) - LINES}; spool_write_errors {errors_before} when paused, {errors_after} at the end")
    if IN_CI:
        assert resumed < 120


# --- the spool alone on a full disk (no dockerd): what the daemon test above found -------------------------

META = ContainerMeta(id="c" * 64, name="web", image="img:1", host="h")


def spool_batch(k: int, size: int) -> Batch:
    return Batch(META, [Event("2026-11-30T00:00:00.000000001Z", f"n={k} " + "x" * size, seq=k)],
                 Checkpoint(META.id, k))


async def open_disk_spool(d: Path, **buffer: Any) -> tuple[DiskSpool, list[Checkpoint]]:
    safe: list[Checkpoint] = []
    cfg = load_dict({"buffer": {"type": "disk", **buffer}}, env={}).buffer
    spool = DiskSpool(d / "spool", cfg, Metrics(), safe.append)
    await spool.open()
    return spool, safe


async def test_a_segment_that_cannot_be_created_leaves_the_spool_writable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation on a full disk: the next segment cannot be created (ENOSPC). The push fails with SpoolError
    (the daemon waits and retries it); the spool must still take the next push, whether or not it needs a
    new segment. (It used to close the segment being written first: the next push that fitted in it then
    died on `assert seg.wfd is not None`, an AssertionError the daemon does not catch, and the container's
    reader crashed.)"""
    spool, _ = await open_disk_spool(tmp_path, segment_bytes=4096)
    cur = spool.cursor("s")
    await spool.push(spool_batch(0, 3000))
    real = spool_disk._create_segment

    def enospc(*args: Any) -> tuple[int, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_disk, "_create_segment", enospc)
    with pytest.raises(SpoolError, match="cannot create spool segment"):
        await spool.push(spool_batch(1, 3000))
    monkeypatch.setattr(spool_disk, "_create_segment", real)
    await spool.push(spool_batch(2, 10))  # fits in the first segment
    await spool.push(spool_batch(3, 3000))  # needs the next one
    got = [(await cur.next())[1].events[0].message.split()[0] for _ in range(3)]
    assert got == ["n=0", "n=2", "n=3"]
    await spool.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "tiny")


async def test_a_full_disk_with_everything_delivered_frees_the_segment_being_written(tiny_fs: Path) -> None:
    """The whole spool is the one segment being written (default segment_bytes: 64 MiB, far more than the
    disk) and the disk is full to the last block. Once every cursor has acked it, the next push must succeed:
    the delivered segment is deleted even though it is the active one, and even though not one block is
    left to create the next segment first. (Before, only sealed segments were ever deleted outside max_bytes,
    so this spool never freed anything and reading stayed paused for good.)"""
    spool, safe = await open_disk_spool(tiny_fs)
    cur = spool.cursor("s")
    pushed = 0
    with pytest.raises(SpoolError, match="No space left on device"):
        for k in range(100_000):
            await spool.push(spool_batch(k, 2000))
            pushed += 1
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)  # whatever the failed write left free, take it
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"f" * 4096)
    finally:
        os.close(fd)
    assert free_bytes(tiny_fs) == 0
    assert len(list((tiny_fs / "spool" / "segments").glob("*.seg"))) == 1
    for _ in range(pushed):
        seq, _ = await cur.next()
        cur.ack(seq)
    await spool.push(spool_batch(pushed, 2000))
    seq, b = await cur.next()
    assert b.events[0].message.startswith(f"n={pushed} ")
    cur.ack(seq)
    assert free_bytes(tiny_fs) > 1024 * 1024, "the delivered segment was not deleted"
    await spool.close()
    assert [cp.position for cp in safe] == list(range(pushed + 1)), "a checkpoint lost or out of order"
