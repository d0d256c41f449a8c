"""The engine around the sink under test: a buffer (memory, or a disk spool in a tmp dir), its cursor, and
SinkRunners reading it; plus the events the tests push and the checks on what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from shipper.buffer.base import Buffer, Cursor
from shipper.buffer.memory import MemoryBuffer
from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, FsyncPolicy, WhenFull
from shipper.event import Batch, Checkpoint, ContainerMeta, Event, Flag, event_id
from shipper.sinks.base import Request, Sink
from shipper.sinks.runner import SinkRunner
from tests.contract.harness import Harness

EXTRAS = ["", " ünïcödé ✓ 日本語", ' "quoted" back\\slash ] bracket\ttab', "\n  at line two\n  at line three"]


def make_batch(meta: ContainerMeta, k: int, n: int) -> Batch:
    """Batch number `k` of `n` events; every message is unique in the test and names its batch and event.
    Checkpoint position `k`, so the order checkpoints are released in shows."""
    events = []
    for i in range(n):
        extra = EXTRAS[(k + i) % len(EXTRAS)]
        fields = {"level": "warn", "k": k} if (k + i) % 5 == 3 else None
        events.append(Event(f"2024-05-01T12:{k // 60 % 60:02d}:{k % 60:02d}.{i:06d}123Z",
                            f"{meta.name} b{k} e{i}{extra}", "stderr" if i % 3 == 2 else "stdout",
                            fields, Flag.MULTILINE if "\n" in extra else 0, seq=i))
    return Batch(meta, events, Checkpoint(meta.id, k))


def make_batches(metas: Sequence[ContainerMeta], count: int, per_batch: int) -> list[Batch]:
    """`count` batches, the containers taking turns."""
    return [make_batch(metas[k % len(metas)], k, per_batch) for k in range(count)]


def messages(batches: Sequence[Batch]) -> list[str]:
    return [e.message for b in batches for e in b.events]


def request_messages(request: Request) -> list[str]:
    return messages(request.batches)


def total(batches: Sequence[Batch]) -> int:
    return sum(len(b) for b in batches)


def tally(h: Harness, batches: Sequence[Batch]) -> Counter[str]:
    """How many times each event arrived. Fails on anything arriving that was never sent, or arriving
    changed: another container, another event id."""
    expected = {ev.message: (b.container, ev) for b in batches for ev in b.events}
    counts: Counter[str] = Counter()
    for a in h.arrived():
        assert a.message in expected, f"{h.name}: an event arrived that was never sent: {a}"
        meta, ev = expected[a.message]
        assert a.container == meta.name, a
        if a.event_id is not None:
            assert a.event_id == event_id(meta.id, ev), a
        counts[a.message] += 1
    return counts


def assert_once(h: Harness, batches: Sequence[Batch], absent: Sequence[str] = ()) -> None:
    """Every event of `batches` except `absent` arrived exactly once; `absent` never did."""
    want = [m for m in messages(batches) if m not in set(absent)]
    if not h.exact:
        assert h.count() == len(want), f"{h.name}: {h.count()} delivered, {len(want)} expected"
        return
    counts = tally(h, batches)
    missing = [m for m in want if counts[m] == 0]
    twice = {m: c for m, c in counts.items() if c > 1}
    assert not missing, f"{h.name}: {len(missing)} events never arrived, e.g. {missing[:3]}"
    assert not twice, f"{h.name}: events arrived more than once: {list(twice.items())[:3]}"
    assert not [m for m in absent if counts[m]], f"{h.name}: an event that must not arrive did"
    assert sum(counts.values()) == len(want)


def arrivals_by_container(h: Harness, meta: ContainerMeta) -> list[str]:
    return [a.message for a in h.arrived() if a.container == meta.name]


class Rig:
    """A buffer feeding the sink under test through its cursor; SinkRunners started on it."""

    def __init__(self, harness: Harness, kind: str, directory: Path) -> None:
        assert kind in ("memory", "disk")
        self.h = harness
        self.kind = kind
        self.dir = directory
        self.metrics = harness.metrics
        self.safe: list[int] = []  # checkpoint positions handed to on_safe, in the order they came
        self.batches: list[Batch] = []  # pushed, in order: position k is batches[k]
        self.base = 0  # seq of the first batch pushed
        self.buffer: Buffer
        self.cursor: Cursor
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.h.name

    def _on_safe(self, cp: Checkpoint) -> None:
        self.safe.append(int(cp.position))

    async def _open_spool(self) -> DiskSpool:
        cfg = BufferConfig(fsync=FsyncPolicy.NEVER, segment_bytes=2048, max_bytes=1 << 30,
                           when_full=WhenFull.BLOCK)
        spool = DiskSpool(self.dir, cfg, self.metrics, self._on_safe)
        await spool.open()
        return spool

    async def open(self) -> None:
        if self.kind == "memory":
            self.buffer = MemoryBuffer(self._on_safe, self.metrics, 1_000_000, 1 << 28, WhenFull.BLOCK)
        else:
            self.buffer = await self._open_spool()
        self.cursor = self.buffer.cursor(self.name)
        self.base = self.cursor.acked + 1

    async def reopen(self) -> None:
        """The process restarted: close the spool (what App does last), open it again, same cursor name."""
        assert self.kind == "disk"
        await self.buffer.close()
        self.buffer = await self._open_spool()
        self.cursor = self.buffer.cursor(self.name)

    async def push(self, batches: Sequence[Batch]) -> None:
        for b in batches:
            self.batches.append(b)
            await self.buffer.push(b)

    def seq(self, position: int) -> int:
        return self.base + position

    def released(self) -> list[int]:
        """Positions of the batches whose checkpoints the buffer let go as delivered: for the memory buffer
        what it handed to on_safe (at the low-water mark); for the spool (whose on_safe means 'written')
        what lies below the cursor's low-water mark, the position its ledger saves."""
        if self.kind == "memory":
            return list(self.safe)
        return list(range(min(self.cursor.acked - self.base + 1, len(self.batches))))

    def acked(self) -> list[int]:
        """Positions acked so far, below the low-water mark or past a gap."""
        return [k for k in range(len(self.batches)) if self.cursor.window.acked(self.seq(k))]

    def runner(self, sink: Sink) -> SinkRunner:
        return SinkRunner(self.name, sink, self.cursor, self.metrics)

    def start(self, sink: Sink) -> tuple[SinkRunner, asyncio.Task[None]]:
        runner = self.runner(sink)
        task = asyncio.create_task(runner.run(), name=f"contract:{self.name}")
        self.tasks.append(task)
        return runner, task

    @staticmethod
    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), f"the runner ended on its own: {task}"

    async def until(self, cond: Callable[[], bool], timeout: float = 4.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for t in self.tasks:
                if t.done() and not t.cancelled():
                    raise AssertionError(f"the runner died: {t.exception()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}/{self.kind}: not reached in {timeout}s: {what or cond}")
            await asyncio.sleep(0.005)

    async def drained(self, timeout: float = 4.0) -> None:
        await self.until(lambda: self.cursor.pending() == 0, timeout, "every event acked")

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.buffer.close()


MakeRig = Callable[[str], Awaitable[Rig]]
