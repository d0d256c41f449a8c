"""What /status says, from a real App with real runners (a null sink) and a memory buffer."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from shipper.app import App
from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull, load_dict
from shipper.event import Batch, ContainerMeta, Event
from shipper.telemetry import status as st
from shipper.telemetry.page import render_page
from shipper.telemetry.top import render


def make_app(tmp_path: Path) -> App:
    cfg = load_dict({"state": {"dir": str(tmp_path)}, "sinks": {"a": {"type": "null"}, "b": {"type": "null"}}})
    app = App(cfg)
    app.buffer = MemoryBuffer(lambda cp: None, app.metrics, 100, 10_000, WhenFull.BLOCK)
    app._make_runners()
    return app


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000000Z"


def batch(cid: str, *times: float) -> Batch:
    return Batch(ContainerMeta(id=cid, name="web"), [Event(iso(t), "m") for t in times])


def test_seconds_behind_follows_the_slowest_sink(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    now = time.time()
    b = batch("c" * 64, now - 100, now - 50)
    app.ops.pushed(b)
    assert 99 < app.ops.seconds_behind("c" * 64, at_end=True) < 102  # no sink delivered any: since the first
    app.ops.delivered("a", [batch("c" * 64, now - 100, now - 80)])
    app.ops.delivered("b", [b])
    assert 79 < app.ops.seconds_behind("c" * 64, at_end=True) < 82  # sink a is 80 s behind
    app.ops.delivered("a", [b])
    assert app.ops.seconds_behind("c" * 64, at_end=True) == 0  # everything read is delivered: not behind
    assert 49 < app.ops.seconds_behind("c" * 64, at_end=False) < 52  # but the reader has more to read


def test_rates_history_and_buffer_fill(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    ops = app.ops
    t0 = time.time()
    for i, (read, a) in enumerate([(0, 0), (100, 60), (300, 200)]):
        ops.history.append(st.Sample(t0 + 2 * i, read, {"a": a, "b": read}, 0.25))
    assert ops.rate(None) == 75.0 and ops.rate("a") == 50.0 and ops.rate("b") == 75.0
    h = ops.history_doc()
    assert h["in"] == [50.0, 100.0] and h["out"]["a"] == [30.0, 70.0] and h["buffer_fill"] == [0.25, 0.25]
    assert ops.buffer_fill() == 0.0


def test_pause_is_logged_once_each_way(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="shipper")
    app = make_app(tmp_path)
    b = batch("d" * 64, time.time())
    app.ops.push_started(b)
    app.ops._pushing[id(b)] -= 1.0  # it has waited a second
    app.ops._watch_pause()
    app.ops._watch_pause()
    assert app.metrics.get("shipper_reading_paused") == 1
    assert app.metrics.get("shipper_reading_pauses_total", reason="buffer_full") == 1
    app.ops.pushed(b)
    app.ops.push_ended(b)
    app.ops._watch_pause()
    assert app.metrics.get("shipper_reading_paused") == 0
    said = [r.getMessage() for r in caplog.records if "reading" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("reading paused") and said[1].startswith("reading resumed")


def test_documents_render(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.ops.sample()
    app.metrics.inc("shipper_events_dropped_total", 7, reason="buffer_full", where="drop_newest")
    doc = app.ops.snapshot()
    assert doc["drops"]["dropped"] == {"buffer_full/drop_newest": 7}
    assert set(doc["sinks"]) == {"a", "b"} and doc["sinks"]["a"]["state"] == "starting"
    text = render(doc, color=False)
    assert "SINK" in text and "buffer_full/drop_newest: 7" in text and "\x1b[" not in text
    doc["containers"] = [{"id": "x", "name": "</script><b>", "reader": "api", "bytes_behind": None,
                          "seconds_behind": 3.0, "last_error": ""}]
    page = render_page(doc, "h<ost>")
    assert "</script><b>" not in page and "h&lt;ost&gt;" in page


def test_series_of_a_gone_container_are_forgotten(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.metrics.inc("shipper_events_read_total", 5, container="web")
    app.metrics.set("shipper_container_lag_bytes", 9, container="web")
    app.ops.pushed(batch("e" * 64, time.time()))
    app._gone_labels["e" * 64] = "web"
    app._forget_series("e" * 64)
    assert "web" not in app.metrics.render() and "e" * 64 not in app.ops.lags
    assert app.metrics.get("shipper_events_read_total") == 5  # the total keeps it
