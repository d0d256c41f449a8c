"""The driver: requests built from leases, many in flight, each retried on its own, acks in any order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.sinks.base import Partial, Request, Sink, SinkBase, SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics

WEB = ContainerMeta(id="w", name="web")
DB = ContainerMeta(id="d", name="db")

Plan = Callable[[list[str], int], "Partial | None"]  # (messages of the request, attempt) -> outcome or raise


class ScriptedSink(Sink):
    """A sink whose outcomes the test scripts: the faults the engine must handle, on demand."""

    def __init__(self, plan: Plan | None = None, delay: float = 0.0, **cfg: object) -> None:
        base = {"retry_initial_secs": 0.001, "retry_max_secs": 0.002, "linger_secs": 0.0, **cfg}
        super().__init__(SinkBase(type="scripted", **base),  # type: ignore[arg-type]
                         SinkContext("s", Path("/tmp"), "h", Metrics()))
        self.plan = plan
        self.delay = delay
        self.delivered: list[str] = []
        self.requests: list[list[str]] = []
        self.attempts: dict[tuple[str, ...], int] = {}
        self.concurrent = self.peak = 0

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, [e.message for b in batches for e in b.events])

    async def send(self, request: Request) -> Partial | None:
        msgs: list[str] = request.payload
        self.requests.append(msgs)
        key = tuple(msgs)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            outcome = self.plan(msgs, self.attempts[key]) if self.plan else None
        finally:
            self.concurrent -= 1
        skip = set(outcome.retry) | set(outcome.rejected) if outcome else set()
        self.delivered += [m for i, m in enumerate(msgs) if i not in skip]
        return outcome


class Pipeline:
    def __init__(self, sink: ScriptedSink, max_events: int = 1000) -> None:
        self.metrics = Metrics()
        self.safe: list[int] = []
        self.buffer = MemoryBuffer(lambda cp: self.safe.append(int(cp.position)), self.metrics, max_events,
                                   1 << 24, WhenFull.BLOCK)
        self.sink = sink
        self.runner = SinkRunner("s", sink, self.buffer.cursor("s"), self.metrics)
        self.task: asyncio.Task[None] | None = None

    async def push(self, n: int, meta: ContainerMeta = WEB, per_batch: int = 1, start: int = 0) -> None:
        for i in range(start, start + n):
            evs = [Event("t", f"{meta.name}{i}.{j}") for j in range(per_batch)]
            await self.buffer.push(Batch(meta, evs, Checkpoint(meta.id, i)))

    def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run())

    async def until(self, cond: Callable[[], bool], secs: float = 3.0) -> None:
        for _ in range(int(secs / 0.005)):
            if cond():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("condition not reached")

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def fail(exc: type[Exception], times: int, when: Callable[[Sequence[str]], bool] = lambda m: True) -> Plan:
    def plan(msgs: list[str], attempt: int) -> Partial | None:
        if when(msgs) and attempt <= times:
            raise exc("nope")
        return None
    return plan


async def test_requests_mix_containers_up_to_the_size_asked() -> None:
    p = Pipeline(ScriptedSink(batch_max_events=5))
    await p.push(4, WEB, per_batch=2)
    await p.push(2, DB, per_batch=2)
    p.start()
    await p.until(lambda: len(p.safe) == 6)
    await p.stop()
    assert [len(r) for r in p.sink.requests] == [6, 6]  # whole batches: 3 of 2 events reach 5
    assert {m[:2] for m in p.sink.requests[1]} == {"we", "db"}
    assert p.metrics.get("shipper_events_sent_total", sink="s") == 12


async def test_linger_waits_for_a_fuller_request() -> None:
    p = Pipeline(ScriptedSink(batch_max_events=10, linger_secs=0.3))
    p.start()
    await p.push(1)
    await asyncio.sleep(0.05)
    await p.push(1, start=1)
    await p.until(lambda: len(p.safe) == 2)
    await p.stop()
    assert p.sink.requests == [["web0.0", "web1.0"]]


async def test_retryable_errors_are_retried_in_order_and_resend_the_same_request() -> None:
    sink = ScriptedSink(fail(RetryableSinkError, 2, lambda m: "web1.0" in m), batch_max_events=1)
    p = Pipeline(sink)
    await p.push(3)
    p.start()
    await p.until(lambda: len(p.safe) == 3)
    await p.stop()
    assert sink.delivered == ["web0.0", "web1.0", "web2.0"]
    assert sink.requests[1:4] == [["web1.0"]] * 3
    assert p.safe == [0, 1, 2]
    assert p.metrics.get("shipper_sink_retries_total") == 2
    assert p.runner.state == "up"


async def test_fatal_error_drops_counts_and_moves_on() -> None:
    sink = ScriptedSink(fail(FatalSinkError, 99, lambda m: "web1.0" in m), batch_max_events=1)
    p = Pipeline(sink)
    await p.push(3)
    p.start()
    await p.until(lambda: len(p.safe) == 3)
    await p.stop()
    assert sink.delivered == ["web0.0", "web2.0"]
    assert p.metrics.get("shipper_events_dropped_total", reason="sink_rejected", where="s") == 1


async def test_partial_retries_only_what_is_left_and_counts_rejections() -> None:
    def plan(msgs: list[str], attempt: int) -> Partial | None:
        if len(msgs) == 4:
            return Partial(retry=[1, 3], rejected=[2], reason="half a window")
        return None

    sink = ScriptedSink(plan, batch_max_events=4)
    p = Pipeline(sink)
    await p.push(4)
    p.start()
    await p.until(lambda: len(p.safe) == 4)
    await p.stop()
    assert sink.requests == [["web0.0", "web1.0", "web2.0", "web3.0"], ["web1.0", "web3.0"]]
    assert sorted(sink.delivered) == ["web0.0", "web1.0", "web3.0"]
    assert p.metrics.get("shipper_events_sent_total", sink="s") == 3
    assert p.metrics.get("shipper_events_dropped_total", reason="sink_rejected", where="s") == 1


async def test_an_unexpected_error_is_retried_a_few_times_then_given_up() -> None:
    sink = ScriptedSink(fail(KeyError, 99, lambda m: "web1.0" in m), batch_max_events=1, max_unexpected_errors=3)
    p = Pipeline(sink)
    await p.push(3)
    p.start()
    await p.until(lambda: len(p.safe) == 3)
    await p.stop()
    assert sink.attempts[("web1.0",)] == 3
    assert sink.delivered == ["web0.0", "web2.0"]
    assert p.metrics.get("shipper_events_dropped_total", reason="sink_error", where="s") == 1
    assert "KeyError" in p.runner.last_error


async def test_a_stuck_request_does_not_block_the_others_nor_release_past_it() -> None:
    stuck = {"on": True}

    def plan(msgs: list[str], attempt: int) -> Partial | None:
        if "web1.0" in msgs and stuck["on"]:
            raise RetryableSinkError("this one keeps failing")
        return None

    sink = ScriptedSink(plan, batch_max_events=1, max_in_flight=4)
    p = Pipeline(sink)
    await p.push(6)
    p.start()
    await p.until(lambda: {"web0.0", "web2.0", "web3.0", "web4.0", "web5.0"} <= set(sink.delivered))
    assert p.safe == [0]  # the checkpoint stops at the gap: nothing past a request in flight is released
    assert p.runner.state in ("retrying", "failing")
    stuck["on"] = False
    await p.until(lambda: len(p.safe) == 6)
    await p.stop()
    assert p.safe == [0, 1, 2, 3, 4, 5]
    assert p.runner.state == "up"


async def test_requests_go_in_flight_together_up_to_the_limit() -> None:
    sink = ScriptedSink(delay=0.05, batch_max_events=1, max_in_flight=3)
    p = Pipeline(sink)
    await p.push(9)
    p.start()
    await p.until(lambda: len(p.safe) == 9)
    await p.stop()
    assert sink.peak == 3


async def test_one_in_flight_keeps_the_order() -> None:
    sink = ScriptedSink(fail(RetryableSinkError, 3, lambda m: "web2.0" in m), batch_max_events=1)
    p = Pipeline(sink)
    await p.push(5)
    p.start()
    await p.until(lambda: len(p.safe) == 5)
    await p.stop()
    assert sink.peak == 1
    assert sink.delivered == [f"web{i}.0" for i in range(5)]


async def test_state_turns_failing_after_repeated_errors_and_gauges_are_distinct() -> None:
    sink = ScriptedSink(fail(RetryableSinkError, 10_000))
    p = Pipeline(sink)
    assert p.metrics.get("shipper_sink_state", sink="s") == 3  # starting
    await p.push(1)
    p.start()
    await p.until(lambda: p.runner.state == "failing")
    assert p.metrics.get("shipper_sink_state", sink="s") == 2
    assert "nope" in str(p.runner.status()["last_error"])
    await p.stop()


async def test_start_and_healthcheck_failures_of_any_kind_are_retried() -> None:
    class Broken(ScriptedSink):
        def __init__(self) -> None:
            super().__init__()
            self.starts = 0

        async def healthcheck(self) -> None:
            self.starts += 1
            if self.starts < 3:
                raise ValueError("a bug, not an outage")

    sink = Broken()
    p = Pipeline(sink)
    await p.push(1)
    p.start()
    await p.until(lambda: p.safe == [0])
    await p.stop()
    assert sink.starts == 3
    assert p.metrics.get("shipper_sink_retries_total") == 2


async def test_cancelled_requests_are_handed_out_again_by_the_next_run() -> None:
    sink = ScriptedSink(delay=10.0, batch_max_events=1, max_in_flight=2)
    p = Pipeline(sink)
    await p.push(3)
    p.start()
    await p.until(lambda: len(sink.requests) == 2)
    await p.stop()  # a sink restarted: its two requests in flight were never answered
    assert p.safe == []
    sink.delay = 0
    p.start()
    await p.until(lambda: len(p.safe) == 3)
    await p.stop()
    assert sink.delivered == ["web0.0", "web1.0", "web2.0"]
    assert len(sink.requests) == 5  # at most what was in flight came again


async def test_a_sink_that_cannot_build_the_rest_of_a_partial_gives_it_up() -> None:
    class BadSubset(ScriptedSink):
        def subset(self, request: Request, indices: Sequence[int]) -> Request:
            raise IndexError("a bug in the sink")

    sink = BadSubset(lambda msgs, attempt: Partial(retry=[1]) if len(msgs) == 2 else None, batch_max_events=2)
    p = Pipeline(sink)
    await p.push(4)
    p.start()
    await p.until(lambda: len(p.safe) == 4)
    await p.stop()
    assert p.metrics.get("shipper_events_dropped_total", reason="sink_error", where="s") == 2
    assert p.metrics.get("shipper_events_sent_total", sink="s") == 2


async def test_a_cancel_that_wait_for_turns_into_an_error_still_stops_the_runner() -> None:
    """Python 3.11's wait_for, cancelled as the call it waits on fails, raises that failure instead of
    CancelledError (aiokafka's connect does this). The runner must stop anyway, not retry for ever."""
    loop = asyncio.get_running_loop()

    class Connecting(ScriptedSink):
        def __init__(self) -> None:
            super().__init__()
            self.connect: asyncio.Future[None] | None = None
            self.starts = 0

        async def start(self) -> None:
            self.starts += 1
            self.connect = loop.create_future()
            await asyncio.wait_for(self.connect, 10)

    sink = Connecting()
    p = Pipeline(sink)
    await p.push(1)
    p.start()
    await p.until(lambda: sink.connect is not None)
    assert p.task is not None and sink.connect is not None
    p.task.cancel()
    sink.connect.set_exception(OSError("certificate verify failed"))  # in the same turn as the cancel
    done, _ = await asyncio.wait([p.task], timeout=2)
    assert p.task in done and p.task.cancelled()
    assert sink.starts == 1
