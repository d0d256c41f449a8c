"""The Kafka sink: records built once per request (`encode`), placed on partitions and sent as one record batch
per partition through aiokafka's producer, acknowledged per partition.

Delivery: a request is delivered when the broker acknowledged every partition batch it became (acks = all by
default); partitions that fail are answered with a Partial, so only their records are sent again. Broker errors
fall in three kinds. Passing ones (timeouts, a leader moving, a broken connection) are retried. Ones that need an
operator (unknown topic with auto-create off, authorization, an unsupported setting) are logged as errors naming
the sink and topic and retried with backoff, so the sink shows 'failing' and the buffer keeps the events until
the cause is fixed. A record the broker refuses for itself (too large, invalid) is dropped and counted; a batch
refused as too large is split and sent again, so one large record never fails the others.

Partitions: with `partitioner = "hash"` the key (the container id by default) picks the partition as Kafka's Java
client does (murmur2), so a container's events stay in order on one partition as long as requests are not
retried out of order (`max_in_flight = 1` makes that strict). With "round_robin", each run of one container's
events in a request goes to the next partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from shipper.errors import RetryableSinkError
from shipper.event import Batch
from shipper.sinks.base import Partial, Request, Sink, SinkContext, pick
from shipper.sinks.kafka.config import Acks, KafkaConfig, Partitioner, SaslMechanism
from shipper.sinks.kafka.encode import H_CONTAINER_ID, H_EVENT_ID, RECORD_OVERHEAD, KafkaEncoder, Records
from shipper.telemetry import events as tel
from shipper.tls import TlsFileError

log = logging.getLogger("shipper.sinks.kafka")

CLOSE_TIMEOUT_SECS = 5.0

# error kinds (the `kind` label of shipper_kafka_errors_total)
RECORD_TOO_LARGE = "record_too_large"
INVALID_RECORD = "invalid_record"
UNKNOWN_TOPIC = "unknown_topic"
AUTHORIZATION = "authorization"
UNSUPPORTED = "unsupported"
TIMEOUT = "timeout"
CONNECTION = "connection"
LEADER = "leader"
RETRIABLE = "retriable"
OTHER = "other"
NEEDS_OPERATOR = frozenset({UNKNOWN_TOPIC, AUTHORIZATION, UNSUPPORTED})  # logged as errors, retried with backoff
REFUSED_FOR_GOOD = frozenset({RECORD_TOO_LARGE, INVALID_RECORD})  # that record never: dropped and counted

_KINDS = {
    "MessageSizeTooLargeError": RECORD_TOO_LARGE, "RecordListTooLargeError": RECORD_TOO_LARGE,
    "RecordTooLargeError": RECORD_TOO_LARGE, "CorruptRecordException": INVALID_RECORD,
    "InvalidTimestampError": INVALID_RECORD, "UnknownTopicOrPartitionError": UNKNOWN_TOPIC,
    "InvalidTopicError": UNKNOWN_TOPIC, "TopicAuthorizationFailedError": AUTHORIZATION,
    "ClusterAuthorizationFailedError": AUTHORIZATION, "AuthenticationFailedError": AUTHORIZATION,
    "IllegalSaslStateError": AUTHORIZATION, "UnsupportedSaslMechanismError": UNSUPPORTED,
    "AuthenticationMethodNotSupported": UNSUPPORTED, "UnsupportedVersionError": UNSUPPORTED,
    "UnsupportedForMessageFormatError": UNSUPPORTED, "InvalidRequiredAcksError": UNSUPPORTED,
    "UnsupportedCodecError": UNSUPPORTED, "IncompatibleBrokerVersion": UNSUPPORTED,
    "KafkaTimeoutError": TIMEOUT, "RequestTimedOutError": TIMEOUT, "TimeoutError": TIMEOUT,
    "KafkaConnectionError": CONNECTION, "NodeNotReadyError": CONNECTION, "NoBrokersAvailable": CONNECTION,
    "ConnectionError": CONNECTION, "NotLeaderForPartitionError": LEADER, "LeaderNotAvailableError": LEADER,
}


def error_kind(e: BaseException) -> str:
    """The kind of a producer or broker error (by class name, so aiokafka's tree needs no import here)."""
    for cls in type(e).__mro__:
        kind = _KINDS.get(cls.__name__)
        if kind is not None:
            return kind
    return RETRIABLE if getattr(e, "retriable", False) else OTHER


def describe(e: BaseException) -> str:
    """The class and message of an error, once (aiokafka's messages often start with the class name)."""
    name, text = type(e).__name__, str(e)
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class KafkaSink(Sink):
    Config = KafkaConfig
    config: KafkaConfig

    def __init__(self, config: KafkaConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = KafkaEncoder(config.encoder_options(context.host_name))
        self._producer: Any = None
        self._start_lock = asyncio.Lock()
        self._round_robin: dict[str, int] = defaultdict(int)
        self._hash_cache: dict[tuple[bytes, int], int] = {}
        self._batch_limit: dict[str, int] = {}  # topic -> bytes of a partition batch, lowered when refused as too large
        self._murmur2: Any = None
        # Requests in flight take turns on each partition, in the order they came: `_queued` holds, per partition,
        # the future the last request sets once its batches for that partition are queued in the producer. So a
        # key's records keep their order across requests in flight, and at most one batch waits in aiokafka's
        # queue per partition (its wait for room has a deadline that shrinks faster for each waiter).
        self._admission = asyncio.Lock()
        self._queued: dict[tuple[str, int], asyncio.Future[None]] = {}

    # --- lifecycle --------------------------------------------------------------------------------------

    def producer_options(self) -> dict[str, Any]:
        """aiokafka producer arguments (without the password and the TLS context)."""
        cfg = self.config
        tls = cfg.tls
        sasl = cfg.sasl_mechanism is not SaslMechanism.NONE
        protocol = {(False, False): "PLAINTEXT", (True, False): "SSL", (False, True): "SASL_PLAINTEXT",
                    (True, True): "SASL_SSL"}[(tls, sasl)]
        opts: dict[str, Any] = {
            "bootstrap_servers": list(cfg.brokers), "client_id": cfg.client_id,
            "acks": "all" if cfg.acks is Acks.ALL else 1,
            "compression_type": None if cfg.compression.value == "none" else cfg.compression.value,
            "max_batch_size": cfg.producer_batch_bytes, "linger_ms": 0,
            "max_request_size": max(cfg.producer_batch_bytes, 1 << 20) + 4096,
            "request_timeout_ms": int(cfg.request_timeout_secs * 1000),
            "metadata_max_age_ms": int(cfg.metadata_max_age_secs * 1000),
            "enable_idempotence": cfg.enable_idempotence, "security_protocol": protocol,
        }
        if sasl:
            opts["sasl_mechanism"] = cfg.sasl_mechanism.value
            opts["sasl_plain_username"] = cfg.sasl_username
        return opts

    async def start(self) -> None:
        async with self._start_lock:
            if self._producer is not None and self._usable():
                return
            await self._stop_producer()
            from aiokafka import AIOKafkaProducer
            from aiokafka.partitioner import murmur2

            self._murmur2 = murmur2
            cfg = self.config
            opts = self.producer_options()
            if cfg.tls:
                try:
                    opts["ssl_context"] = cfg.tls_config().context()
                except (TlsFileError, ValueError, OSError) as e:
                    raise RetryableSinkError(f"kafka sink {self.context.name}: TLS setup failed "
                                             f"(tls_ca/tls_cert/tls_key): {e}") from e
            if cfg.sasl_mechanism is not SaslMechanism.NONE:
                try:
                    opts["sasl_plain_password"] = cfg.sasl_password()
                except ValueError as e:
                    raise RetryableSinkError(f"kafka sink {self.context.name}: {e}") from None
            producer = AIOKafkaProducer(**opts)
            try:
                await producer.start()
            except Exception as e:
                await self._stop(producer)
                kind = error_kind(e)
                tel.kafka_error(self.context.metrics, self.context.name, "", kind, e, 0)
                brokers = ",".join(cfg.brokers)
                if kind == CONNECTION:
                    raise RetryableSinkError(f"kafka sink {self.context.name}: cannot reach brokers {brokers}: "
                                             f"{describe(e)}") from e
                hint = (" (enable_idempotence needs brokers that grant producer ids)"
                        if cfg.enable_idempotence else "")
                raise RetryableSinkError(f"kafka sink {self.context.name}: the brokers {brokers} refused the "
                                         f"producer: {describe(e)}{hint}") from e
            self._producer = producer

    def _usable(self) -> bool:
        """False once the producer's sender task has died: every later send would fail the same way."""
        sender = getattr(self._producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is None or not task.done()

    async def healthcheck(self) -> None:
        """The brokers answer a metadata request; a literal topic must exist (or be auto-created)."""
        producer = await self._ready()
        if not await producer.client.force_metadata_update():
            raise RetryableSinkError(f"kafka sink {self.context.name}: no metadata from {self.config.brokers}")
        if self.encoder.topic.constant:
            topic = self.config.topic
            try:
                await producer.partitions_for(topic)
            except Exception as e:
                kind = error_kind(e)
                tel.kafka_error(self.context.metrics, self.context.name, topic, kind, e, 0)
                raise RetryableSinkError(f"kafka sink {self.context.name} topic {topic}: {describe(e)}") from e

    async def _ready(self) -> Any:
        if self._producer is None or not self._usable():
            await self.start()
        return self._producer

    async def _stop(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_SECS)
        except Exception as e:  # a frozen broker: what it has not acknowledged stays in the buffer
            log.debug("kafka producer stop did not finish sink=%s error=%r", self.context.name, e)

    async def _stop_producer(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            await self._stop(p)

    async def close(self) -> None:
        await self._stop_producer()

    # --- encoding ---------------------------------------------------------------------------------------

    def encode(self, batches: list[Batch]) -> Request:
        records = self.encoder.encode(batches)
        m, sink, limit = self.context.metrics, self.context.name, self.config.max_message_bytes
        for name, size in records.truncated:
            tel.kafka_oversize(m, sink, name, "truncate", size, limit)
        for name, size in records.dropped:
            tel.kafka_oversize(m, sink, name, "drop", size, limit)
        records.truncated, records.dropped = [], []
        return Request(batches, records, len(records))

    def subset(self, request: Request, indices: Sequence[int]) -> Request:
        """The records at `indices`, sliced: encoding those events alone gives the same records."""
        indices = sorted(indices)
        return Request(pick(request.batches, indices), request.payload.subset(indices), len(indices))

    # --- sending ----------------------------------------------------------------------------------------

    async def send(self, request: Request) -> Partial | None:
        recs: Records = request.payload
        if not len(recs):
            return None
        producer = await self._ready()
        started = time.monotonic()
        rejected = [i for i, v in enumerate(recs.values) if v is None]
        retry: list[int] = []
        reasons: list[str] = []
        by_topic: dict[str, list[int]] = defaultdict(list)
        for i, topic in enumerate(recs.topics):
            if recs.values[i] is not None:
                by_topic[topic].append(i)
        placed: dict[tuple[str, int], list[int]] = {}
        turns: dict[tuple[str, int], tuple[asyncio.Future[None] | None, asyncio.Future[None]]] = {}
        async with self._admission:  # requests take their turn on each partition in the order they came
            for topic, indices in by_topic.items():
                try:
                    partitions = sorted(await producer.partitions_for(topic))
                except Exception as e:
                    self._failed(topic, indices, e, retry, rejected, reasons)
                    continue
                self._place(recs, topic, indices, partitions, placed)
            loop = asyncio.get_running_loop()
            for tp in placed:
                mine: asyncio.Future[None] = loop.create_future()
                turns[tp] = (self._queued.get(tp), mine)
                self._queued[tp] = mine
        queued = await asyncio.gather(*(self._queue(producer, recs, tp, indices, *turns[tp])
                                        for tp, indices in placed.items()))
        sent = [(tp[0], chunk, fut) for tp, chunks in zip(placed, queued, strict=True) for chunk, fut in chunks]
        outcomes = await asyncio.gather(*(f for _, _, f in sent), return_exceptions=True)
        elapsed = time.monotonic() - started
        delivered: dict[str, list[int]] = defaultdict(list)
        for (topic, chunk, _), outcome in zip(sent, outcomes, strict=True):
            if outcome is None or not isinstance(outcome, BaseException):
                delivered[topic].extend(chunk)
                continue
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            self._failed(topic, chunk, outcome, retry, rejected, reasons)
        nbytes = recs.nbytes.__getitem__
        for topic, idx in delivered.items():
            tel.kafka_sent(self.context.metrics, self.context.name, topic, len(idx), sum(map(nbytes, idx)),
                           elapsed)
        if not retry and not rejected:
            return None
        reason = "; ".join(dict.fromkeys(reasons)) or "records larger than max_message_bytes"
        if retry and not rejected and not delivered:
            raise RetryableSinkError(reason)
        return Partial(retry=retry, rejected=rejected, reason=reason)

    async def _queue(self, producer: Any, recs: Records, tp: tuple[str, int], indices: list[int],
                     before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> list[tuple[list[int], Any]]:
        """Hand one partition's records to the producer as record batches, once the request before this one has
        handed over its own for this partition (so a key's records stay in order across requests in flight).
        Returns each chunk of records with the future of the broker's answer, or with the exception that kept
        it from being queued (a chunk after a failed one is not sent either: it would land before it)."""
        topic, partition = tp
        out: list[tuple[list[int], Any]] = []
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])
            stamps, keys, values, eids, cids, extras = (recs.timestamps, recs.keys, recs.values, recs.event_ids,
                                                        recs.containers, recs.extra)
            failed: BaseException | None = None
            for chunk in self._chunks(recs, topic, indices):
                if failed is not None:
                    out.append((chunk, _failed_future(failed)))
                    continue
                builder = producer.create_batch()
                append = builder.append
                for i in chunk:
                    hs = [(H_EVENT_ID, eids[i]), (H_CONTAINER_ID, cids[i])]
                    extra = extras[i]
                    if extra:
                        hs.extend(extra)
                    append(timestamp=stamps[i], key=keys[i], value=values[i], headers=hs)
                builder.close()
                try:
                    fut = await producer.send_batch(builder, topic, partition=partition)
                except Exception as e:
                    failed = e
                    fut = _failed_future(e)
                out.append((chunk, fut))
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._queued.get(tp) is mine:
                del self._queued[tp]
        return out

    def _place(self, recs: Records, topic: str, indices: list[int], partitions: list[int],
               placed: dict[tuple[str, int], list[int]]) -> None:
        """Put each record of `topic` on a partition: by key hash, or each container run to the next one (also
        the records without a key under the hash partitioner)."""
        n = len(partitions)
        keys, containers = recs.keys, recs.containers
        hashing = self.config.partitioner is Partitioner.HASH
        cache = self._hash_cache
        if len(cache) > 100_000:
            cache.clear()
        previous = None
        rr = self._round_robin[topic]
        run_key: Any = self  # the key and container of the run of records being placed (none yet)
        run_container: bytes | None = None
        target: list[int] = []
        for i in indices:
            key, container = keys[i], containers[i]
            if key is run_key and container is run_container:  # same run: same partition (the usual case)
                target.append(i)
                continue
            run_key, run_container = key, container
            if hashing and key is not None:
                p = cache.get((key, n))
                if p is None:
                    p = cache[(key, n)] = (self._murmur2(key) & 0x7FFFFFFF) % n
            else:
                if container != previous:
                    previous = container
                    rr += 1
                p = rr % n
            target = placed.setdefault((topic, partitions[p]), [])
            target.append(i)
        self._round_robin[topic] = rr

    def _chunks(self, recs: Records, topic: str, indices: list[int]) -> list[list[int]]:
        """The records of one partition cut into record batches of at most the topic's batch limit."""
        limit = self._batch_limit.get(topic, self.config.producer_batch_bytes)
        sizes = recs.nbytes
        if sum(map(sizes.__getitem__, indices)) + RECORD_OVERHEAD * len(indices) <= limit:
            return [indices]  # the usual case: one batch
        out: list[list[int]] = []
        cur: list[int] = []
        size = 0
        for i in indices:
            s = sizes[i] + RECORD_OVERHEAD
            if cur and size + s > limit:
                out.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += s
        if cur:
            out.append(cur)
        return out

    def _failed(self, topic: str, indices: list[int], e: BaseException, retry: list[int], rejected: list[int],
                reasons: list[str]) -> None:
        kind = error_kind(e)
        tel.kafka_error(self.context.metrics, self.context.name, topic, kind, e, len(indices))
        if kind in REFUSED_FOR_GOOD:
            if len(indices) > 1 and kind == RECORD_TOO_LARGE:  # the batch was too large: smaller ones next time
                limit = self._batch_limit.get(topic, self.config.producer_batch_bytes)
                self._batch_limit[topic] = max(limit // 2, 1)
                retry.extend(indices)
                reasons.append(f"kafka sink {self.context.name} topic {topic}: batch refused as too large, "
                               f"sending smaller batches")
                return
            rejected.extend(indices)
            reasons.append(f"kafka sink {self.context.name} topic {topic}: broker refused the record: "
                           f"{describe(e)}")
            return
        retry.extend(indices)
        reasons.append(f"kafka sink {self.context.name} topic {topic}: {describe(e)}")


def _failed_future(e: BaseException) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_exception(e)
    return fut
