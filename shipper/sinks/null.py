"""Counts and discards: the end of the line for benchmarks. With `encode = true` it builds the ECS JSON
of every event first, so a benchmark pays what a JSON sink pays."""

from __future__ import annotations

from dataclasses import dataclass

from shipper.event import Batch
from shipper.schema import doc
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder


@dataclass(frozen=True)
class NullConfig(SinkBase):
    encode: bool = doc(False, "encode every event as ECS JSON, then discard it (what a JSON sink pays)")


class NullSink(Sink):
    Config = NullConfig
    config: NullConfig

    def __init__(self, config: NullConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = JsonLinesEncoder() if config.encode else None

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches) if self.encoder is not None else None)

    async def send(self, request: Request) -> None:
        return None
