from __future__ import annotations

import asyncio
from pathlib import Path

from shipper.buffer.memory import MemoryBuffer
from shipper.config import SinkBase, WhenFull
from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.sinks.base import Sink, SinkContext
from shipper.sinks.runner import Backoff, SinkRunner
from shipper.telemetry.metrics import Metrics

META = ContainerMeta(id="c", name="n")


class FlakySink(Sink):
    """Fails on purpose: the fault we need (a sink refusing N times) on demand."""

    def __init__(self, failures: list[type[Exception] | None]) -> None:
        super().__init__(SinkBase(type="flaky", retry_initial_secs=0.001, retry_max_secs=0.002),
                         SinkContext("flaky", Path("/tmp"), "h", Metrics()))
        self.failures = failures
        self.delivered: list[str] = []

    async def send(self, batch: Batch) -> None:
        if self.failures:
            exc = self.failures.pop(0)
            if exc is not None:
                raise exc("nope")
        self.delivered += [e.message for e in batch.events]


async def _run(sink: FlakySink, batches: int) -> tuple[SinkRunner, list[int], Metrics]:
    m = Metrics()
    safe: list[int] = []
    buf = MemoryBuffer(lambda cp: safe.append(int(cp.position)), m, 1000, 1 << 20, WhenFull.BLOCK)
    runner = SinkRunner("flaky", sink, buf.cursor("flaky"), m)
    task = asyncio.create_task(runner.run())
    for i in range(batches):
        await buf.push(Batch(META, [Event("t", f"m{i}")], Checkpoint("c", i)))
    for _ in range(200):
        if len(safe) == batches:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    return runner, safe, m


async def test_retryable_errors_are_retried_in_order() -> None:
    sink = FlakySink([None, RetryableSinkError, RetryableSinkError, None])
    runner, safe, m = await _run(sink, 3)
    assert sink.delivered == ["m0", "m1", "m2"]
    assert safe == [0, 1, 2]
    assert m.get("shipper_sink_retries_total") == 2
    assert m.get("shipper_events_sent_total") == 3
    assert runner.state == "up"


async def test_fatal_error_drops_counts_and_moves_on() -> None:
    sink = FlakySink([None, FatalSinkError, None])
    _, safe, m = await _run(sink, 3)
    assert sink.delivered == ["m0", "m2"]
    assert safe == [0, 1, 2]
    assert m.get("shipper_events_dropped_total") == 1


async def test_state_turns_failing_after_repeated_errors() -> None:
    sink = FlakySink([RetryableSinkError] * 1000)
    m = Metrics()
    buf = MemoryBuffer(lambda cp: None, m, 1000, 1 << 20, WhenFull.BLOCK)
    runner = SinkRunner("flaky", sink, buf.cursor("flaky"), m)
    task = asyncio.create_task(runner.run())
    await buf.push(Batch(META, [Event("t", "x")]))
    await asyncio.sleep(0.2)
    assert runner.state == "failing"
    assert m.get("shipper_sink_state", sink="flaky") == 2
    assert "nope" in runner.status()["last_error"]  # type: ignore[operator]
    task.cancel()


def test_backoff_is_capped_with_jitter() -> None:
    b = Backoff(0.5, 4.0)
    delays = [b.next_delay() for _ in range(10)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0
    b.reset()
    assert b.next_delay() <= 0.5


async def test_unexpected_exception_is_retried_not_fatal_to_the_daemon() -> None:
    sink = FlakySink([None, KeyError, None])
    runner, safe, m = await _run(sink, 2)
    assert m.get("shipper_sink_retries_total") == 1
    assert sink.delivered == ["m0", "m1"]
    assert safe == [0, 1]
    assert "unexpected KeyError" in runner.last_error
