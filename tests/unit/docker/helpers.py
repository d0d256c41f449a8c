"""Test helper: a consumer for discoveries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shipper.docker.discovery import Change, ContainerDiscovery


class Collector:
    """Consumes a discovery in a task, so a test can wait for changes without cancelling the iterator.

    `on_change` runs inside the consuming task as each change arrives (e.g. to open a log file at once).
    """

    def __init__(self, disc: ContainerDiscovery, on_change: Callable[[Change], None] | None = None) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.seen: list[Change] = []
        self._returned: set[int] = set()
        self._on_change = on_change
        self.task = asyncio.create_task(self._run(disc))

    async def _run(self, disc: ContainerDiscovery) -> None:
        async for ch in disc:
            if self._on_change is not None:
                self._on_change(ch)
            self.seen.append(ch)
            self.queue.put_nowait(ch)

    async def take(self, n: int = 1, timeout: float = 5.0) -> list[Change]:
        out = []
        async with asyncio.timeout(timeout):
            for _ in range(n):
                out.append(await self.queue.get())
        return out

    async def until(self, pred: Callable[[Change], bool], timeout: float = 15.0) -> Change:
        """The first change matching `pred` not returned before, from all seen so far or still to come
        (a shared daemon also reports other tests' containers, in any order)."""
        async with asyncio.timeout(timeout):
            while True:
                for i, ch in enumerate(self.seen):
                    if i not in self._returned and pred(ch):
                        self._returned.add(i)
                        return ch
                await self.queue.get()

    async def nothing(self, secs: float = 0.3) -> None:
        await asyncio.sleep(secs)
        left = []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        assert not left, [(c.kind, c.info.meta.name if c.info else None) for c in left]
        assert not self.task.done()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
