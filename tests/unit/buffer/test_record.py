from __future__ import annotations

from shipper.buffer.record import decode_record, encode_record
from shipper.event import Batch, Checkpoint, ContainerMeta, Event

META = ContainerMeta(id="a" * 64, name="shop-web-1", image="registry.example/shop/web:1.0",
                     labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                             "team": "t"}, host="host-1")


def test_record_round_trip() -> None:
    evs = [Event("t1", "é" * 3, "stdout"), Event("t2", "{}", "stderr", {"a": [1, 2]}, 3, 2)]
    back = decode_record(encode_record(Batch(META, evs)))
    assert back.container == META
    assert back.events == evs


def test_record_keeps_the_checkpoint_with_per_stream_positions() -> None:
    cp = Checkpoint("c", 10, "1:2:ab", {"stdout": ["1:2:ab", 10], "stderr": ["1:2:ab", 99]})
    back = decode_record(encode_record(Batch(META, [Event("t", "m")], cp)))
    assert back.checkpoint == cp
    plain = Checkpoint("c", "2026-11-26T10:00:00Z+000002")
    assert decode_record(encode_record(Batch(META, [], plain))).checkpoint == plain
