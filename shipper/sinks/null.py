"""Counts and discards: the end of the line for benchmarks."""

from __future__ import annotations

from shipper.event import Batch
from shipper.sinks.base import Sink


class NullSink(Sink):
    async def send(self, batch: Batch) -> None:
        return None
