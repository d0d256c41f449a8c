"""ECS JSON lines on standard output."""

from __future__ import annotations

import sys

from shipper.event import Batch, JsonLinesEncoder
from shipper.sinks.base import Sink


class StdoutSink(Sink):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.encoder = JsonLinesEncoder()

    async def send(self, batch: Batch) -> None:
        out = sys.stdout.buffer
        out.write(self.encoder.encode_batch(batch))
        out.flush()
