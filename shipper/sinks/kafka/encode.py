"""Kafka records from events, apart from any producer: topic, key, value and headers of each event.

Pure: the same batches give the same records, so a retry sends exactly what the first try did and the bytes can
be tested without a broker. The value is the ECS JSON document every JSON sink writes (the same bytes as a line of
`shipper.sinks.ecs.JsonLinesEncoder`, without its newline), or the raw message with the event's metadata in
record headers. Headers always carry `event.id` and `container.id`, so a consumer can drop duplicates without
parsing the value. A record larger than `max_message_bytes` is cut (its message shortened and flagged
'truncated') or dropped, by policy; either way it is reported, and it never fails the records around it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from shipper.event import FLAG_LISTS, Batch, ContainerMeta, Event, Flag, event_ids
from shipper.sinks.fields import LABEL_PREFIX, template_field
from shipper.timefmt import NS_PER_SEC, parse_ns

NS_PER_MS = NS_PER_SEC // 1000
RECORD_OVERHEAD = 64  # a record's own framing in a batch (varints, attributes, header counts), at most
MIN_MESSAGE_BYTES = 1024
MAX_TOPIC_CHARS = 249  # Kafka refuses longer topic names
_TOPIC_BAD = re.compile(r"[^A-Za-z0-9._-]")
_PLACEHOLDER = re.compile(r"\{([a-z._]+|label\.[^{}]+)\}")
TEMPLATE_FIELDS = ("container.id", "container.name", "container.image", "compose.project", "compose.service",
                   "host.name", "stream")

# header names
H_EVENT_ID = "event.id"
H_CONTAINER_ID = "container.id"
H_CONTAINER_NAME = "container.name"
H_IMAGE = "container.image.name"
H_HOST = "host.name"
H_STREAM = "stream"
H_TIMESTAMP = "@timestamp"
H_PROJECT = "docker.compose.project"
H_SERVICE = "docker.compose.service"
H_FLAGS = "log.flags"
H_LABEL = "container.labels."


class ValueFormat(enum.Enum):
    ECS = "ecs"  # the ECS JSON document, as the file and stdout sinks write it
    MESSAGE = "message"  # the message as the application wrote it; metadata in headers


class Oversize(enum.Enum):
    TRUNCATE = "truncate"  # cut the message so the record fits, flag it 'truncated'
    DROP = "drop"  # leave the event out


class Template:
    """Literal text with `{field}` placeholders: the fields of TEMPLATE_FIELDS and `{label.NAME}` (a container
    label). `render` returns None when a field it names is missing or empty, so the caller can fall back."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str | tuple[str]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            self._literal(text[pos:m.start()])
            name = m.group(1)
            if name not in TEMPLATE_FIELDS and not name.startswith(LABEL_PREFIX):
                raise ValueError(f"unknown field {{{name}}} (known: {', '.join(TEMPLATE_FIELDS)}, label.NAME)")
            self.parts.append((name,))
            pos = m.end()
        self._literal(text[pos:])
        self.uses_stream = ("stream",) in self.parts
        self.constant = not any(isinstance(p, tuple) for p in self.parts)

    def _literal(self, s: str) -> None:
        if "{" in s or "}" in s:
            raise ValueError(f"stray brace in {self.text!r}: placeholders look like {{compose.project}}")
        if s:
            self.parts.append(s)

    def render(self, meta: ContainerMeta, host: str, stream: str) -> str | None:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = template_field(meta, host, stream, part[0])
            if not value:
                return None
            out.append(value)
        return "".join(out)


def topic_name(text: str) -> str:
    """A rendered topic as Kafka accepts it: characters outside [A-Za-z0-9._-] become '_', at most 249."""
    if _TOPIC_BAD.search(text):
        text = _TOPIC_BAD.sub("_", text)
    return text[:MAX_TOPIC_CHARS]


def check_topic(text: str) -> None:
    """A literal topic name Kafka would refuse: ValueError."""
    if not text or text in (".", "..") or len(text) > MAX_TOPIC_CHARS or _TOPIC_BAD.search(text):
        raise ValueError(f"{text!r} is not a Kafka topic name (1-{MAX_TOPIC_CHARS} characters of "
                         "A-Z a-z 0-9 . _ -)")


@dataclass(frozen=True)
class EncoderOptions:
    topic: str = "logs"
    default_topic: str = "logs"
    key: str = "{container.id}"
    value: ValueFormat = ValueFormat.ECS
    max_message_bytes: int = 1_000_000
    oversize: Oversize = Oversize.TRUNCATE
    host_name: str = ""


Header = tuple[str, bytes]


@dataclass(slots=True)
class Records:
    """A request's records as parallel lists, one entry per event of the request in order (a dropped event
    keeps its place with value None, so indices stay those of the request). Only atoms are kept per record
    (bytes, ints, shared tuples): a list per record, kept alive for a whole request, would cost more in the
    garbage collector than in building it, so the headers are put together as the record is sent
    (`headers_of`). `containers` (the container id) tells apart the runs of one container (round-robin keeps
    a run together); `nbytes` is what a record weighs uncompressed."""

    topics: list[str] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    event_ids: list[bytes] = field(default_factory=list)
    containers: list[bytes] = field(default_factory=list)
    extra: list[tuple[Header, ...] | None] = field(default_factory=list)  # headers after the two ids
    timestamps: list[int | None] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    truncated: list[tuple[str, int]] = field(default_factory=list)  # (container name, size before the cut)
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (container name, size) of events left out

    def __len__(self) -> int:
        return len(self.values)

    def headers_of(self, i: int) -> list[Header]:
        hs = [(H_EVENT_ID, self.event_ids[i]), (H_CONTAINER_ID, self.containers[i])]
        extra = self.extra[i]
        if extra:
            hs.extend(extra)
        return hs

    def subset(self, indices: list[int]) -> Records:
        """The records at `indices` (ascending), as encoding those events alone gives them."""
        return Records([self.topics[i] for i in indices], [self.keys[i] for i in indices],
                       [self.values[i] for i in indices], [self.event_ids[i] for i in indices],
                       [self.containers[i] for i in indices], [self.extra[i] for i in indices],
                       [self.timestamps[i] for i in indices], [self.nbytes[i] for i in indices])

    def wire(self) -> list[bytes]:
        """Each record as one byte string (topic, key, headers, value): for tests that compare requests."""
        out = []
        for i in range(len(self.values)):
            hs = b"".join(k.encode() + b"=" + v + b";" for k, v in self.headers_of(i))
            out.append(b"|".join((self.topics[i].encode(), self.keys[i] or b"-", hs, self.values[i] or b"-",
                                  str(self.timestamps[i]).encode())))
        return out


_SECOND_MS: dict[str, int] = {}  # 'YYYY-MM-DDThh:mm:ss' -> ms since the epoch: a batch shares its seconds


def timestamp_ms(text: str) -> int | None:
    """The event's time as the record's CreateTime; None (the producer's clock) when it cannot be read.
    Docker's own form with at least milliseconds takes a fast path (the second looked up, the ms added)."""
    if len(text) >= 24 and text[19] == "." and text[-1] == "Z" and text[20:23].isdigit():
        prefix = text[:19]
        base = _SECOND_MS.get(prefix)
        if base is None:
            try:
                base = parse_ns(prefix + "Z") // NS_PER_MS
            except ValueError:
                return None
            if len(_SECOND_MS) > 4096:
                _SECOND_MS.clear()
            _SECOND_MS[prefix] = base
        return base + int(text[20:23])
    try:
        return parse_ns(text) // NS_PER_MS
    except ValueError:
        return None


def utf8_prefix(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8 `data`, never ending inside a character."""
    if len(data) <= limit:
        return data
    cut = max(limit, 0)
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


class KafkaEncoder:
    """Events -> `Records`. Keeps the previous batch's container part (the ECS tail, headers, topic, key),
    since every event of a batch shares it; everything else is a function of the event."""

    def __init__(self, options: EncoderOptions) -> None:
        self.options = options
        self.topic = Template(options.topic)
        self.key = Template(options.key) if options.key else None
        self._meta: ContainerMeta | None = None
        self._tail = b""
        self._meta_headers: tuple[Header, ...] = ()
        self._per_stream: dict[str, tuple[str, bytes | None]] = {}

    def _container(self, meta: ContainerMeta) -> None:
        if meta is self._meta:
            return
        self._meta = meta
        self._tail = b"," + orjson.dumps(meta.ecs())[1:-1] + b"}"
        self._per_stream = {}
        host = meta.host or self.options.host_name
        hs = [(H_CONTAINER_NAME, meta.name.encode()), (H_IMAGE, meta.image.encode()), (H_HOST, host.encode())]
        if meta.compose_project:
            hs.append((H_PROJECT, meta.compose_project.encode()))
        if meta.compose_service:
            hs.append((H_SERVICE, meta.compose_service.encode()))
        hs.extend((H_LABEL + k, v.encode()) for k, v in sorted(meta.labels.items()))
        self._meta_headers = tuple(hs)

    def _route(self, meta: ContainerMeta, stream: str) -> tuple[str, bytes | None]:
        """Topic and key of this container's events on `stream` (worked out once per batch and stream)."""
        got = self._per_stream.get(stream)
        if got is None:
            host = self.options.host_name
            rendered = self.topic.render(meta, host, stream)
            topic = topic_name(rendered) if rendered else ""
            if topic in ("", ".", ".."):  # a field missing, or a name Kafka refuses whatever its characters
                topic = self.options.default_topic
            key = None
            if self.key is not None:
                text = self.key.render(meta, host, stream)
                key = text.encode() if text else None
            got = self._per_stream[stream] = (topic, key)
        return got

    def encode(self, batches: list[Batch]) -> Records:
        out = Records()
        for b in batches:
            self.encode_batch(b, out)
        return out

    def encode_batch(self, batch: Batch, out: Records) -> None:
        meta = batch.container
        self._container(meta)
        cid = meta.id
        cid_b = cid.encode()
        tail = self._tail
        limit = self.options.max_message_bytes - RECORD_OVERHEAD
        ecs = self.options.value is ValueFormat.ECS
        dumps = orjson.dumps
        flag_lists = FLAG_LISTS
        route = self._route
        second_ms = _SECOND_MS.get
        topics, keys, values, eids = out.topics, out.keys, out.values, out.event_ids
        containers, extras, stamps, sizes = out.containers, out.extra, out.timestamps, out.nbytes
        base = len(H_EVENT_ID) + len(H_CONTAINER_ID) + len(cid_b) + 24 + 24  # the two headers, the event id
        per_stream = self.topic.uses_stream or (self.key is not None and self.key.uses_stream)
        topic, key = route(meta, "stdout")
        fixed = base + (len(key) if key else 0)
        extra: tuple[Header, ...] | None = None
        events = batch.events
        for ev, eid in zip(events, event_ids(cid, events), strict=True):  # ids: the container's part once
            if per_stream:
                topic, key = route(meta, ev.stream)
                fixed = base + (len(key) if key else 0)
            if ecs:
                head: dict[str, Any] = {"@timestamp": ev.timestamp, "message": ev.message, "stream": ev.stream,
                                        "event": {"id": eid}}
                if ev.fields is not None:
                    head["json"] = ev.fields
                if ev.flags:
                    head["log"] = {"flags": flag_lists[ev.flags]}
                value: bytes | None = dumps(head)[:-1] + tail
                size = fixed + len(value)  # type: ignore[arg-type]
                if size > limit:
                    value, size = self._fit_ecs(head, ev, fixed, limit, size, meta.name, out)
            else:
                value = ev.message.encode()
                extra = self._message_headers(ev, ev.flags)
                size = fixed + len(value) + sum(len(k) + len(v) + 2 for k, v in extra)
                if size > limit:
                    value, extra, size = self._fit_message(value, ev, fixed, limit, size, meta.name, out)
            topics.append(topic)
            keys.append(key)
            values.append(value)
            eids.append(eid.encode())
            containers.append(cid_b)
            extras.append(extra)
            ts = ev.timestamp
            ms = second_ms(ts[:19])  # inline fast path of timestamp_ms: Docker's form, a known second
            if ms is not None and len(ts) >= 24 and ts[19] == "." and ts[-1] == "Z" and ts[20:23].isdigit():
                stamps.append(ms + int(ts[20:23]))
            else:
                stamps.append(timestamp_ms(ts))
            sizes.append(size)

    def _message_headers(self, ev: Event, flags: int) -> tuple[Header, ...]:
        """The headers of a raw-message record after event.id and container.id: the event's time and stream,
        the container's metadata, the flags."""
        hs = ((H_TIMESTAMP, ev.timestamp.encode()), (H_STREAM, ev.stream.encode()), *self._meta_headers)
        if flags:
            hs += ((H_FLAGS, ",".join(FLAG_LISTS[flags]).encode()),)
        return hs

    def _fit_ecs(self, head: dict[str, Any], ev: Event, fixed: int, limit: int, size: int, name: str,
                 out: Records) -> tuple[bytes | None, int]:
        """Shorten the message until the document fits; None when even an empty message does not (labels or
        JSON fields alone too large) or the policy is to drop."""
        if self.options.oversize is Oversize.DROP:
            out.dropped.append((name, size))
            return None, 0
        data = ev.message.encode()
        head["log"] = {"flags": FLAG_LISTS[ev.flags | Flag.TRUNCATED]}
        cut = len(data)
        escaped = len(orjson.dumps(ev.message)) - 2  # the message as the document holds it (JSON escapes)
        over = size - limit
        for _ in range(8):  # cut in proportion to what the escapes make of the bytes, until it fits
            target = escaped - over - 16
            cut = int(cut * target / escaped) if target > 0 and escaped else 0
            message = utf8_prefix(data, cut).decode("utf-8", "ignore")
            head["message"] = message
            value = orjson.dumps(head)[:-1] + self._tail
            new = fixed + len(value)
            if new <= limit:
                out.truncated.append((name, size))
                return value, new
            if cut == 0:
                break
            escaped = len(orjson.dumps(message)) - 2
            over = new - limit
        out.dropped.append((name, size))
        return None, 0

    def _fit_message(self, value: bytes, ev: Event, fixed: int, limit: int, size: int, name: str,
                     out: Records) -> tuple[bytes | None, tuple[Header, ...], int]:
        hs = self._message_headers(ev, ev.flags | Flag.TRUNCATED)
        if self.options.oversize is Oversize.DROP:
            out.dropped.append((name, size))
            return None, hs, 0
        rest = fixed + sum(len(k) + len(v) + 2 for k, v in hs)  # what the record weighs without its value
        if rest >= limit:
            out.dropped.append((name, size))
            return None, hs, 0
        value = utf8_prefix(value, limit - rest)
        out.truncated.append((name, size))
        return value, hs, rest + len(value)
