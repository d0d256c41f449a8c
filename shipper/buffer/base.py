"""The buffer contract.

Readers `push` batches; every sink reads through its own `Cursor` and `ack`s what it delivered. A batch's
checkpoint is handed to `on_safe` once the batch cannot be lost any more: for the memory buffer when every
sink has acked it, for the disk spool once it is written. Only then may a reader's saved offset move.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

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


class Cursor(ABC):
    """One sink's position in the buffer. Batches come in push order; acks must follow the same order."""

    @abstractmethod
    async def next(self) -> tuple[int, Batch]:
        """Wait for the next batch this sink has not read; returns (sequence number, batch)."""

    @abstractmethod
    def ack(self, seq: int) -> None:
        """Everything up to and including `seq` was delivered (or dropped as undeliverable)."""

    def pending(self) -> int:
        """Events pushed that this cursor has not acked yet."""
        return 0


class Buffer(ABC):
    def __init__(self, on_safe: OnSafe) -> None:
        self.on_safe = on_safe

    @abstractmethod
    async def push(self, batch: Batch) -> None:
        """Add a batch; waits while the buffer is full and when_full = 'block'."""

    @abstractmethod
    def cursor(self, name: str) -> Cursor:
        """The cursor of sink `name` (created on first use, resumed from disk for the spool)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Persist what must survive a restart."""

    def stats(self) -> dict[str, int]:
        return {}
