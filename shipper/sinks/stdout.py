"""ECS JSON lines on standard output."""

from __future__ import annotations

import asyncio
import sys

from shipper.event import Batch
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder


def _write(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


class StdoutSink(Sink):
    def __init__(self, config: SinkBase, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = JsonLinesEncoder()
        self._lock = asyncio.Lock()

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches))

    async def send(self, request: Request) -> None:
        async with self._lock:  # a pipe read slowly must not stall the event loop; requests stay whole
            await asyncio.to_thread(_write, request.payload)
