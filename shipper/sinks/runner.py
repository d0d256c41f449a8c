"""Drives one sink: read its cursor, send, retry with backoff, ack. The only place retries live."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from shipper.buffer.base import Cursor
from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.event import Batch
from shipper.sinks.base import Sink
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.sinks")
FAILING_AFTER_ATTEMPTS = 5  # retrying this many times in a row turns the state from 'retrying' to 'failing'


class Backoff:
    """Exponential backoff with full jitter, capped (as in the AWS architecture blog's 'full jitter')."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        ceiling = min(self.cap, self.initial * (2 ** min(self.attempt - 1, 30)))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class SinkRunner:
    def __init__(self, name: str, sink: Sink, cursor: Cursor | None, metrics: Metrics) -> None:
        """`cursor` is None when batches are handed to `deliver` directly (replay)."""
        self.name = name
        self.sink = sink
        self.cursor = cursor
        self.metrics = metrics
        self.state = "starting"
        self.last_error = ""
        self.last_success = 0.0
        self.sent_events = 0
        cfg = sink.config
        self.backoff = Backoff(cfg.retry_initial_secs, cfg.retry_max_secs)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            tel.sink_state(self.metrics, self.name, state)

    async def _retry(self, error: BaseException) -> None:
        self.last_error = repr(error)
        delay = self.backoff.next_delay()
        self._set_state("failing" if self.backoff.attempt >= FAILING_AFTER_ATTEMPTS else "retrying")
        tel.sink_retry(self.metrics, self.name, error, self.backoff.attempt, delay)
        await asyncio.sleep(delay)

    async def start(self) -> None:
        while True:
            try:
                await self.sink.start()
                if self.sink.config.healthcheck:
                    await self.sink.healthcheck()
                break
            except RetryableSinkError as e:
                await self._retry(e)
        self.backoff.reset()
        self._set_state("up")

    async def deliver(self, batch: Batch, max_attempts: int | None = None) -> bool:
        """Send until delivered (True), refused for good (False, counted as dropped), or, when `max_attempts`
        is given, until that many attempts failed (False: the caller decides; replay reports it)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.sink.send(batch)
            except FatalSinkError as e:
                self.last_error = repr(e)
                tel.events_dropped(self.metrics, "sink_rejected", len(batch), self.name)
                return False
            except Exception as e:  # anything else is retried too: a sink bug must not kill the daemon
                if not isinstance(e, RetryableSinkError):
                    e = RetryableSinkError(f"unexpected {type(e).__name__}: {e}")
                if max_attempts is not None and attempts >= max_attempts:
                    self.last_error = repr(e)
                    return False
                await self._retry(e)
                continue
            self.backoff.reset()
            self._set_state("up")
            self.last_success = time.time()
            self.sent_events += len(batch)
            self.metrics.inc("shipper_events_sent_total", len(batch), sink=self.name)
            return True

    async def run(self) -> None:
        assert self.cursor is not None
        await self.start()
        while True:
            seq, batch = await self.cursor.next()
            await self.deliver(batch)
            self.cursor.ack(seq)

    def status(self) -> dict[str, object]:
        pending = self.cursor.pending() if self.cursor else 0
        return {"state": self.state, "sent_events": self.sent_events, "pending_events": pending,
                "last_error": self.last_error, "last_success": self.last_success}
