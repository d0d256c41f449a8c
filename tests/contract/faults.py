"""Wrappers around a real sink that inject the faults the engine must handle. The fault is injected by the
wrapper; whatever is delivered is delivered by the real sink, to its real destination."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.event import Batch
from shipper.sinks.base import Partial, Request, Sink
from tests.contract.rig import request_messages


class Wrapped(Sink):
    """Delegates everything to `inner`; records every request handed to send()."""

    def __init__(self, inner: Sink) -> None:
        super().__init__(inner.config, inner.context)
        self.inner = inner
        self.sends: list[Request] = []

    async def start(self) -> None:
        await self.inner.start()

    async def healthcheck(self) -> None:
        await self.inner.healthcheck()

    def encode(self, batches: list[Batch]) -> Request:
        return self.inner.encode(batches)

    def subset(self, request: Request, indices: Sequence[int]) -> Request:
        return self.inner.subset(request, indices)

    async def send(self, request: Request) -> Partial | None:
        self.sends.append(request)
        return await self.inner.send(request)

    async def close(self) -> None:
        await self.inner.close()


class FailFirstSend(Wrapped):
    """The first send fails with an outage before anything is written; the real sink then delivers."""

    def __init__(self, inner: Sink, wire: Callable[[Request], list[bytes]]) -> None:
        super().__init__(inner)
        self.wire = wire
        self.first_wire: list[bytes] = []

    async def send(self, request: Request) -> Partial | None:
        if not self.sends:
            self.sends.append(request)
            self.first_wire = self.wire(request)
            raise RetryableSinkError("injected: receiver unreachable")
        return await super().send(request)


class PartialOnce(Wrapped):
    """The first send of a request of several events delivers only the events at even indices (through the
    real sink) and answers Partial(retry=the odd ones); later sends deliver everything."""

    def __init__(self, inner: Sink, descending: bool = False) -> None:
        super().__init__(inner)
        self.descending = descending
        self.delivered: list[str] = []
        self.retried: list[str] = []

    async def send(self, request: Request) -> Partial | None:
        if len(self.sends) > 0 or request.events < 2:
            return await super().send(request)
        self.sends.append(request)
        msgs = request_messages(request)
        keep = list(range(0, request.events, 2))
        rest = list(range(1, request.events, 2))
        outcome = await self.inner.send(self.inner.subset(request, keep))
        assert outcome is None, outcome
        self.delivered = [msgs[i] for i in keep]
        self.retried = [msgs[i] for i in rest]
        return Partial(retry=rest[::-1] if self.descending else rest, reason="injected: half a window acked")


class RejectPoison(Wrapped):
    """A request holding the poison event is refused for good: as a whole (FatalSinkError), or that event
    alone (the others delivered through the real sink, Partial(rejected=[it]))."""

    def __init__(self, inner: Sink, poison: str, whole: bool) -> None:
        super().__init__(inner)
        self.poison = poison
        self.whole = whole
        self.rejected: list[Request] = []

    async def send(self, request: Request) -> Partial | None:
        msgs = request_messages(request)
        if self.poison not in msgs:
            return await super().send(request)
        self.sends.append(request)
        self.rejected.append(request)
        if self.whole:
            raise FatalSinkError("injected: 400 Bad Request, mapping conflict")
        bad = msgs.index(self.poison)
        others = [i for i in range(request.events) if i != bad]
        if others:
            outcome = await self.inner.send(self.inner.subset(request, others))
            assert outcome is None, outcome
        return Partial(rejected=[bad], reason="injected: mapping conflict")


class Stuck(Wrapped):
    """Sends holding `message` fail with an outage until the test calls release(); everything else is
    delivered."""

    def __init__(self, inner: Sink, message: str) -> None:
        super().__init__(inner)
        self.message = message
        self.stuck = True
        self.failures = 0

    def release(self) -> None:
        self.stuck = False

    async def send(self, request: Request) -> Partial | None:
        if self.stuck and self.message in request_messages(request):
            self.failures += 1
            raise RetryableSinkError("injected: this one keeps failing")
        return await super().send(request)


class Hold(Wrapped):
    """Requests holding a message of `before` wait on `gate` before they are sent; those holding one of
    `after` are delivered by the real sink, then wait (the answer never comes). `held` is what waits."""

    def __init__(self, inner: Sink, before: set[str], after: set[str]) -> None:
        super().__init__(inner)
        self.before = before
        self.after = after
        self.gate = asyncio.Event()
        self.held: list[Request] = []

    async def send(self, request: Request) -> Partial | None:
        msgs = set(request_messages(request))
        if msgs & self.before:
            self.held.append(request)
            try:
                await self.gate.wait()
            finally:
                self.held.remove(request)
            return await super().send(request)
        outcome = await super().send(request)
        if msgs & self.after:
            self.held.append(request)
            try:
                await self.gate.wait()
            finally:
                self.held.remove(request)
        return outcome


class Slow(Wrapped):
    """Every send waits `delay` first (a slow receiver); close() calls `on_close` first, so a test can see
    what had been released when the sink was closed."""

    def __init__(self, inner: Sink, delay: float, on_close: Callable[[], None]) -> None:
        super().__init__(inner)
        self.delay = delay
        self.on_close = on_close

    async def send(self, request: Request) -> Partial | None:
        await asyncio.sleep(self.delay)
        return await super().send(request)

    async def close(self) -> None:
        self.on_close()
        await super().close()
