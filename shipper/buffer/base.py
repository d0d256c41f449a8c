"""The buffer contract.

Readers `push` batches (one container each); every sink reads through its own `Cursor`, which hands out
records (pushed batches, each with a sequence number) in push order, several containers mixed, up to the
size the sink asks for. Acks may come back in any order: the cursor keeps the contiguous low-water mark
(`AckWindow`), and only what is below it counts as delivered, so nothing past a gap is released (libbeat's
ackloop). `rewind()` hands out again everything read and not acked, for a sink that was restarted or
replaced. A batch's checkpoint is handed to `on_safe` once the batch cannot be lost any more: for the
memory buffer when every cursor's low-water mark passed it, for the disk spool once it is written. Only
then may a reader's saved offset move.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shipper.event import Batch, Checkpoint

OnSafe = Callable[[Checkpoint], None]


class Signal:
    """Wakes every task waiting on it; callable from synchronous code (unlike asyncio.Condition)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(slots=True)
class Lease:
    """Records a cursor handed out together, in push order: what one request of a sink carries."""

    seqs: list[int] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    events: int = 0
    bytes: int = 0

    def add(self, seq: int, batch: Batch, nbytes: int) -> None:
        self.seqs.append(seq)
        self.batches.append(batch)
        self.events += len(batch.events)
        self.bytes += nbytes

    def full(self, max_events: int, max_bytes: int) -> bool:
        return self.events >= max_events or self.bytes >= max_bytes

    def __bool__(self) -> bool:
        return bool(self.seqs)


class AckWindow:
    """Acks in any order, one contiguous low-water mark: `low` is the highest seq with every seq up to it
    acked; acks past a gap wait in `ahead` until the gap closes."""

    __slots__ = ("ahead", "low")

    def __init__(self, low: int) -> None:
        self.low = low
        self.ahead: set[int] = set()

    def ack(self, seq: int) -> bool:
        """Record one ack; True when the low-water mark moved."""
        if seq <= self.low or seq in self.ahead:
            return False
        if seq != self.low + 1:
            self.ahead.add(seq)
            return False
        low = seq
        ahead = self.ahead
        while low + 1 in ahead:
            low += 1
            ahead.discard(low)
        self.low = low
        return True

    def ack_range(self, first: int, last: int) -> bool:
        """Ack every seq from `first` to `last` (records that are not there: damaged, cut by a crash)."""
        if last < first or last <= self.low:
            return False
        if first > self.low + 1:
            self.ahead.update(range(first, last + 1))
            return False
        self.skip_to(last)
        return True

    def skip_to(self, seq: int) -> None:
        """Everything up to `seq` is given up on (dropped by when_full, counted): no gap waits for it."""
        if seq <= self.low:
            return
        ahead = self.ahead
        low = seq
        while low + 1 in ahead:
            low += 1
        self.ahead = {s for s in ahead if s > low}
        self.low = low

    def acked(self, seq: int) -> bool:
        return seq <= self.low or seq in self.ahead


class Cursor(ABC):
    """One sink's position in the buffer: hands out records in push order, takes acks in any order."""

    def __init__(self, name: str, acked: int) -> None:
        self.name = name
        self.window = AckWindow(acked)

    @property
    def acked(self) -> int:
        """The low-water mark: every record up to this seq is acked."""
        return self.window.low

    @abstractmethod
    def _take(self, lease: Lease, max_events: int, max_bytes: int) -> None:
        """Add to `lease` the next records not handed out (acked ones skipped), without waiting, until it is
        full: a record is never split, and the first one is taken whatever its size."""

    @abstractmethod
    async def _more(self) -> None:
        """Wait until something was pushed (or the buffer changed) since the last `_take`."""

    @abstractmethod
    def _released(self) -> None:
        """The low-water mark moved: let the buffer free what every cursor acked."""

    @abstractmethod
    def rewind(self) -> None:
        """Hand out again, from the low-water mark on, everything not acked (acks past a gap still count)."""

    @abstractmethod
    def pending(self) -> int:
        """Events pushed that this cursor has not acked (below its low-water mark) yet."""

    async def read(self, max_events: int, max_bytes: int, linger: float = 0.0) -> Lease:
        """Wait for at least one record, then take records until `max_events` or `max_bytes` is reached,
        waiting up to `linger` seconds for more while it is not (a quiet host still ships promptly)."""
        lease = Lease()
        self._take(lease, max_events, max_bytes)
        while not lease:
            await self._more()
            self._take(lease, max_events, max_bytes)
        if linger > 0 and not lease.full(max_events, max_bytes):
            deadline = time.monotonic() + linger
            while not lease.full(max_events, max_bytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        await self._more()
                except TimeoutError:
                    break
                self._take(lease, max_events, max_bytes)
        return lease

    async def next(self) -> tuple[int, Batch]:
        """One record (tools and tests)."""
        lease = await self.read(1, 1)
        return lease.seqs[0], lease.batches[0]

    def ack(self, seqs: int | Iterable[int]) -> None:
        """These records were delivered (or given up on, counted): any order, each any number of times."""
        window = self.window
        moved = False
        for seq in (seqs,) if isinstance(seqs, int) else seqs:
            moved |= window.ack(seq)
        if moved:
            self._released()


class Buffer(ABC):
    def __init__(self, on_safe: OnSafe) -> None:
        self.on_safe = on_safe

    @abstractmethod
    async def push(self, batch: Batch) -> None:
        """Add a batch; waits while the buffer is full and when_full = 'block'."""

    @abstractmethod
    def cursor(self, name: str) -> Cursor:
        """The cursor of sink `name` (created on first use, resumed from disk for the spool)."""

    @abstractmethod
    def remove_cursor(self, name: str) -> None:
        """Sink `name` is gone: its cursor no longer holds anything back."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Persist what must survive a restart."""

    def stats(self) -> dict[str, int]:
        return {}
