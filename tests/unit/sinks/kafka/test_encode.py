"""Kafka records from events, to the byte: value, key, headers, topic templating, oversize policy."""

from __future__ import annotations

import orjson
import pytest

from shipper.event import Batch, ContainerMeta, Event, Flag, event_id
from shipper.sinks.ecs import JsonLinesEncoder
from shipper.sinks.kafka.encode import (
    RECORD_OVERHEAD,
    EncoderOptions,
    KafkaEncoder,
    Oversize,
    Template,
    ValueFormat,
    topic_name,
    utf8_prefix,
)
from shipper.sinks.kafka.sink import error_kind

CID = "c0ffee" + "0" * 58
META = ContainerMeta(id=CID, name="shop-web-1", image="shop/web:1.0",
                     labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                             "team": "pay"}, host="node-1")
BARE = ContainerMeta(id="b" * 64, name="/lonely", image="busybox", host="node-1")
EV = Event("2026-11-26T21:50:54.129139428Z", "hello", "stdout", seq=3)


def enc(**opts: object) -> KafkaEncoder:
    return KafkaEncoder(EncoderOptions(**opts))  # type: ignore[arg-type]


def test_ecs_value_is_the_json_line_every_json_sink_writes_and_headers_carry_the_ids() -> None:
    evs = [EV, Event("2026-11-26T21:50:54.2Z", '{"level":"warn"}', "stderr", {"level": "warn"}, Flag.PARTIAL, 4)]
    recs = enc().encode([Batch(META, evs)])
    lines = JsonLinesEncoder().encode_batch(Batch(META, evs)).split(b"\n")[:-1]
    assert recs.values == lines
    assert recs.keys == [CID.encode()] * 2
    assert recs.topics == ["logs", "logs"]
    assert recs.headers_of(0) == [("event.id", event_id(CID, EV).encode()), ("container.id", CID.encode())]
    assert recs.timestamps == [1795729854129, 1795729854200]
    assert orjson.loads(recs.values[0] or b"")["event"]["id"] == event_id(CID, EV)


def test_exact_bytes_of_a_record() -> None:
    meta = ContainerMeta(id="abc", name="n", image="i", host="h")
    recs = enc().encode([Batch(meta, [Event("2026-01-01T00:00:00.5Z", "m", "stdout")])])
    eid = event_id("abc", Event("2026-01-01T00:00:00.5Z", "m", "stdout"))
    assert recs.values[0] == (b'{"@timestamp":"2026-01-01T00:00:00.5Z","message":"m","stream":"stdout","event":'
                              b'{"id":"' + eid.encode() + b'"},"container":{"id":"abc","name":"n","image":'
                              b'{"name":"i"},"labels":{}},"host":{"name":"h"}}')
    assert recs.keys == [b"abc"]


def test_message_value_puts_the_metadata_in_headers() -> None:
    ev = Event("2026-11-26T21:50:54.1Z", "raw \u00e9 line", "stderr", None, Flag.MULTILINE, 1)
    recs = enc(value=ValueFormat.MESSAGE).encode([Batch(META, [ev])])
    assert recs.values == ["raw \u00e9 line".encode()]
    assert recs.headers_of(0) == [
        ("event.id", event_id(CID, ev).encode()), ("container.id", CID.encode()),
        ("@timestamp", b"2026-11-26T21:50:54.1Z"), ("stream", b"stderr"), ("container.name", b"shop-web-1"),
        ("container.image.name", b"shop/web:1.0"), ("host.name", b"node-1"),
        ("docker.compose.project", b"shop"), ("docker.compose.service", b"web"),
        ("container.labels.com.docker.compose.project", b"shop"),
        ("container.labels.com.docker.compose.service", b"web"), ("container.labels.team", b"pay"),
        ("log.flags", b"multiline")]


def test_topic_and_key_templates_with_the_default_when_a_field_is_missing() -> None:
    e = enc(topic="logs.{compose.project}.{stream}", default_topic="logs.other", key="{container.name}")
    recs = e.encode([Batch(META, [EV, Event("t", "x", "stderr")]), Batch(BARE, [EV])])
    assert recs.topics == ["logs.shop.stdout", "logs.shop.stderr", "logs.other"]
    assert recs.keys == [b"shop-web-1", b"shop-web-1", b"lonely"]
    assert enc(topic="team-{label.team}").encode([Batch(META, [EV])]).topics == ["team-pay"]
    assert enc(key="").encode([Batch(META, [EV])]).keys == [None]
    weird = ContainerMeta(id="w", name="x", labels={"com.docker.compose.project": "my proj/ä"})
    assert enc(topic="logs.{compose.project}").encode([Batch(weird, [EV])]).topics == ["logs.my_proj__"]
    dot = ContainerMeta(id="d", name="x", labels={"com.docker.compose.project": ".."})
    assert enc(topic="{compose.project}", default_topic="fallback").encode([Batch(dot, [EV])]).topics == ["fallback"]


def test_template_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        Template("{container.labels}")
    assert Template("logs").constant and not Template("{stream}").constant
    assert topic_name("a" * 300) == "a" * 249


def test_encoding_is_pure_and_a_subset_is_what_encoding_those_events_gives() -> None:
    batches = [Batch(META, [EV, Event("t2", "two", seq=4)]), Batch(BARE, [Event("t3", "three")])]
    e = enc()
    first = e.encode(batches).wire()
    e.encode([Batch(BARE, [EV])])
    assert e.encode(batches).wire() == first
    assert enc().encode(batches).subset([0, 2]).wire() == [first[0], first[2]]


@pytest.mark.parametrize("value", [ValueFormat.ECS, ValueFormat.MESSAGE])
def test_an_oversize_event_is_cut_to_fit_and_flagged_only_it(value: ValueFormat) -> None:
    limit = 2048
    big = Event("2026-11-26T21:50:54.1Z", "\u00e9\"\n" * 4000, seq=1)
    small = Event("2026-11-26T21:50:54.2Z", "small", seq=2)
    recs = enc(value=value, max_message_bytes=limit).encode([Batch(META, [small, big, small])])
    assert [name for name, _ in recs.truncated] == ["shop-web-1"] and not recs.dropped
    assert all(size <= limit - RECORD_OVERHEAD for size in recs.nbytes)
    cut = recs.values[1]
    assert cut is not None and len(cut) < limit
    if value is ValueFormat.ECS:
        doc = orjson.loads(cut)
        assert big.message.startswith(doc["message"]) and len(doc["message"]) > 100
        assert doc["log"]["flags"] == ["truncated"]
        assert orjson.loads(recs.values[0] or b"")["message"] == "small"
    else:
        assert big.message.encode().startswith(cut) and cut.decode()
        assert ("log.flags", b"truncated") in recs.headers_of(1)
        assert recs.values[0] == b"small"


def test_an_oversize_event_is_dropped_by_policy_or_when_nothing_fits() -> None:
    big = Event("2026-11-26T21:50:54.1Z", "x" * 5000)
    recs = enc(max_message_bytes=2048, oversize=Oversize.DROP).encode([Batch(META, [EV, big])])
    assert recs.values[1] is None and recs.values[0] is not None
    assert [name for name, _ in recs.dropped] == ["shop-web-1"]
    fat = ContainerMeta(id="f", name="fat", labels={f"l{i}": "v" * 50 for i in range(60)})
    recs = enc(max_message_bytes=2048).encode([Batch(fat, [big])])
    assert recs.values == [None] and [n for n, _ in recs.dropped] == ["fat"]


def test_utf8_prefix_never_splits_a_character() -> None:
    data = "a\u00e9\u20ac".encode()  # 1 + 2 + 3 bytes
    assert [utf8_prefix(data, n) for n in range(7)] == [b"", b"a", b"a", "a\u00e9".encode(), "a\u00e9".encode(),
                                                        "a\u00e9".encode(), data]


def test_broker_errors_are_sorted_by_kind() -> None:
    from aiokafka import errors as E

    assert error_kind(E.MessageSizeTooLargeError()) == "record_too_large"
    assert error_kind(E.RecordListTooLargeError()) == "record_too_large"
    assert error_kind(E.CorruptRecordException()) == "invalid_record"
    assert error_kind(E.UnknownTopicOrPartitionError()) == "unknown_topic"
    assert error_kind(E.TopicAuthorizationFailedError()) == "authorization"
    assert error_kind(E.KafkaTimeoutError()) == "timeout"
    assert error_kind(E.RequestTimedOutError()) == "timeout"
    assert error_kind(E.KafkaConnectionError()) == "connection"
    assert error_kind(E.NotLeaderForPartitionError()) == "leader"
    assert error_kind(E.NotEnoughReplicasError()) == "retriable"
    assert error_kind(ValueError()) == "other"
