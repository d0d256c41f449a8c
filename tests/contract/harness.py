"""What the compliance suite needs to know of each sink: how to configure it for a test, and how to read back
what arrived at its destination.

Every sink type registered in `shipper.sinks.SINKS` must have a harness in `HARNESSES` (a test checks it):
a new sink joins the suite by adding one class here. A harness that can see each event at the destination
sets `exact`; the null sink can only count (through `shipper_events_sent_total`).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shipper.config import build
from shipper.event import COMPOSE_PROJECT, COMPOSE_SERVICE, ContainerMeta
from shipper.sinks import sink_class
from shipper.sinks.base import Request, Sink, SinkContext
from shipper.sinks.syslog.sink import SyslogPayload
from shipper.telemetry.metrics import Metrics
from tests.integration.rsyslog import Rsyslog

# Every test's sink retries fast: a retry must never be what makes a test slow.
FAST: dict[str, Any] = {"retry_initial_secs": 0.005, "retry_max_secs": 0.03, "linger_secs": 0.0}


@dataclass(frozen=True)
class Arrival:
    """One event as read back at the destination; `event_id` when the format carries it."""

    message: str
    container: str
    event_id: str | None = None


class Harness(ABC):
    """One sink type under test. `make()` builds a fresh sink (as a restarted process would); `arrived()`
    reads back what reached the destination so far, in the order the destination has it."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True  # arrived() returns each event; False: only count() is known
    settle: ClassVar[float] = 0.0  # how long to keep looking after the expected count showed up
    marks: ClassVar[tuple[pytest.MarkDecorator, ...]] = ()

    def __init__(self, tmp_path: Path, metrics: Metrics, request: pytest.FixtureRequest) -> None:
        """`request` gives a harness the fixtures it needs (rsyslog, monkeypatch)."""
        self.tmp_path = tmp_path
        self.metrics = metrics
        self.tag = "t" + uuid.uuid4().hex[:8]  # this test's containers are named after it
        self.sinks: list[Sink] = []

    def table(self) -> dict[str, Any]:
        """The sink's own config keys for this test (beyond the keys every sink has)."""
        return {}

    def make(self, **overrides: Any) -> Sink:
        cls = sink_class(self.name)
        cfg = build(cls.Config, {"type": self.name, **FAST, **self.table(), **overrides}, f"sinks.{self.name}")
        sink = cls(cfg, SinkContext(self.name, self.tmp_path / "state", "daemon-host", self.metrics))
        self.sinks.append(sink)
        return sink

    def containers(self, n: int) -> list[ContainerMeta]:
        """`n` containers whose names tell this test's events apart from every other's at the destination."""
        return [ContainerMeta(id=uuid.uuid4().hex + uuid.uuid4().hex, name=f"{self.tag}-c{k}", image="busybox:1",
                              labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: f"svc{k}"}, host="node-1")
                for k in range(n)]

    @abstractmethod
    def arrived(self) -> list[Arrival]:
        """Every event that reached the destination so far (exact harnesses only)."""

    def count(self) -> int:
        return len(self.arrived())

    @abstractmethod
    def wire(self, request: Request) -> list[bytes]:
        """The bytes `request` puts on the wire, one piece per message where the format has messages."""

    async def wait_count(self, n: int, timeout: float = 4.0) -> int:
        """Wait until at least `n` events arrived (then `settle` longer, so an extra one would show)."""
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.settle:
            await asyncio.sleep(self.settle)
        return self.count()

    async def close(self) -> None:
        for s in self.sinks:
            await s.close()


def _json_arrivals(data: bytes) -> list[Arrival]:
    out = []
    for line in data.split(b"\n")[:-1]:  # the last piece is empty or a line still being written
        doc = json.loads(line)
        out.append(Arrival(doc["message"], doc["container"]["name"], doc["event"]["id"]))
    return out


class NullHarness(Harness):
    """Discards everything: only the runner's count of delivered events can be read back."""

    name = "null"
    exact = False

    def table(self) -> dict[str, Any]:
        return {"encode": True}  # so the payload is the JSON a real sink would pay for, and purity shows

    def arrived(self) -> list[Arrival]:
        raise AssertionError("the null sink cannot read back events, only count them")

    def count(self) -> int:
        return int(self.metrics.get("shipper_events_sent_total", sink=self.name))

    def wire(self, request: Request) -> list[bytes]:
        assert isinstance(request.payload, bytes)
        return [request.payload]


class FileHarness(Harness):
    name = "file"

    def __init__(self, tmp_path: Path, metrics: Metrics, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, metrics, request)
        self.path = tmp_path / "out" / "events.jsonl"

    def table(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def arrived(self) -> list[Arrival]:
        try:
            return _json_arrivals(self.path.read_bytes())
        except FileNotFoundError:
            return []

    def wire(self, request: Request) -> list[bytes]:
        assert isinstance(request.payload, bytes)
        return [request.payload]


class CapturedStdout:
    """Stands in for sys.stdout: the sink writes bytes to `.buffer` (from a worker thread); text written to
    the text layer by anything else is kept apart so it cannot pass for the sink's output."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.text = io.StringIO()

    def write(self, s: str) -> int:
        return self.text.write(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class StdoutHarness(Harness):
    name = "stdout"

    def __init__(self, tmp_path: Path, metrics: Metrics, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, metrics, request)
        self.out = CapturedStdout()
        self.monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")

    def make(self, **overrides: Any) -> Sink:
        # Here, not in __init__: pytest's output capture sets sys.stdout again when the test call begins.
        self.monkeypatch.setattr(sys, "stdout", self.out)
        return super().make(**overrides)

    def arrived(self) -> list[Arrival]:
        return _json_arrivals(self.out.buffer.getvalue())

    def wire(self, request: Request) -> list[bytes]:
        assert isinstance(request.payload, bytes)
        return [request.payload]


class SyslogHarness(Harness):
    """RFC 5424 over TCP (octet counting) to a real rsyslogd; the format carries no event id, so events are
    told apart by their message text (unique in every test) and container (APP-NAME)."""

    name = "syslog"
    settle = 0.3  # rsyslog writes what it received a little later: give an extra copy time to show
    marks = (pytest.mark.rsyslog,)

    def __init__(self, tmp_path: Path, metrics: Metrics, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, metrics, request)
        self.rsyslog: Rsyslog = request.getfixturevalue("rsyslog")  # skips, or fails under CI, without rsyslogd

    def table(self) -> dict[str, Any]:
        return {"address": [self.rsyslog.address("tcp")], "connect_timeout_secs": 2.0, "write_timeout_secs": 2.0}

    def arrived(self) -> list[Arrival]:
        recs = self.rsyslog.records(lambda r: str(r.get("app", "")).startswith(self.tag + "-"))
        return [Arrival(r["msg"], r["app"]) for r in recs]

    def wire(self, request: Request) -> list[bytes]:
        payload = request.payload
        assert isinstance(payload, SyslogPayload)
        return [m for key in sorted(payload.by_key) for m in payload.by_key[key].messages]


def _kafka() -> type[Harness]:
    from tests.contract.kafka_harness import KafkaHarness  # imports this module: after Harness is defined

    return KafkaHarness


def _logstash() -> type[Harness]:
    from tests.contract.logstash_harness import LogstashHarness  # imports this module: after Harness is defined

    return LogstashHarness


HARNESSES: dict[str, type[Harness]] = {h.name: h for h in (NullHarness, FileHarness, StdoutHarness, SyslogHarness,
                                                           _kafka(), _logstash())}
