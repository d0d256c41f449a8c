from __future__ import annotations

import hashlib

import shipper.event as event_mod
from shipper.event import ID_PREFIX_CHARS, ContainerMeta, Event, event_id, event_ids, stream_prefix

META = ContainerMeta(id="a" * 64, name="shop-web-1", image="registry.example/shop/web:1.0",
                     labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                             "team": "t"}, host="host-1")


def test_event_id_is_stable_and_distinct() -> None:
    a = Event("2026-11-26T21:50:54.1Z", "x", "stdout")
    assert event_id(META.id, a) == event_id(META.id, Event("2026-11-26T21:50:54.1Z", "other text", "stdout"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stderr"))
    assert event_id(META.id, a) != event_id(META.id, Event("2026-11-26T21:50:54.1Z", "x", "stdout", seq=1))
    assert event_id(META.id, a) != event_id("b" * 64, a)


def test_event_id_is_the_stream_prefix_then_the_position_in_the_stream() -> None:
    ev = Event("2026-11-26T21:50:54.129139428Z", "x", "stderr", seq=3)
    prefix = hashlib.blake2b(f"{META.id}|stderr".encode(), digest_size=8).hexdigest()
    assert event_id(META.id, ev) == f"{prefix}-2026-11-26T21:50:54.129139428Z-3"
    assert len(stream_prefix(META.id, "stderr")) == ID_PREFIX_CHARS


def test_event_ids_of_a_batch_are_event_id_of_each() -> None:
    evs = [Event("2026-11-26T21:50:54.1Z", "a", "stdout"), Event("2026-11-26T21:50:54.1Z", "b", "stdout", seq=1),
           Event("2026-11-26T21:50:54.1Z", "c", "stderr"), Event("2026-11-26T21:50:55Z", "d", "tty-ish")]
    ids = event_ids(META.id, evs)
    assert ids == [event_id(META.id, e) for e in evs]
    assert len(set(ids)) == len(evs)
    assert event_ids(META.id, []) == []


def test_event_id_tells_apart_what_concatenation_could_confuse() -> None:
    # the timestamp ends where the last "-" begins, and seq has no "-": (ts, seq) pairs cannot collide
    a = Event("2026-11-26T21:50:54.1Z", "x", "stdout", seq=11)
    b = Event("2026-11-26T21:50:54.1Z-1", "x", "stdout", seq=1)
    assert event_id(META.id, a) != event_id(META.id, b)


def test_the_prefix_cache_stays_bounded_and_gives_the_same_ids() -> None:
    ev = Event("2026-11-26T21:50:54.1Z", "x", "stdout")
    before = event_id(META.id, ev)
    for i in range(5000):
        stream_prefix(f"{i:064x}", "stdout")
    assert len(event_mod._prefixes) <= 4097
    assert event_id(META.id, ev) == before
