"""The Kafka sink's send path against a stand-in producer (no broker): partitions by key, per-partition order
across requests in flight, and which records a failure sends again. The stand-in only records what it is given
and when; the real producer and broker are in tests/integration/test_kafka.py."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from shipper.errors import RetryableSinkError
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import Partial, SinkContext
from shipper.sinks.kafka.config import KafkaConfig
from shipper.sinks.kafka.sink import KafkaSink
from shipper.telemetry.metrics import Metrics

PARTITIONS = 4


class StandInProducer:
    """What KafkaSink uses of aiokafka's producer. `send_batch` takes a random while (another request's batch
    being drained), then records the batch's messages in the partition's queue; the broker's answer comes
    later, or `fail` says which partitions fail and how."""

    def __init__(self, fail: dict[int, BaseException] | None = None, slow_metadata: float = 0.0) -> None:
        self.queues: dict[tuple[str, int], list[bytes]] = {}
        self.fail = fail or {}
        self.slow_metadata = slow_metadata
        self._sender = None

    async def partitions_for(self, topic: str) -> set[int]:
        if self.slow_metadata:
            delay, self.slow_metadata = self.slow_metadata, 0.0  # the first look-up only
            await asyncio.sleep(delay)
        return set(range(PARTITIONS))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(10_000_000, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await asyncio.sleep(random.uniform(0, 0.01))
        from aiokafka.record.default_records import DefaultRecordBatch

        values = [r.value for r in DefaultRecordBatch(builder._build())]
        self.queues.setdefault((topic, partition), []).extend(values)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.fail.get(partition)
        asyncio.get_running_loop().call_later(random.uniform(0, 0.01), _answer, fut, error)
        return fut

    async def stop(self) -> None:
        pass


def _answer(fut: asyncio.Future[Any], error: BaseException | None) -> None:
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def make_sink(producer: StandInProducer, **table: Any) -> KafkaSink:
    cfg = build(KafkaConfig, {"type": "kafka", "value": "message", "compression": "none", **table}, "sinks.k")
    sink = KafkaSink(cfg, SinkContext("k", Path("/nonexistent"), "host", Metrics()))
    sink._producer = producer
    sink._murmur2 = murmur2
    return sink


METAS = [ContainerMeta(id=f"{c}" * 64, name=f"c{c}", host="h") for c in range(6)]


def requests(n: int, per: int) -> list[list[Batch]]:
    """`n` requests, each with `per` events of every container, numbered in read order."""
    out = []
    for r in range(n):
        out.append([Batch(m, [Event("2026-01-01T00:00:00.000Z", f"{m.name} n={r * per + i}", seq=r * per + i)
                              for i in range(per)]) for m in METAS])
    return out


async def test_records_of_one_key_keep_their_order_across_requests_in_flight() -> None:
    producer = StandInProducer(slow_metadata=0.05)  # the first request waits for metadata; the others must too
    sink = make_sink(producer)
    reqs = [sink.encode(r) for r in requests(8, 50)]
    assert await asyncio.gather(*(sink.send(r) for r in reqs)) == [None] * 8
    seen: dict[str, int] = {}
    for (_, partition), values in producer.queues.items():
        for v in values:
            name, n = v.decode().split(" n=")
            expected = (murmur2(METAS[int(name[1:])].id.encode()) & 0x7FFFFFFF) % PARTITIONS
            assert partition == expected, "a key's records on another partition"
            assert int(n) == seen.get(name, -1) + 1, f"{name}: n={n} after n={seen.get(name)}"
            seen[name] = int(n)
    assert seen == {m.name: 399 for m in METAS}
    assert not sink._queued, "turns left behind"


async def test_a_failed_partition_is_sent_again_alone_and_a_record_too_large_is_dropped() -> None:
    meta = METAS[0]
    target = (murmur2(meta.id.encode()) & 0x7FFFFFFF) % PARTITIONS
    producer = StandInProducer(fail={target: KafkaTimeoutError()})
    sink = make_sink(producer)
    request = sink.encode(requests(1, 5)[0])
    outcome = await sink.send(request)
    assert isinstance(outcome, Partial)
    on_target = [k * 5 + i for k, m in enumerate(METAS) for i in range(5)
                 if (murmur2(m.id.encode()) & 0x7FFFFFFF) % PARTITIONS == target]
    assert sorted(outcome.retry) == on_target and not outcome.rejected, "only the failed partition's records"
    assert len(on_target) < 30
    assert "KafkaTimeoutError" in outcome.reason and "kafka sink k topic logs" in outcome.reason
    producer.fail = {target: MessageSizeTooLargeError()}
    one = sink.subset(request, [0])
    outcome = await sink.send(one)
    assert isinstance(outcome, Partial) and list(outcome.rejected) == [0] and not outcome.retry
    producer.fail = {p: KafkaTimeoutError() for p in range(PARTITIONS)}
    with pytest.raises(RetryableSinkError, match="KafkaTimeoutError"):
        await sink.send(request)


async def test_round_robin_spreads_container_runs_over_the_partitions() -> None:
    producer = StandInProducer()
    sink = make_sink(producer, partitioner="round_robin")
    assert await sink.send(sink.encode(requests(1, 10)[0])) is None
    per_partition = {p: {v.decode().split(" ")[0] for v in vals} for (_, p), vals in producer.queues.items()}
    assert len(per_partition) == PARTITIONS
    assert all(len(names) in (1, 2) for names in per_partition.values()), "a run was split"
