"""The sink's failure paths that need no receiver: nothing listening must mean RetryableSinkError."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shipper.errors import RetryableSinkError
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.syslog.sink import SyslogConfig, SyslogSink
from shipper.telemetry.metrics import Metrics

BATCH = Batch(ContainerMeta(id="abc", name="n", host="h"), [Event("2024-05-01T00:00:00Z", "m")])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def sink(tmp_path: Path, **table: object) -> SyslogSink:
    cfg = build(SyslogConfig, {"type": "syslog", **table}, "sinks.s")
    return SyslogSink(cfg, SinkContext("s", tmp_path, "host", Metrics()))


async def test_refused_tcp_is_retryable(tmp_path: Path) -> None:
    s = sink(tmp_path, address=f"tcp://127.0.0.1:{closed_port()}", connect_timeout_secs=2)
    with pytest.raises(RetryableSinkError, match="ConnectionRefusedError"):
        await s.send(s.encode([BATCH]))
    with pytest.raises(RetryableSinkError):
        await s.healthcheck()


async def test_every_address_is_tried_and_named(tmp_path: Path) -> None:
    a = closed_port()
    s = sink(tmp_path, address=[f"tcp://127.0.0.1:{a}", f"unix://{tmp_path}/missing.sock"])
    with pytest.raises(RetryableSinkError) as info:
        await s.send(s.encode([BATCH]))
    assert f"127.0.0.1:{a}" in str(info.value) and "missing.sock" in str(info.value)


async def test_missing_tls_files_are_reported_at_start(tmp_path: Path) -> None:
    s = sink(tmp_path, address="tls://127.0.0.1:6514", tls_ca=str(tmp_path / "nope.pem"))
    with pytest.raises(RetryableSinkError, match="tls_ca"):
        await s.start()


async def test_empty_batch_needs_no_connection(tmp_path: Path) -> None:
    s = sink(tmp_path, address=f"tcp://127.0.0.1:{closed_port()}")
    await s.send(s.encode([Batch(BATCH.container, [])]))
    await s.close()
