"""Both log readers against the real dockerd: its own rotation, its own API stream, TTY and all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

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
WAIT_GO = "while [ ! -f /go ]; do sleep 0.05; done"
BURST = 20_000


class Collect:
    def __init__(self) -> None:
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


@pytest.fixture
async def docker_api(docker_client: Any) -> AsyncIterator[DockerClient]:
    client = DockerClient.from_config(DockerConfig())
    yield client
    await client.close()


# --- json-file ---------------------------------------------------------------------------------------------


async def test_burst_through_dockerd_rotation_every_line_once_in_order(run_container: Any) -> None:
    """20,000 lines through max-size=64k, max-file=3: about 25 rotations in some 60 ms, each file deleted
    ~5 ms after it stops being written.

    The reader opens each file as soon as inotify reports it, and an open file survives its deletion, so
    it normally gets every line. But on a 2-core host dockerd saturates one core and the reader can be
    descheduled for longer than that window: then dockerd deletes whole files unread. That is allowed, as
    long as it is reported: every missing range must have its gap, nothing may be repeated or reordered,
    and with no gap reported every line must be there."""
    c = run_container(f"sh -c '{WAIT_GO}; seq 1 {BURST}'", log_config=ROTATING)
    col = Collect()
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
    assert got == sorted(set(got)), "repeated or out of order"
    assert col.metrics.get("shipper_lines_invalid_total") == 0
    missing = sorted(set(range(1, BURST + 1)) - set(got))
    ranges = sum(1 for i, n in enumerate(missing) if i == 0 or missing[i - 1] != n - 1)
    assert ranges <= gaps(), f"{len(missing)} lines in {ranges} ranges lost without a gap reported"
    if gaps() == 0:
        assert got == list(range(1, BURST + 1))
    assert got[-1] == BURST  # the live file is never lost
    if missing:
        print(f"reader was outrun: {len(missing)} lines in {ranges} ranges lost, {gaps()} gaps reported")


async def test_a_checkpoint_rotated_away_is_reported_as_the_exact_gap(run_container: Any) -> None:
    """A reader stopped while the container writes 20,000 lines: its checkpoint's file is deleted by the
    time it restarts. The restart reports one gap and delivers the rest exactly once, in order, so the
    lines lost are one contiguous range starting right after the checkpoint."""
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
    assert got == list(range(got[0], BURST + 1))  # one contiguous run to the end: no repeat, no hole
    assert got[0] > 101
    assert second.metrics.get("shipper_log_gap_total", container=c.name, reason="rotated_before_read") == 1
    assert second.metrics.get("shipper_log_gap_total") == 1


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
