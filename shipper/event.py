"""The event and the batch: what flows from sources through the buffer to every sink.

Events travel in batches that share one container's metadata, so enrichment costs one reference per event,
and the spool, the sinks and replay all see the same shape. Field names follow the Elastic Common Schema
where it has one (`container.name`, `host.name`, `event.id`, `log.flags`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any


class Flag(IntFlag):
    """What happened to an event on its way in; shipped as `log.flags`."""

    PARTIAL = 1  # joined from Docker's 16 KiB partial entries
    MULTILINE = 2  # several lines merged (stack trace)
    TRUNCATED = 4  # cut at max_event_bytes
    INCOMPLETE = 8  # a partial entry left dangling at container exit, flushed as is


FLAG_NAMES = {Flag.PARTIAL: "partial", Flag.MULTILINE: "multiline", Flag.TRUNCATED: "truncated",
              Flag.INCOMPLETE: "incomplete"}
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """What enrichment attaches to every event of one container; shared by all of its events."""

    id: str
    name: str
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    host: str = ""
    env: dict[str, str] = field(default_factory=dict)  # only variables an allowlist names

    @property
    def compose_project(self) -> str | None:
        return self.labels.get(COMPOSE_PROJECT)

    @property
    def compose_service(self) -> str | None:
        return self.labels.get(COMPOSE_SERVICE)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "labels": self.labels,
                "host": self.host, "env": self.env}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerMeta:
        return cls(id=d["id"], name=d["name"], image=d.get("image", ""), labels=d.get("labels") or {},
                   host=d.get("host", ""), env=d.get("env") or {})

    def ecs(self) -> dict[str, Any]:
        """The ECS fields this container adds to each of its events."""
        doc: dict[str, Any] = {
            "container": {"id": self.id, "name": self.name, "image": {"name": self.image},
                          "labels": self.labels},
            "host": {"name": self.host},
        }
        if self.compose_project or self.compose_service:
            doc["docker"] = {"compose": {"project": self.compose_project, "service": self.compose_service}}
        if self.env:
            doc["container"]["env"] = self.env
        return doc


@dataclass(slots=True)
class Event:
    """One log event as the application wrote it.

    `timestamp` is Docker's RFC 3339 string, kept as written so nanoseconds survive. `seq` tells apart
    events of one container and stream that carry the same timestamp, so `event_id` stays unique.
    """

    timestamp: str
    message: str
    stream: str = "stdout"
    fields: dict[str, Any] | None = None  # a JSON application log, parsed
    flags: int = 0
    seq: int = 0


@dataclass(slots=True)
class Checkpoint:
    """Where a reader may resume once the batch that carries it is safe (durable or delivered).

    `position` is a byte offset for json-file readers and a timestamp for API readers; `file_id` tells
    which file the offset belongs to (device and inode), so rotation cannot confuse it. `streams` is set when
    one stream has an open event while the other has shipped past it: per stream, the [file_id, offset]
    where its own unshipped entries start, so a restart from `position` skips what that stream shipped.
    """

    container_id: str
    position: int | str
    file_id: str = ""
    streams: dict[str, list[Any]] | None = None


@dataclass(slots=True)
class Batch:
    """Events of one container, in order, with the checkpoint reached after them. `size`: what the events
    hold in memory (`buffer.sizing`) when the reader counted it as it built them, else 0."""

    container: ContainerMeta
    events: list[Event]
    checkpoint: Checkpoint | None = None
    size: int = field(default=0, compare=False)

    def __len__(self) -> int:
        return len(self.events)


# event.id = "<16 hex digits naming the container and stream>-<timestamp as Docker wrote it>-<seq>".
# The hex part is a blake2b of "<container id>|<stream>", worked out once per container and stream, not per
# event (a hash per event cost about 0.5 us, 40% of the ECS encoder's time). The rest is the event's place in
# its stream: a re-read of the same log bytes gives the same id (duplicates after a crash are recognisable),
# and two events of a container share an id only if they share stream, timestamp and seq, which the
# assembler never gives them. Nothing may parse it: its format is free to change.
ID_PREFIX_CHARS = 16
_prefixes: dict[tuple[str, str], str] = {}


def stream_prefix(container_id: str, stream: str) -> str:
    """The first ID_PREFIX_CHARS characters of every `event.id` of one container's stream (cached)."""
    key = (container_id, stream)
    p = _prefixes.get(key)
    if p is None:
        if len(_prefixes) > 4096:  # containers come and go: the cache stays small
            _prefixes.clear()
        p = _prefixes[key] = hashlib.blake2b(f"{container_id}|{stream}".encode(), digest_size=8).hexdigest()
    return p


def event_id(container_id: str, ev: Event) -> str:
    """A stable id from the container and the event's position in its log: a re-read gives the same id.
    See `event_ids` for a whole batch, which is cheaper."""
    return f"{stream_prefix(container_id, ev.stream)}-{ev.timestamp}-{ev.seq}"


def event_ids(container_id: str, events: list[Event]) -> list[str]:
    """`event_id` of each of `events` (one container's), the container's part worked out once per batch."""
    out = stream_prefix(container_id, "stdout")
    err = stream_prefix(container_id, "stderr")
    ids = []
    for ev in events:
        s = ev.stream
        p = out if s == "stdout" else err if s == "stderr" else stream_prefix(container_id, s)
        ids.append(f"{p}-{ev.timestamp}-{ev.seq}")
    return ids


def flag_names(flags: int) -> list[str]:
    return list(FLAG_LISTS[flags])


# every combination of flags, worked out once (IntFlag arithmetic per event costs microseconds)
FLAG_LISTS: tuple[list[str], ...] = tuple([name for bit, name in FLAG_NAMES.items() if i & bit]
                                          for i in range(2 * max(FLAG_NAMES)))
