"""JSON application logs: parsed into `fields`, broken JSON shipped as text and counted."""

from __future__ import annotations

from shipper.config import JsonConfig, JsonMode
from shipper.telemetry.metrics import Metrics
from shipper.transforms.jsonlog import JsonDetector, parse_object
from tests.unit.transforms.support import Feeder, make_asm

LINE = '{"level": "info", "msg": "request served", "status": 200, "nested": {"a": [1, 2]}}'


def test_json_object_fills_fields_and_message_stays_as_written() -> None:
    f = Feeder(make_asm())
    f.lines([LINE])
    (ev,) = f.finish()
    assert ev.message == LINE
    assert ev.fields == {"level": "info", "msg": "request served", "status": 200, "nested": {"a": [1, 2]}}


def test_message_key_takes_the_message_from_the_object() -> None:
    f = Feeder(make_asm(json={"message_key": "msg"}))
    f.lines([LINE, '{"level": "warn"}', '{"msg": 42}'])
    events = f.finish()
    assert [e.message for e in events] == ["request served", '{"level": "warn"}', '{"msg": 42}']
    assert all(e.fields is not None for e in events)


def test_broken_json_stays_text_and_is_counted() -> None:
    m = Metrics()
    f = Feeder(make_asm(m))
    broken = ['{"level": "info", "msg": "cut', "{not json}", "{"]
    f.lines([*broken, LINE])
    events = f.finish()
    assert [e.message for e in events] == [*broken, LINE]
    assert [e.fields is None for e in events] == [True, True, True, False]
    assert m.get("shipper_json_unparsed_total", container="c1") == 3


def test_json_split_in_partial_entries_is_parsed_once_joined() -> None:
    f = Feeder(make_asm())
    big = '{"blob": "' + "z" * 40000 + '"}'
    f.lines([big])
    (ev,) = f.finish()
    assert ev.fields == {"blob": "z" * 40000} and ev.message == big


def test_truncated_json_ships_as_text() -> None:
    f = Feeder(make_asm(input={"max_event_bytes": 1024}))
    f.lines(['{"blob": "' + "z" * 2000 + '"}'])
    (ev,) = f.finish()
    assert ev.fields is None and len(ev.message) == 1024


def test_text_mode_leaves_json_alone() -> None:
    f = Feeder(make_asm(json={"mode": "text"}))
    f.lines([LINE])
    (ev,) = f.finish()
    assert ev.fields is None and ev.message == LINE


def test_detector_and_parse_object() -> None:
    assert parse_object(LINE) is not None
    assert parse_object("[1, 2]") is None and parse_object("{bad") is None and parse_object("") is None
    d = JsonDetector(JsonConfig(mode=JsonMode.FIELD, message_key="msg"))
    assert d.detect(LINE)[0] == "request served"
    assert d.detect("{bad") == ("{bad", None) and d.unparsed == 1
    assert d.detect("plain") == ("plain", None) and d.unparsed == 1
    assert JsonDetector(JsonConfig(mode=JsonMode.TEXT)).detect(LINE) == (LINE, None)
