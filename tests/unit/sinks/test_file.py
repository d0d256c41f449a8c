from __future__ import annotations

from pathlib import Path

import orjson

from shipper.config import load_dict
from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks.base import SinkContext
from shipper.sinks.file import FileSink
from shipper.telemetry.metrics import Metrics

META = ContainerMeta(id="c" * 64, name="web", image="img:1", host="h")


async def test_writes_one_ecs_event_a_line_and_rotates(tmp_path: Path) -> None:
    cfg = load_dict({"sinks": {"f": {"type": "file", "path": str(tmp_path / "out.jsonl"), "max_bytes": 2000,
                                     "max_files": 2}}}, env={}).sinks["f"]
    sink = FileSink(cfg, SinkContext("f", tmp_path, "h", Metrics()))  # type: ignore[arg-type]
    await sink.start()
    for i in range(30):
        await sink.send(sink.encode([Batch(META, [Event("2026-11-26T00:00:00Z", f"line {i} é")])]))
    await sink.close()
    files = [tmp_path / "out.jsonl.2", tmp_path / "out.jsonl.1", tmp_path / "out.jsonl"]
    assert all(f.exists() for f in files)
    assert not (tmp_path / "out.jsonl.3").exists()
    assert all(f.stat().st_size <= 2000 for f in files)
    lines = [orjson.loads(x) for f in files for x in f.read_bytes().splitlines()]
    got = [d["message"] for d in lines]
    assert got == [f"line {i} é" for i in range(30 - len(got), 30)]
    assert lines[0]["container"]["name"] == "web"


async def test_default_path_is_in_state_dir(tmp_path: Path) -> None:
    cfg = load_dict({}, env={}).sinks["file"]
    sink = FileSink(cfg, SinkContext("file", tmp_path, "h", Metrics()))  # type: ignore[arg-type]
    await sink.start()
    await sink.send(sink.encode([Batch(META, [Event("t", "x")])]))
    await sink.close()
    assert orjson.loads((tmp_path / "events.jsonl").read_bytes())["message"] == "x"


async def test_torn_last_line_is_cut_at_start(tmp_path: Path) -> None:
    """A kill mid-write leaves half a line; the next run must not glue its first event onto it."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"message":"whole"}\n{"message":"to')
    m = Metrics()
    cfg = load_dict({"sinks": {"f": {"type": "file", "path": str(out)}}}, env={}).sinks["f"]
    sink = FileSink(cfg, SinkContext("f", tmp_path, "h", m))  # type: ignore[arg-type]
    await sink.start()
    await sink.send(sink.encode([Batch(META, [Event("t", "next")])]))
    await sink.close()
    lines = out.read_bytes().splitlines()
    assert orjson.loads(lines[0]) == {"message": "whole"}
    assert orjson.loads(lines[1])["message"] == "next"
    assert len(lines) == 2
    assert m.get("shipper_sink_torn_bytes_total") == len(b'{"message":"to')
