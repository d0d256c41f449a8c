"""Both log readers against the real dockerd: its own rotation, its own API stream, TTY and all."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from shipper.config import Config, DockerConfig
from shipper.docker.client import DockerClient
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta, Flag
from shipper.sources.api import ApiSource
from shipper.sources.base import LogSource, SourceContext
from shipper.sources.jsonfile import JsonFileSource
from shipper.telemetry.metrics import Metrics

pytestmark = pytest.mark.docker

ROTATING = {"type": "json-file", "config": {"max-size": "64k", "max-file": "3"}}
MAX_SIZE = 64_000  # dockerd reads "64k" as 64,000 bytes, and rotates a file once it holds that much or more
WAIT_GO = "while [ ! -f /go ]; do sleep 0.05; done"
BURST = 20_000


class Collect:
    def __init__(self) -> None:
        self.name = ""
        self.batches: list[Batch] = []
        self.metrics = Metrics()
        self.cfg = Config(docker=DockerConfig(poll_interval_secs=0.05))

    async def emit(self, b: Batch) -> None:
        self.batches.append(b)

    @property
    def ctx(self) -> SourceContext:
        return SourceContext(self.cfg, self.metrics, self.emit)

    @property
    def messages(self) -> list[str]:
        return [e.message for b in self.batches for e in b.events]

    @property
    def checkpoint(self) -> Checkpoint | None:
        cps = [b.checkpoint for b in self.batches if b.checkpoint is not None]
        return cps[-1] if cps else None


def info_of(container: Any) -> ContainerInfo:  # a docker SDK container
    container.reload()
    a = container.attrs
    return ContainerInfo(ContainerMeta(container.id, container.name), log_path=a["LogPath"],
                         tty=a["Config"]["Tty"], running=a["State"]["Running"])


def first_number(path: str) -> int:
    with open(path, "rb") as f:
        return int(orjson.loads(f.readline())["log"])


def last_number(fd: int) -> int:
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 4096, max(0, size - 4096))
    return int(orjson.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])["log"])


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def stop(source: LogSource, task: asyncio.Task[None]) -> None:
    """What the app does at shutdown: cancel the reader, then close() it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await source.close()


async def go(container: Any) -> None:
    await asyncio.to_thread(container.exec_run, "touch /go")


def seq_bytes(numbers: list[int]) -> tuple[int, int]:
    """The least and most bytes dockerd wrote for these `seq` lines: `{"log":"N\\n","stream":"stdout",
    "time":"..."}` and a newline, the time having 0 to 9 digits of fraction (20 to 30 characters)."""
    base = sum(41 + len(str(n)) for n in numbers)
    return base + 20 * len(numbers), base + 30 * len(numbers)


def gap_metrics(col: Collect) -> tuple[float, float, float, float]:
    """(gaps, bytes, lines, possible gaps)"""
    m = col.metrics
    return (m.get("shipper_log_gap_total"), m.get("shipper_log_gap_bytes_total"),
            m.get("shipper_log_gap_lines_total"), m.get("shipper_log_gap_possible_total"))


def said_gaps(col: Collect) -> str:
    """The gap counters, for a failure's message."""
    return "gaps, bytes, lines, possible gaps: {}, {}, {}, {}".format(*gap_metrics(col))


def assert_gaps_account_for(col: Collect, missing: list[int]) -> None:
    """What the gap metrics say is what is missing at the sink.

    Nothing missing: no gap (and, inotify counting the files dockerd created, not even a possible one).
    Lines missing: they were in whole files dockerd created and deleted before the reader could open them,
    reported as rotation_overrun with the exact number of files (the lines metric: one entry at least
    each) and lost_bytes>=that many times max-size. A file dockerd rotated holds max-size bytes or more,
    less than one entry more, so the bytes missing must fall in that range for that number of files; one
    file more or less would be 64,000 bytes off.
    """
    gaps, nbytes, lines, possible = gap_metrics(col)
    assert possible == 0, "inotify counts the files dockerd created: no loss is left undecided"
    if not missing:
        assert gaps == 0, f"{gaps} gaps reported ({nbytes} bytes) and every line was delivered"
        return
    assert gaps >= 1
    assert col.metrics.get("shipper_log_gap_total", container=col.name, reason="rotation_overrun") == gaps
    files = int(lines)
    ranges = sum(1 for i, n in enumerate(missing) if i == 0 or missing[i - 1] != n - 1)
    assert ranges <= files, f"{len(missing)} lines in {ranges} ranges lost, {files} files reported"
    assert nbytes == files * MAX_SIZE
    least, most = seq_bytes(missing)
    assert most >= files * MAX_SIZE and least < files * (MAX_SIZE + 80), \
        f"{len(missing)} lines ({least}..{most} bytes) missing: not {files} whole files"
    assert len(missing) >= lines


@pytest.fixture
async def docker_api(docker_client: Any) -> AsyncIterator[DockerClient]:
    client = DockerClient.from_config(DockerConfig())
    yield client
    await client.close()


# --- json-file ---------------------------------------------------------------------------------------------


async def test_burst_through_dockerd_rotation_every_line_once_in_order(run_container: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """20,000 lines through max-size=64k, max-file=3: about 25 rotations in some 60 ms, each file deleted
    ~5 ms after it stops being written.

    The reader opens each file as soon as inotify reports it, and an open file survives its deletion, so
    it normally gets every line. But on a 2-core host dockerd saturates one core and the reader can be
    descheduled for longer than that window: then dockerd deletes whole files unread. That is allowed, as
    long as it is reported: every missing range must have its gap, nothing may be repeated or reordered,
    and with no gap reported every line must be there. The gap metrics say exactly how many files were
    lost, and how much that is at least (see assert_gaps_account_for)."""
    caplog.set_level(logging.DEBUG, "shipper.sources.jsonfile")  # each rotation the reader saw, on failure
    c = run_container(f"sh -c '{WAIT_GO}; seq 1 {BURST}'", log_config=ROTATING)
    col = Collect()
    col.name = c.name
    src = JsonFileSource(info_of(c), col.ctx, None)
    task = asyncio.create_task(src.run())
    await until(lambda: src._cur is not None, "the log file to be opened", 10)
    await go(c)
    await asyncio.to_thread(c.wait, timeout=120)
    src.stopped()
    gaps = lambda: col.metrics.get("shipper_log_gap_total")  # noqa: E731
    await until(lambda: col.messages[-1:] == [str(BURST)], "the last line", 60)
    src.removed()
    await asyncio.wait_for(task, 10)

    got = [int(m) for m in col.messages]
    assert got == sorted(set(got)), f"repeated or out of order; {said_gaps(col)}"
    assert col.metrics.get("shipper_lines_invalid_total") == 0
    missing = sorted(set(range(1, BURST + 1)) - set(got))
    ranges = sum(1 for i, n in enumerate(missing) if i == 0 or missing[i - 1] != n - 1)
    assert not missing or gaps(), f"{len(missing)} lines in {ranges} ranges lost without a gap reported"
    if gaps() == 0:
        assert got == list(range(1, BURST + 1))
    assert got[-1] == BURST  # the live file is never lost
    assert_gaps_account_for(col, missing)
    if missing:
        print(f"reader was outrun: {len(missing)} lines in {ranges} ranges lost, {gaps()} gaps reported, "
              f"{gap_metrics(col)[2]:.0f} files")


async def _burst_unseen(run_container: Any, lines: int) -> tuple[Collect, int, int]:
    """The reader holds the live file, then cannot look (the event loop is blocked) while the container
    writes `lines` numbered lines through max-size=64k, max-file=3 and exits. Returns what was collected,
    the last line of the file the reader held (deleted by dockerd meanwhile) and the first line of the
    oldest file left on disk."""
    c = run_container(f"sh -c '{WAIT_GO}; seq 1 {lines}'", log_config=ROTATING)
    col = Collect()
    col.name = c.name
    src = JsonFileSource(info_of(c), col.ctx, None)
    task = asyncio.create_task(src.run())
    await until(lambda: src._cur is not None and src._anchor is not None, "the log file to be opened", 10)
    held = src._cur
    assert held is not None
    # blocking calls, on purpose: the reader cannot look until the container is done
    c.exec_run("touch /go")
    c.wait(timeout=60)
    assert os.fstat(held.fd).st_nlink == 0, "dockerd did not rotate the held file away: the test proves nothing"
    held_last, oldest_first = last_number(held.fd), first_number(info_of(c).log_path + ".2")
    await until(lambda: col.messages[-1:] == [str(lines)], "the last line", 60)
    src.removed()
    await asyncio.wait_for(task, 10)
    got = [int(m) for m in col.messages]
    assert got == sorted(set(got)), "repeated or out of order"
    return col, held_last, oldest_first


async def test_max_file_rotations_while_the_reader_cannot_look_are_no_gap(run_container: Any) -> None:
    """3,000 lines are about 3.5 files of 64k: dockerd rotates exactly max-file (3) times while the reader
    cannot look. The file it held is deleted (its descriptor keeps it readable), the next two are `.2` and
    `.1`: on disk just like one rotation more, which would have deleted a file unread. Nothing is missing
    at the sink, and no gap (not even a possible one) is reported."""
    col, held_last, oldest_first = await _burst_unseen(run_container, 3000)
    assert oldest_first == held_last + 1, "not exactly max-file rotations: the test proves nothing"
    missing = sorted(set(range(1, 3001)) - {int(m) for m in col.messages})
    assert missing == []
    assert gap_metrics(col) == (0, 0, 0, 0)
    assert_gaps_account_for(col, missing)


async def test_a_file_rotated_away_while_the_reader_cannot_look_is_one_gap(run_container: Any) -> None:
    """4,000 lines are about 4.6 files: four rotations while the reader cannot look, so the file after the
    one it held was created and deleted unseen. The lines missing at the sink are exactly that file's, and
    the gap says so: one file (lost_lines>=1), lost_bytes>=64,000, and those lines' bytes fit one file."""
    col, held_last, oldest_first = await _burst_unseen(run_container, 4000)
    missing = sorted(set(range(1, 4001)) - {int(m) for m in col.messages})
    assert missing == list(range(held_last + 1, oldest_first)), "lines missing beyond the file deleted unseen"
    assert gap_metrics(col) == (1, MAX_SIZE, 1, 0)
    assert_gaps_account_for(col, missing)


async def test_a_checkpoint_rotated_away_is_reported_as_the_exact_gap(run_container: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A reader stopped while the container writes 20,000 lines: its checkpoint's file is deleted by the
    time it restarts. The restart reports one gap and delivers the rest exactly once, in order, so the
    lines lost are one contiguous range starting right after the checkpoint. The file was deleted after it
    reached max-size, so from the checkpoint to max-size at least was lost: the gap says exactly that much
    (lost_bytes>=64,000 minus the position); what was deleted after it, nothing on disk tells."""
    caplog.set_level(logging.DEBUG, "shipper.sources.jsonfile")
    c = run_container(f"sh -c 'seq 1 100; {WAIT_GO}; seq 101 {BURST}'", log_config=ROTATING)
    first = Collect()
    src = JsonFileSource(info_of(c), first.ctx, None)
    task = asyncio.create_task(src.run())
    await until(lambda: len(first.messages) >= 100, "the first 100 lines", 30)
    await stop(src, task)
    assert first.messages == [str(i) for i in range(1, 101)]
    cp = first.checkpoint
    assert cp is not None

    await go(c)
    await asyncio.to_thread(c.wait, timeout=120)
    second = Collect()
    src = JsonFileSource(info_of(c), second.ctx, cp)
    task = asyncio.create_task(src.run())
    await until(lambda: second.messages[-1:] == [str(BURST)], "the last line", 60)
    src.removed()
    await asyncio.wait_for(task, 10)
    got = [int(m) for m in second.messages]
    assert got == list(range(got[0], BURST + 1)), \
        f"not one contiguous run to the end; {said_gaps(second)}"
    assert got[0] > 101
    assert second.metrics.get("shipper_log_gap_total", container=c.name, reason="rotated_before_read") == 1
    assert second.metrics.get("shipper_log_gap_total") == 1
    assert isinstance(cp.position, int)
    assert gap_metrics(second) == (1, MAX_SIZE - cp.position, 1, 0)
    lo, hi = seq_bytes(list(range(1, 101)))
    assert lo <= cp.position <= hi  # the checkpoint is past the first 100 lines
    least, _ = seq_bytes(list(range(101, got[0])))
    assert least >= MAX_SIZE - cp.position  # what is missing is at least what the gap says


# --- Engine API ------------------------------------------------------------------------------------------


async def test_api_running_container_and_resume(run_container: Any, docker_api: DockerClient) -> None:
    c = run_container(f"sh -c 'for i in $(seq 1 50); do echo out $i; echo err $i >&2; done; {WAIT_GO}; "
                      "seq 51 60; sleep 600'")
    first = Collect()
    src = ApiSource(info_of(c), first.ctx, None, docker_api)
    task = asyncio.create_task(src.run())
    await until(lambda: len(first.messages) >= 100, "100 events", 30)
    await stop(src, task)
    evs = [e for b in first.batches for e in b.events]
    assert [e.message for e in evs if e.stream == "stdout"] == [f"out {i}" for i in range(1, 51)]
    assert [e.message for e in evs if e.stream == "stderr"] == [f"err {i}" for i in range(1, 51)]
    cp = first.checkpoint
    assert cp is not None and isinstance(cp.position, str)

    await go(c)
    second = Collect()
    src = ApiSource(info_of(c), second.ctx, cp, docker_api)
    task = asyncio.create_task(src.run())
    await until(lambda: len(second.messages) >= 10, "the next 10 lines", 30)
    await asyncio.sleep(0.3)
    assert second.messages == [str(i) for i in range(51, 61)]  # nothing again, nothing missed
    await asyncio.to_thread(c.remove, force=True)
    src.removed()
    await asyncio.wait_for(task, 15)


async def test_api_tty_container(run_container: Any, docker_api: DockerClient) -> None:
    c = run_container("sh -c 'echo one; echo two; head -c 20000 /dev/zero | tr \"\\0\" y; echo; "
                      "printf three'", tty=True)
    await asyncio.to_thread(c.wait, timeout=30)
    col = Collect()
    src = ApiSource(info_of(c), col.ctx, None, docker_api)
    task = asyncio.create_task(src.run())
    await until(lambda: len(col.messages) >= 4, "4 events", 30)
    evs = [e for b in col.batches for e in b.events]
    assert [e.message for e in evs] == ["one", "two", "y" * 20000, "three"]  # no "\r" left
    assert {e.stream for e in evs} == {"stdout"}
    assert evs[2].flags & Flag.PARTIAL  # dockerd cut it at 16 KiB; put back together
    assert evs[3].flags & Flag.INCOMPLETE  # no newline before the exit
    src.removed()
    await asyncio.wait_for(task, 15)


async def test_api_stopped_container(run_container: Any, docker_api: DockerClient) -> None:
    c = run_container("sh -c 'seq 1 10; seq 11 20 >&2'")
    await asyncio.to_thread(c.wait, timeout=30)
    col = Collect()
    src = ApiSource(info_of(c), col.ctx, None, docker_api)
    task = asyncio.create_task(src.run())
    await until(lambda: len(col.messages) >= 20, "20 events", 30)
    await asyncio.sleep(0.3)
    assert sorted(col.messages, key=int) == [str(i) for i in range(1, 21)]
    assert not task.done()  # it waits: a stopped container can be started again
    await asyncio.to_thread(c.start)
    src.started()
    await until(lambda: len(col.messages) >= 40, "the second run's 20 events", 30)
    assert sorted(col.messages[20:], key=int) == [str(i) for i in range(1, 21)]
    await asyncio.to_thread(c.wait, timeout=30)
    await asyncio.to_thread(c.remove, force=True)
    src.removed()
    await asyncio.wait_for(task, 15)
