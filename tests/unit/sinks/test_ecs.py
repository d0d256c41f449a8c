from __future__ import annotations

import orjson

from shipper.event import Batch, ContainerMeta, Event, Flag
from shipper.sinks.ecs import JsonLinesEncoder, to_ecs

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


def test_env_only_when_allowlisted() -> None:
    assert "env" not in to_ecs(META, Event("t", "m"))["container"]
    meta = ContainerMeta(id="c", name="n", env={"APP_ENV": "prod"})
    assert to_ecs(meta, Event("t", "m"))["container"]["env"] == {"APP_ENV": "prod"}
