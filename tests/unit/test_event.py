from __future__ import annotations

import orjson

from shipper.event import (
    Batch,
    ContainerMeta,
    Event,
    Flag,
    JsonLinesEncoder,
    decode_record,
    encode_record,
    event_id,
    to_ecs,
)

META = ContainerMeta(id="a" * 64, name="shop-web-1", image="registry.example/shop/web:1.0",
                     labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                             "team": "t"}, host="host-1")


def test_jsonlines_matches_ecs_document() -> None:
    evs = [Event("2026-11-26T21:50:54.129139428Z", "hello", "stdout"),
           Event("2026-11-26T21:50:54.2Z", '{"level":"info"}', "stderr", {"level": "info"},
                 Flag.PARTIAL | Flag.TRUNCATED, 1)]
    lines = JsonLinesEncoder().encode_batch(Batch(META, evs)).splitlines()
    assert len(lines) == 2
    for line, ev in zip(lines, evs, strict=True):
        doc = orjson.loads(line)
        assert doc == to_ecs(META, ev)
    first = orjson.loads(lines[0])
    assert first["container"]["name"] == "shop-web-1"
    assert first["container"]["image"]["name"] == "registry.example/shop/web:1.0"
    assert first["container"]["labels"]["team"] == "t"
    assert first["docker"]["compose"] == {"project": "shop", "service": "web"}
    assert first["host"]["name"] == "host-1"
    assert first["@timestamp"] == "2026-11-26T21:50:54.129139428Z"
    assert "log" not in first and "json" not in first
    second = orjson.loads(lines[1])
    assert second["log"]["flags"] == ["partial", "truncated"]
    assert second["json"] == {"level": "info"}


def test_event_id_is_stable_and_distinct() -> None:
    a = Event("2026-11-26T21:50:54.1Z", "x", "stdout")
    assert event_id(META.id, a) == event_id(META.id, Event("2026-11-26T21:50:54.1Z", "other text", "stdout"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stderr"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stdout", seq=1))
    assert event_id(META.id, a) != event_id("b" * 64, a)


def test_env_only_when_allowlisted() -> None:
    assert "env" not in to_ecs(META, Event("t", "m"))["container"]
    meta = ContainerMeta(id="c", name="n", env={"APP_ENV": "prod"})
    assert to_ecs(meta, Event("t", "m"))["container"]["env"] == {"APP_ENV": "prod"}


def test_record_round_trip() -> None:
    evs = [Event("t1", "é" * 3, "stdout"), Event("t2", "{}", "stderr", {"a": [1, 2]}, 3, 2)]
    back = decode_record(encode_record(Batch(META, evs)))
    assert back.container == META
    assert back.events == evs


def test_record_keeps_the_checkpoint_with_per_stream_positions() -> None:
    from shipper.event import Checkpoint

    cp = Checkpoint("c", 10, "1:2:ab", {"stdout": ["1:2:ab", 10], "stderr": ["1:2:ab", 99]})
    back = decode_record(encode_record(Batch(META, [Event("t", "m")], cp)))
    assert back.checkpoint == cp
    plain = Checkpoint("c", "2026-11-26T10:00:00Z+000002")
    assert decode_record(encode_record(Batch(META, [], plain))).checkpoint == plain
