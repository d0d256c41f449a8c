"""A bounded in-memory buffer with one cursor per sink.

A batch stays until every cursor has acked it; then its checkpoint becomes safe. Bounded by events and by
the bytes the events take in memory; what happens when full is `when_full`: 'block' makes readers wait (Docker keeps
the unread logs on disk meanwhile), 'drop_newest' refuses the incoming batch, 'drop_oldest' evicts the
oldest one even if a sink has not delivered it. Every dropped event is counted.
"""

from __future__ import annotations

import itertools
from collections import deque

from shipper.buffer.base import Buffer, Cursor, Lease, OnSafe, Signal
from shipper.buffer.sizing import batch_bytes
from shipper.config import WhenFull
from shipper.event import Batch
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics


class MemoryCursor(Cursor):
    def __init__(self, buf: MemoryBuffer, name: str) -> None:
        super().__init__(name, buf.head_seq - 1)
        self._buf = buf
        self.read_seq = buf.head_seq  # next seq to hand out

    def _take(self, lease: Lease, max_events: int, max_bytes: int) -> None:
        buf = self._buf
        if self.read_seq < buf.head_seq:  # what we were due to read was evicted (drop_oldest)
            self.read_seq = buf.head_seq
        entries = buf.entries
        window = self.window
        idx = self.read_seq - buf.head_seq
        while idx < len(entries) and not lease.full(max_events, max_bytes):
            seq = buf.head_seq + idx
            idx += 1
            if not window.acked(seq):
                batch, size = entries[idx - 1]
                lease.add(seq, batch, size)
        self.read_seq = buf.head_seq + idx

    async def _more(self) -> None:
        await self._buf.changed.wait()

    def _released(self) -> None:
        self._buf.release()

    def rewind(self) -> None:
        self.read_seq = self.window.low + 1

    def pending(self) -> int:
        buf = self._buf
        start = max(self.window.low + 1 - buf.head_seq, 0)
        return sum(len(b) for b, _ in itertools.islice(buf.entries, start, None))


class MemoryBuffer(Buffer):
    def __init__(self, on_safe: OnSafe, metrics: Metrics, max_events: int, max_bytes: int,
                 when_full: WhenFull) -> None:
        super().__init__(on_safe)
        self.metrics = metrics
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.entries: deque[tuple[Batch, int]] = deque()
        self.head_seq = 0
        self.events = 0
        self.bytes = 0
        self.cursors: dict[str, MemoryCursor] = {}
        self.changed = Signal()

    def cursor(self, name: str) -> MemoryCursor:
        if name not in self.cursors:
            self.cursors[name] = MemoryCursor(self, name)
        return self.cursors[name]

    def remove_cursor(self, name: str) -> None:
        if self.cursors.pop(name, None) is not None:
            self.release()

    def _full(self, incoming: Batch, size: int) -> bool:
        if not self.entries:
            return False  # one batch always fits, however large
        return self.events + len(incoming) > self.max_events or self.bytes + size > self.max_bytes

    async def push(self, batch: Batch) -> None:
        size = batch.size or batch_bytes(batch)  # the reader counted it as it built the events
        if not self.cursors:  # nobody to deliver to: safe at once
            if batch.checkpoint:
                self.on_safe(batch.checkpoint)
            return
        while self._full(batch, size):
            if self.when_full is WhenFull.DROP_NEWEST:
                tel.events_dropped(self.metrics, "buffer_full", len(batch), "drop_newest")
                if batch.checkpoint:
                    self.on_safe(batch.checkpoint)
                return
            if self.when_full is WhenFull.DROP_OLDEST:
                old, _ = self.entries[0]
                tel.events_dropped(self.metrics, "buffer_full", len(old), "drop_oldest")
                self._pop()
                for cur in self.cursors.values():  # given up on, counted: no cursor waits for it
                    cur.window.skip_to(self.head_seq - 1)
                continue
            await self.changed.wait()
        self.entries.append((batch, size))
        self.events += len(batch)
        self.bytes += size
        self._gauges()
        self.changed.fire()

    def _pop(self) -> None:
        batch, size = self.entries.popleft()
        self.head_seq += 1
        self.events -= len(batch)
        self.bytes -= size
        if batch.checkpoint:
            self.on_safe(batch.checkpoint)

    def release(self) -> None:
        """Drop batches every cursor has acked, making their checkpoints safe."""
        if not self.cursors:
            low = self.head_seq + len(self.entries) - 1
        else:
            low = min(c.window.low for c in self.cursors.values())
        freed = False
        while self.entries and self.head_seq <= low:
            self._pop()
            freed = True
        if freed:
            self._gauges()
            self.changed.fire()

    def _gauges(self) -> None:
        self.metrics.set("shipper_buffer_events", self.events)
        self.metrics.set("shipper_buffer_bytes", self.bytes)

    def stats(self) -> dict[str, int]:
        return {"events": self.events, "bytes": self.bytes, "batches": len(self.entries)}
