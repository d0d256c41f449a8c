"""The ECS JSON document of an event: what every JSON sink (file, stdout, Kafka, Logstash) sends.

One encoder for all of them, so a field is named the same everywhere. The container's part of the document
is the same for every event of a container: it is serialised once per container and spliced in.
"""

from __future__ import annotations

from typing import Any

import orjson

from shipper.event import FLAG_LISTS, Batch, ContainerMeta, Event, event_id, event_ids, flag_names


def to_ecs(meta: ContainerMeta, ev: Event) -> dict[str, Any]:
    """The whole event as an ECS document (what JSON sinks write)."""
    doc: dict[str, Any] = {"@timestamp": ev.timestamp, "message": ev.message, "stream": ev.stream,
                           "event": {"id": event_id(meta.id, ev)}}
    doc.update(meta.ecs())
    if ev.fields is not None:
        doc["json"] = ev.fields
    if ev.flags:
        doc["log"] = {"flags": flag_names(ev.flags)}
    return doc


class JsonLinesEncoder:
    """Encodes events as ECS JSON lines. A container's part of the document (container, host, docker) is
    serialised once per container and spliced into each line, so each event costs one small dict, one
    `orjson.dumps` and its id."""

    def __init__(self) -> None:
        self._meta_key: ContainerMeta | None = None
        self._tail = b""

    def _tail_of(self, meta: ContainerMeta) -> bytes:
        if meta is not self._meta_key:
            self._meta_key = meta
            self._tail = b"," + orjson.dumps(meta.ecs())[1:-1] + b"}\n"  # without its opening brace
        return self._tail

    def encode(self, batches: list[Batch]) -> bytes:
        """Every event of `batches`, one JSON document a line."""
        if len(batches) == 1:
            return self.encode_batch(batches[0])
        return b"".join([self.encode_batch(b) for b in batches])

    def encode_batch(self, batch: Batch) -> bytes:
        heads = self.heads(batch)
        heads.append(b"")
        return self._tail_of(batch.container).join(heads)  # each head, then the container's part and "\n"

    @staticmethod
    def heads(batch: Batch) -> list[bytes]:
        """The event's own part of each document of `batch`: its JSON without the closing brace, which the
        container's part brings."""
        meta = batch.container
        dumps = orjson.dumps
        flag_lists = FLAG_LISTS
        events = batch.events
        out = []
        for ev, eid in zip(events, event_ids(meta.id, events), strict=True):  # ids: one hash per batch
            head = {"@timestamp": ev.timestamp, "message": ev.message, "stream": ev.stream,
                    "event": {"id": eid}}
            if ev.fields is not None:
                head["json"] = ev.fields
            if ev.flags:
                head["log"] = {"flags": flag_lists[ev.flags]}
            out.append(dumps(head)[:-1])
        return out
