from __future__ import annotations

from shipper.event import ContainerMeta, Event, event_id

META = ContainerMeta(id="a" * 64, name="shop-web-1", image="registry.example/shop/web:1.0",
                     labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                             "team": "t"}, host="host-1")


def test_event_id_is_stable_and_distinct() -> None:
    a = Event("2026-11-26T21:50:54.1Z", "x", "stdout")
    assert event_id(META.id, a) == event_id(META.id, Event("2026-11-26T21:50:54.1Z", "other text", "stdout"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stderr"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stdout", seq=1))
    assert event_id(META.id, a) != event_id("b" * 64, a)
