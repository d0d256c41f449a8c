"""Helpers of the Logstash sink's unit tests: a sink built from a table, events that tell themselves apart."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.event import COMPOSE_PROJECT, COMPOSE_SERVICE, Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.logstash.sink import LogstashConfig, LogstashSink
from shipper.telemetry.metrics import Metrics

META = ContainerMeta(id="c0ffee" * 10 + "abcd", name="web-1", image="shop/web:1.2",
                     labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web", "a.b": "c"}, host="node-1")

MakeSink = Callable[..., LogstashSink]


def batch(n: int, start: int = 0, meta: ContainerMeta = META) -> Batch:
    return Batch(meta, [Event(f"2024-05-01T12:00:00.{i:06d}000Z", f"line {i}", "stderr" if i % 2 else "stdout",
                              seq=i) for i in range(start, start + n)])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def make_sink(tmp_path: Path) -> AsyncIterator[MakeSink]:
    made: list[LogstashSink] = []

    def make(**table: Any) -> LogstashSink:
        table = {"type": "logstash", "retry_initial_secs": 0.01, "retry_max_secs": 0.05, **table}
        cfg = build(LogstashConfig, table, "sinks.ls")
        s = LogstashSink(cfg, SinkContext("ls", tmp_path, "daemon-host", Metrics()))
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()
