"""The file sink under what happens to real log files: a real logrotate (`create`, `copytruncate`) run while
the sink writes, and a real full disk (a 64 KiB tmpfs mounted for the test: needs root and `mount`).

No dockerd needed: the sink is driven directly, through the runner where retries matter."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shipper.config import load_dict
from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks.base import SinkContext
from shipper.sinks.file import FileSink
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics
from tests.conftest import require

META = ContainerMeta(id="c" * 64, name="web", image="img:1", host="h")


def make_sink(path: Path, m: Metrics, **keys: object) -> FileSink:
    table = {"type": "file", "path": str(path), "retry_initial_secs": 0.01, "retry_max_secs": 0.05, **keys}
    cfg = load_dict({"sinks": {"f": table}}, env={}).sinks["f"]
    return FileSink(cfg, SinkContext("f", path.parent, "h", m))  # type: ignore[arg-type]


def batch(*messages: str) -> Batch:
    return Batch(META, [Event("2026-11-26T00:00:00Z", msg) for msg in messages])


def messages(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
    return [orjson.loads(x)["message"] for x in data.splitlines()]


def logrotate(tmp_path: Path, target: Path, directive: str) -> None:
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{target} {{\n  rotate 20\n  {directive}\n  nocompress\n  missingok\n}}\n")
    proc = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
                          capture_output=True, text=True, timeout=30)
    # One race is logrotate's own: the sink may make the new file between logrotate's rename and its create;
    # logrotate then moves that file to `<name>-YYYYMMDDHH.backup` (kept, nothing lost) and says so.
    assert proc.returncode == 0 or list(target.parent.glob("*.backup")), proc.stderr


def have_logrotate() -> None:
    require("logrotate", shutil.which("logrotate") is not None, "apt-get install logrotate")


@pytest.mark.timeout(60)
async def test_logrotate_create_while_writing_loses_nothing(tmp_path: Path) -> None:
    """logrotate's default (`create`: move the file away, make a new one) three times while a writer sends
    one numbered event a request: every event is in exactly one file, in order, and after each rotation
    new events go to the new file at the path (they used to go on into the moved file, and once logrotate
    deleted that, nowhere)."""
    have_logrotate()
    out = tmp_path / "logs" / "events.jsonl"
    m = Metrics()
    sink = make_sink(out, m, max_bytes=0)  # logrotate rotates; the sink's own rotation is off
    await sink.start()
    stop = asyncio.Event()
    sent: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            msg = f"n={i}"
            await sink.send(sink.encode([batch(msg)]))
            sent.append(msg)
            i += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(writer())
    for _ in range(3):
        await asyncio.sleep(0.3)
        await asyncio.to_thread(logrotate, tmp_path, out, "create 0600")
    await asyncio.sleep(0.3)
    stop.set()
    await task
    await sink.close()
    rotated = [out.with_name(f"events.jsonl.{k}") for k in (3, 2, 1)]
    per_file = {f.name: messages(f) for f in out.parent.glob("events.jsonl*")}
    assert all(per_file[f.name] for f in [*rotated, out]), f"a file got no events: {per_file.keys()}"
    assert not out.with_name("events.jsonl.4").exists()
    arrived = sorted(int(msg[2:]) for got in per_file.values() for msg in got)
    assert arrived == list(range(len(sent)))  # every event, each once
    for got in per_file.values():  # each file holds a run of consecutive events
        first = sent.index(got[0])
        assert got == sent[first:first + len(got)]
    assert per_file[out.name][-1] == sent[-1]  # the newest are in the file at the path
    assert [per_file[f.name][0] for f in rotated] == sorted((per_file[f.name][0] for f in rotated),
                                                             key=lambda msg: int(msg[2:]))
    assert m.get("shipper_sink_file_followed_total") >= 3


@pytest.mark.timeout(60)
async def test_logrotate_copytruncate_keeps_rotation_counting(tmp_path: Path) -> None:
    """`copytruncate` empties the file under the open descriptor: what is written after it starts at offset
    0 of the live file (no hole of zeros) and the sink's max_bytes counts from there, so it does not rotate
    early (which moved logrotate's copy about)."""
    have_logrotate()
    out = tmp_path / "logs" / "events.jsonl"
    m = Metrics()
    sink = make_sink(out, m, max_bytes=3000, max_files=0)
    await sink.start()
    before = [f"before {i}" for i in range(8)]  # about 2200 bytes
    after = [f"after {i}" for i in range(8)]
    for msg in before:
        await sink.send(sink.encode([batch(msg)]))
    await asyncio.to_thread(logrotate, tmp_path, out, "copytruncate")
    for msg in after:
        await sink.send(sink.encode([batch(msg)]))
    await sink.close()
    assert messages(out.with_name("events.jsonl.1")) == before
    assert messages(out) == after
    assert b"\0" not in out.read_bytes()
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="truncated") == 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up for real."""
    d = tmp_path / "small"
    d.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(d)],
                          capture_output=True, text=True)
    require("a small tmpfs (mount -t tmpfs needs root)", proc.returncode == 0, proc.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.timeout(60)
async def test_full_disk_retries_without_a_torn_line_and_delivers_once(small_fs: Path) -> None:
    """Requests until the tmpfs is full: the one that hits ENOSPC (part of it written: tmpfs writes what
    fits) is retried by the runner, counted and logged as a retry, never acked meanwhile; the part written
    is cut back, so the file holds whole lines only; once space is freed the retry lands, and every event
    is in the file exactly once, in order."""
    filler = small_fs / "filler"
    filler.write_bytes(b"f" * 16384)
    out = small_fs / "events.jsonl"
    m = Metrics()
    sink = make_sink(out, m, max_bytes=0)
    runner = SinkRunner("f", sink, None, m)
    await runner.start()
    sent: list[str] = []
    for r in range(1000):
        msgs = [f"r{r} e{i} " + "x" * 100 for i in range(8)]
        delivery = asyncio.ensure_future(runner.deliver(sink.encode([batch(*msgs)])))
        while not delivery.done() and not m.get("shipper_sink_retries_total"):
            await asyncio.sleep(0.002)
        if delivery.done():
            assert (await delivery).delivered == 8
            sent += msgs
            continue
        break
    else:
        raise AssertionError("the 64 KiB tmpfs never filled up")
    assert messages(out) == sent, "the failed request left part of itself behind"
    assert out.stat().st_size == len(out.read_bytes())
    assert runner.state in ("retrying", "failing")
    assert not delivery.done()
    filler.unlink()
    done = await asyncio.wait_for(delivery, 10)
    assert (done.delivered, done.failed) == (8, 0)
    await sink.close()
    assert messages(out) == sent + msgs
    assert m.get("shipper_events_sent_total") == len(sent) + 8
