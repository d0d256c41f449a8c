from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shipper.config import load_dict
from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks.base import SinkContext
from shipper.sinks.stdout import LOCK_FILE, StdoutSink
from shipper.telemetry.metrics import Metrics

REQUESTS, PER_REQUEST = 8, 500  # each request ~300 KB: far past what a pipe keeps whole (4 KiB)

WORKER = f"""
import asyncio, sys
from pathlib import Path
from shipper.config import load_dict
from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks.base import SinkContext
from shipper.sinks.stdout import StdoutSink
from shipper.telemetry.metrics import Metrics

async def main(state: str, tag: str) -> None:
    cfg = load_dict({{"sinks": {{"o": {{"type": "stdout"}}}}}}, env={{}}).sinks["o"]
    sink = StdoutSink(cfg, SinkContext("o", Path(state), "h", Metrics()))
    await sink.start()
    meta = ContainerMeta(id="c" * 64, name=tag, image="i", host="h")
    Path(state, "ready-" + tag).touch()
    sys.stdin.read(1)  # both workers write at once
    for r in range({REQUESTS}):
        events = [Event("2026-12-01T00:00:00Z", f"{{tag}} {{r}} {{i}} " + "x" * 300) for i in range({PER_REQUEST})]
        await sink.send(sink.encode([Batch(meta, events)]))
    await sink.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def make_sink(state: Path) -> StdoutSink:
    cfg = load_dict({"sinks": {"o": {"type": "stdout"}}}, env={}).sinks["o"]
    return StdoutSink(cfg, SinkContext("o", state, "h", Metrics()))  # type: ignore[arg-type]


def test_workers_sharing_one_pipe_write_whole_lines(tmp_path: Path) -> None:
    """Two workers inherit the supervisor's stdout, a pipe here: their requests, each far larger than a pipe
    keeps whole, must come out one after another, never one's lines spliced into the other's."""
    r, w = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), tag], stdout=w, stdin=subprocess.PIPE)
             for tag in ("a", "b")]
    os.close(w)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready-{tag}").exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the workers did not start"
        time.sleep(0.01)
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()  # go
    out = bytearray()
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):  # a slow reader: the pipe fills, the writers wait for room in turn
            out += chunk
    assert [p.wait(60) for p in procs] == [0, 0]
    got: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    for line in out.splitlines():
        words = orjson.loads(line)["message"].split()  # a spliced line is not JSON, or not its own message
        got[words[0]].append((int(words[1]), int(words[2])))
    want = [(q, i) for q in range(REQUESTS) for i in range(PER_REQUEST)]
    assert got == {"a": want, "b": want}


async def test_the_lock_file_is_the_owners_only(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.start()
    await sink.close()
    assert stat.S_IMODE((tmp_path / LOCK_FILE).stat().st_mode) == 0o600


async def test_without_a_lock_file_it_writes_alone_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A check or a replay whose state dir cannot be written still prints its events."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    sink = make_sink(tmp_path / "missing")
    with caplog.at_level(logging.WARNING, "shipper.sinks.stdout"):
        await sink.start()
    await sink.send(sink.encode([Batch(ContainerMeta(id="c" * 64, name="web", image="i", host="h"),
                                       [Event("2026-12-01T00:00:00Z", "printed")])]))
    await sink.close()
    assert orjson.loads(out.getvalue())["message"] == "printed"
    assert "writes without its lock" in caplog.text and "missing" in caplog.text
