"""Drives one sink: reads its cursor into requests, keeps up to `max_in_flight` of them in flight, retries
each on its own backoff, and acks the buffer. The only place retries live.

After libbeat's pipeline (consumer -> output -> ackloop) and Vector's sink driver: the reading loop takes a
free slot, reads a lease of records (several containers mixed, up to `batch_max_events`/`batch_max_bytes`,
waiting up to `linger_secs` for a full one), has the sink encode it once, and hands it to a task of its own
that sends it until it is delivered, refused for good, or given up. Each task acks its lease when done;
acks come back in any order and the cursor keeps the contiguous low-water mark, so a checkpoint (and with
it a reader's offset) never moves past a request still in flight. A request failing with
`RetryableSinkError` (an outage) is retried for as long as it takes; one failing with anything else (a
bug, not an outage) is given up after `max_unexpected_errors` tries, counted and logged with the time
window and containers it held, so `shipper replay` can send it again: one poison request cannot stall a
sink. Ordering: with `max_in_flight = 1` requests go one at a time, so order per container holds; with
more, a request retried after a failure can land after requests read after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from shipper.backoff import Backoff, pause
from shipper.buffer.base import Cursor, Lease
from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.sinks.base import Request, Sink, pick
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.sinks")
FAILING_AFTER_ATTEMPTS = 5  # a request retried this many times in a row turns the state from 'retrying' to 'failing'


@dataclass(slots=True)
class Delivery:
    """What became of a request's events."""

    delivered: int = 0
    rejected: int = 0  # refused by the destination for good (FatalSinkError, Partial.rejected)
    failed: int = 0  # given up: unexpected errors, or max_attempts reached (replay)


class SinkRunner:
    def __init__(self, name: str, sink: Sink, cursor: Cursor | None, metrics: Metrics) -> None:
        """`cursor` is None when requests are handed to `deliver` directly (replay)."""
        self.name = name
        self.sink = sink
        self.cursor = cursor
        self.metrics = metrics
        self.state = ""
        self.last_error = ""
        self.last_success = 0.0
        self.sent_events = 0
        self._retrying: dict[int, int] = {}  # id of a request in retry -> its attempts so far
        self._ids = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0  # requests in flight
        self._set_state("starting")

    # --- state ------------------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            tel.sink_state(self.metrics, self.name, state)

    def _update_state(self) -> None:
        attempts = max(self._retrying.values(), default=0)
        self._set_state("up" if not attempts else "failing" if attempts >= FAILING_AFTER_ATTEMPTS else "retrying")

    @property
    def in_flight(self) -> int:
        return self._busy

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self, max_attempts: int | None = None) -> None:
        """Start the sink and check it, retrying any failure: a destination that is down at start, or a sink
        bug, must not end the daemon. With `max_attempts` (replay), the last error is raised after that many
        failed attempts instead."""
        cfg = self.sink.config
        backoff = Backoff(cfg.retry_initial_secs, cfg.retry_max_secs)
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.sink.start()
                if cfg.healthcheck:
                    await self.sink.healthcheck()
                break
            except Exception as e:
                self.last_error = repr(e)
                if max_attempts is not None and attempts >= max_attempts:
                    raise
                delay = backoff.next_delay()
                self._set_state("failing" if backoff.attempt >= FAILING_AFTER_ATTEMPTS else "retrying")
                tel.sink_retry(self.metrics, self.name, e, backoff.attempt, delay, "start")
                await pause(delay)
        self._set_state("up")

    async def run(self) -> None:
        """Start the sink, then read, send and ack until cancelled; cancelling abandons the requests in flight
        (not acked: the buffer hands them out again). A restarted run resumes from the cursor's low-water mark."""
        assert self.cursor is not None
        cursor = self.cursor
        cfg = self.sink.config
        slots = asyncio.Semaphore(cfg.max_in_flight)
        cursor.rewind()
        try:
            await self.start()
            while True:
                await slots.acquire()
                try:
                    lease = await cursor.read(cfg.batch_max_events, cfg.batch_max_bytes, cfg.linger_secs)
                except BaseException:
                    slots.release()
                    raise
                if cfg.max_in_flight == 1:  # no task: a fast sink drains the buffer without a switch per request
                    await self._ship(lease, slots)
                    continue
                task = asyncio.create_task(self._ship(lease, slots), name=f"sink:{self.name}:request")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _ship(self, lease: Lease, slots: asyncio.Semaphore) -> None:
        assert self.cursor is not None
        self._busy += 1
        try:
            try:
                request = self.sink.encode(lease.batches)
            except Exception as e:  # encoding is deterministic: it would fail the same way every time
                tel.request_given_up(self.metrics, self.name, lease.batches, lease.events, e, "encode_failed")
            else:
                await self.deliver(request)
            self.cursor.ack(lease.seqs)
        finally:
            self._busy -= 1
            slots.release()

    # --- one request ------------------------------------------------------------------------------------

    async def deliver(self, request: Request, max_attempts: int | None = None) -> Delivery:
        """Send until every event is delivered, refused for good, or given up (after `max_unexpected_errors`
        unexpected errors, or, when given, `max_attempts` failed sends: replay reports those)."""
        cfg = self.sink.config
        done = Delivery()
        backoff = Backoff(cfg.retry_initial_secs, cfg.retry_max_secs)
        unexpected = attempts = 0
        self._ids += 1
        rid = self._ids
        try:
            while True:
                attempts += 1
                try:
                    partial = await self.sink.send(request)
                except FatalSinkError as e:
                    self.last_error = repr(e)
                    tel.sink_rejected(self.metrics, self.name, request.events, e)
                    done.rejected += request.events
                    return done
                except Exception as e:  # RetryableSinkError is an outage; anything else a bug, retried a few times
                    error: BaseException = e
                    if not isinstance(e, RetryableSinkError):
                        unexpected += 1
                        if unexpected >= cfg.max_unexpected_errors:
                            tel.request_given_up(self.metrics, self.name, request.batches, request.events, e,
                                                 "sink_error")
                            self.last_error = repr(e)
                            done.failed += request.events
                            return done
                        error = RetryableSinkError(f"unexpected {type(e).__name__}: {e}")
                    if max_attempts is not None and attempts >= max_attempts:
                        self.last_error = repr(error)
                        done.failed += request.events
                        return done
                    await self._retry(rid, backoff, error)
                    continue
                if partial is None:
                    self._delivered(request.events)
                    done.delivered += request.events
                    return done
                retry, rejected = list(partial.retry), list(partial.rejected)
                self._delivered(request.events - len(retry) - len(rejected))
                done.delivered += request.events - len(retry) - len(rejected)
                if rejected:
                    tel.sink_rejected(self.metrics, self.name, len(rejected), FatalSinkError(partial.reason))
                    done.rejected += len(rejected)
                if not retry:
                    return done
                try:
                    request = self.sink.subset(request, sorted(retry))
                except Exception as e:  # a sink bug: the rest can never be built, so it is given up
                    tel.request_given_up(self.metrics, self.name, pick(request.batches, retry), len(retry), e,
                                         "sink_error")
                    self.last_error = repr(e)
                    done.failed += len(retry)
                    return done
                if max_attempts is not None and attempts >= max_attempts:
                    done.failed += request.events
                    return done
                await self._retry(rid, backoff, RetryableSinkError(
                    f"{len(retry)} of the request's events to send again: {partial.reason or 'partial'}"))
        finally:
            if self._retrying.pop(rid, None) is not None:
                self._update_state()

    async def _retry(self, rid: int, backoff: Backoff, error: BaseException) -> None:
        self.last_error = repr(error)
        delay = backoff.next_delay()
        self._retrying[rid] = backoff.attempt
        self._update_state()
        tel.sink_retry(self.metrics, self.name, error, backoff.attempt, delay)
        await pause(delay)

    def _delivered(self, n: int) -> None:
        if n <= 0:
            return
        self.last_success = time.time()
        self.sent_events += n
        self.metrics.inc("shipper_events_sent_total", n, sink=self.name)
        if not self._retrying:
            self._set_state("up")

    def status(self) -> dict[str, object]:
        pending = self.cursor.pending() if self.cursor else 0
        return {"state": self.state, "in_flight": self.in_flight, "sent_events": self.sent_events,
                "pending_events": pending, "last_error": self.last_error, "last_success": self.last_success,
                **self.sink.details()}
