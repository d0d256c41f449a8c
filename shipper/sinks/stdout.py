"""ECS JSON lines on standard output."""

from __future__ import annotations

import sys

from shipper.config import SinkBase
from shipper.event import Batch, JsonLinesEncoder
from shipper.sinks.base import Sink, SinkContext


class StdoutSink(Sink):
    def __init__(self, config: SinkBase, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = JsonLinesEncoder()

    async def send(self, batch: Batch) -> None:
        out = sys.stdout.buffer
        out.write(self.encoder.encode_batch(batch))
        out.flush()
