"""The Logstash sink: encodes a request once as ECS JSON documents (the fields Filebeat's docker input sends,
`@metadata` included), then sends it by protocol: Lumberjack windows (beats), JSON lines on a stream
(json_lines) or an NDJSON POST (http), over one host or several.

What "delivered" means per protocol: beats, Logstash acknowledged the events (its pipeline took them);
json_lines, Logstash's TCP acknowledged their bytes (the input has no acknowledgement of its own); http,
Logstash answered 2xx. Events are acked to the buffer only then. A request some of whose events a host
acknowledged before failing returns a Partial: only the rest is sent again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from shipper import __version__
from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch, ContainerMeta
from shipper.sinks.base import Partial, Request, Sink, SinkContext, pick
from shipper.sinks.ecs import JsonLinesEncoder
from shipper.sinks.logstash.balance import BeatsDispatcher, HostPool, HostState
from shipper.sinks.logstash.beats import BeatsConnection, open_connection
from shipper.sinks.logstash.config import LogstashConfig, Protocol
from shipper.sinks.logstash.lumberjack import Frames, deflate, window_parts

ECS_VERSION = "8.0.0"
COMPRESS_OFF_LOOP_BYTES = 32 * 1024  # a window this large is compressed in a worker thread (zlib frees the GIL)


def dedot(labels: dict[str, str]) -> dict[str, str]:
    return {k.replace(".", "_"): v for k, v in labels.items()}


class LogstashEncoder(JsonLinesEncoder):
    """The shared ECS JSON lines encoder, with what every event to Logstash also carries, serialised once per
    container with the container's part: `agent`, `ecs.version`, `input.type` and `@metadata` (beat, type,
    version: what the beats input hands a pipeline and what a Filebeat pipeline builds index names from)."""

    def __init__(self, cfg: LogstashConfig, host_name: str) -> None:
        super().__init__()
        self.dedot = cfg.labels_dedot
        self.extra: dict[str, Any] = {
            "agent": {"type": "shipper", "version": __version__, "name": host_name},
            "ecs": {"version": ECS_VERSION},
            "input": {"type": "container"},
            "@metadata": {"beat": cfg.beat, "type": "_doc", "version": cfg.beat_version},
        }

    def _tail_of(self, meta: ContainerMeta) -> bytes:
        if meta is not self._meta_key:
            import orjson

            doc = meta.ecs()
            if self.dedot and meta.labels:
                doc["container"] = {**doc["container"], "labels": dedot(meta.labels)}
            doc.update(self.extra)
            self._meta_key = meta
            self._tail = b"," + orjson.dumps(doc)[1:-1] + b"}\n"
        return self._tail

    def frames(self, batches: list[Batch], window: int) -> Frames:
        """Every event of `batches` as json frames in windows of `window` events, framed while encoded: a
        request whose windows are cut at that size is never split into documents and framed again."""
        return Frames.build([(self.heads(b), self._tail_of(b.container)[:-1]) for b in batches], window)


class LogstashPayload:
    """A request's events as JSON lines, as json_lines and http send them."""

    __slots__ = ("_docs", "blob")

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self._docs: list[bytes] | None = None

    @property
    def docs(self) -> list[bytes]:
        if self._docs is None:
            self._docs = self.blob.split(b"\n")[:-1]  # JSON escapes newlines: a line is one document
        return self._docs


class LogstashSink(Sink):
    Config = LogstashConfig
    config: LogstashConfig

    def __init__(self, config: LogstashConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = LogstashEncoder(config, context.host_name)
        self.pool = HostPool(config.host_list(), config, context.name, context.metrics)
        self._tls: ssl.SSLContext | None = None
        self._client: Any = None

    async def start(self) -> None:
        if self._client is not None:
            return
        cfg = self.config
        if cfg.uses_tls:
            try:
                self._tls = cfg.tls_config().context()
            except (OSError, ValueError) as e:
                raise RetryableSinkError(f"logstash TLS setup failed (tls_ca/tls_cert/tls_key): {e}") from e
        if cfg.protocol is Protocol.BEATS:
            self._client = BeatsDispatcher(self.pool, self._connect_beats, self._encode_window)
        elif cfg.protocol is Protocol.JSON_LINES:
            from shipper.sinks.logstash.jsonlines import JsonLinesClient

            self._client = JsonLinesClient(self.pool, self._tls, cfg.tls_server_name)
        else:
            from shipper.sinks.logstash.http import HttpClient

            try:
                password = cfg.read_password()
            except OSError as e:
                raise RetryableSinkError(f"cannot read password_file: {e.strerror}") from None
            self._client = HttpClient(self.pool, self._tls, cfg.user, password)

    def details(self) -> dict[str, object]:
        active = {"active": self.pool.hosts[self.pool.active].name} if not self.config.loadbalance else {}
        return {"hosts": [h.status() for h in self.pool.hosts], **active}

    def preflight(self) -> None:
        """For `shipper check`: the password file can be read (its content is not shown)."""
        if self.config.password_file:
            try:
                self.config.read_password()
            except OSError as e:
                raise ConfigError(f"sinks.{self.context.name}.password_file",
                                  f"cannot read {self.config.password_file}: {e.strerror}") from None

    async def _connect_beats(self, h: HostState) -> BeatsConnection:
        cfg = self.config
        return await open_connection(h.host.host, h.host.port, h.name, cfg.timeout_secs, cfg.connect_timeout_secs,
                                     h.listener(), self._tls, cfg.tls_server_name)

    async def _encode_window(self, frames: bytes, count: int) -> list[bytes]:
        """A window of `count` events with their json `frames`, ready to write; a large window is compressed
        in a worker thread (zlib lets go of the GIL while it works, so the loop goes on reading meanwhile).
        Only zlib runs there: Python code in the worker would fight the loop for the GIL and wait out its
        switch interval every few milliseconds."""
        level = self.config.compression_level
        if not level:
            return window_parts(count, frames, None)
        if len(frames) < COMPRESS_OFF_LOOP_BYTES:
            return window_parts(count, frames, deflate(frames, level))
        return window_parts(count, frames, await asyncio.to_thread(deflate, frames, level))

    async def healthcheck(self) -> None:
        """Some host accepts a connection (http: answers at all; any status will do)."""
        await self.start()
        errors = []
        for h in self.pool.hosts:
            try:
                if self.config.protocol is Protocol.HTTP:
                    async with self._client.session().head(h.host.url, allow_redirects=False):
                        return
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(h.host.host, h.host.port, ssl=self._tls,
                                            server_hostname=(self.config.tls_server_name or h.host.host)
                                            if self._tls else None),
                    self.config.connect_timeout_secs)
                writer.close()
                return
            except Exception as e:  # any failure of a probe is that host down
                errors.append(f"{h.name}: {type(e).__name__}: {e}")
        raise RetryableSinkError("no Logstash host reachable: " + "; ".join(errors))

    def encode(self, batches: list[Batch]) -> Request:
        if self.config.protocol is Protocol.BEATS:
            return Request(batches, self.encoder.frames(batches, self.pool.window_size()))
        return Request(batches, LogstashPayload(self.encoder.encode(batches)))

    def subset(self, request: Request, indices: Sequence[int]) -> Request:
        """The same documents, sliced: nothing is encoded again."""
        docs = request.payload.docs
        indices = sorted(indices)
        picked = [docs[i] for i in indices]
        payload = Frames.of(picked) if isinstance(request.payload, Frames) else LogstashPayload(
            b"".join([d + b"\n" for d in picked]))
        return Request(pick(request.batches, indices), payload, len(indices))

    async def send(self, request: Request) -> Partial | None:
        if not request.events:
            return None
        if self._client is None:
            await self.start()
        proto = self.config.protocol
        if proto is Protocol.BEATS:
            left = await self._client.send(request.payload)
            return Partial(retry=left, reason="not acknowledged by any Logstash host") if left else None
        payload: LogstashPayload = request.payload
        if proto is Protocol.JSON_LINES:
            done = await self._client.send(payload.blob, request.events)
            if done < request.events:
                return Partial(retry=range(done, request.events), reason="connection lost before Logstash's TCP "
                                                                         "acknowledged them")
            return None
        outcome: Partial | None = await self._client.send(payload.blob, request.events)
        return outcome

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
