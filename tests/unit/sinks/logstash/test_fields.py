"""The document Logstash receives: what a pipeline written for Filebeat's docker input reads."""

from __future__ import annotations

import orjson

from shipper import __version__
from shipper.event import ContainerMeta, Event, event_id
from shipper.sinks.logstash.lumberjack import decode_frames, json_frames
from tests.unit.sinks.logstash.conftest import META, MakeSink, batch

OTHER = ContainerMeta(id="d" * 64, name="db-1", image="postgres:16", host="node-1")


def test_a_filebeat_pipeline_finds_its_fields(make_sink: MakeSink) -> None:
    sink = make_sink()
    b = batch(2)
    b.events[1] = Event("2024-05-01T12:00:00.5Z", '{"level":"warn"}', "stderr", {"level": "warn"}, seq=1)
    docs = sink.encode([b]).payload.docs
    first, second = (orjson.loads(d) for d in docs)
    assert first == {
        "@timestamp": "2024-05-01T12:00:00.000000000Z",
        "message": "line 0",
        "stream": "stdout",
        "event": {"id": event_id(META.id, b.events[0])},
        "container": {"id": META.id, "name": "web-1", "image": {"name": "shop/web:1.2"},
                      "labels": {"com_docker_compose_project": "shop", "com_docker_compose_service": "web",
                                 "a_b": "c"}},
        "host": {"name": "node-1"},
        "docker": {"compose": {"project": "shop", "service": "web"}},
        "agent": {"type": "shipper", "version": __version__, "name": "daemon-host"},
        "ecs": {"version": "8.0.0"},
        "input": {"type": "container"},
        "@metadata": {"beat": "filebeat", "type": "_doc", "version": "8.15.0"},
    }
    assert second["json"] == {"level": "warn"} and second["stream"] == "stderr"


def test_labels_keep_their_dots_when_asked_and_metadata_follows_the_config(make_sink: MakeSink) -> None:
    sink = make_sink(labels_dedot=False, beat="shipper", beat_version="1.0.0")
    doc = orjson.loads(sink.encode([batch(1)]).payload.docs[0])
    assert doc["container"]["labels"]["com.docker.compose.project"] == "shop"
    assert doc["@metadata"] == {"beat": "shipper", "type": "_doc", "version": "1.0.0"}


def test_subset_slices_without_encoding_again(make_sink: MakeSink) -> None:
    beats, lines = make_sink(), make_sink(protocol="json_lines")
    request = beats.encode([batch(5)])
    sub = beats.subset(request, [4, 1])
    assert sub.events == 2
    assert sub.payload.docs == [request.payload.docs[1], request.payload.docs[4]]
    assert sub.payload.windows == [json_frames([request.payload.docs[1], request.payload.docs[4]])]
    sub = lines.subset(lines.encode([batch(5)]), [4, 1])
    assert sub.payload.docs == [request.payload.docs[1], request.payload.docs[4]]
    assert sub.payload.blob == request.payload.docs[1] + b"\n" + request.payload.docs[4] + b"\n"


def test_beats_frames_the_documents_json_lines_sends_in_windows_of_the_hosts_size(
        make_sink: MakeSink) -> None:
    batches = [batch(3), batch(2, start=3, meta=OTHER)]
    frames = make_sink().encode(batches).payload
    lines = make_sink(protocol="json_lines").encode(batches).payload
    assert len(frames) == 5 and len(frames.docs) == 5
    assert decode_frames(b"".join(frames.windows)) == [(b"J", i + 1, d) for i, d in enumerate(lines.docs)]
    assert frames.size == 2048  # the window_max_events of the hosts
    assert [orjson.loads(d)["container"]["name"] for d in frames.docs] == ["web-1"] * 3 + ["db-1"] * 2
