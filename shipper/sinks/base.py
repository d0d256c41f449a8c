"""The one interface every sink implements.

A sink only delivers: `send(batch)` returns once the batch is delivered as far as its protocol can tell,
or raises `RetryableSinkError` (the runner backs off and sends the same batch again) or `FatalSinkError`
(the batch can never succeed: the runner counts it as dropped and moves on). Retries, backoff and buffer
acks live in `shipper.sinks.runner`, not here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shipper.config import SinkBase
from shipper.event import Batch
from shipper.telemetry.metrics import Metrics


@dataclass(frozen=True)
class SinkContext:
    """What a sink may know about the daemon around it."""

    name: str
    state_dir: Path
    host_name: str
    metrics: Metrics


class Sink(ABC):
    Config: ClassVar[type[SinkBase]] = SinkBase

    def __init__(self, config: SinkBase, context: SinkContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or files. May raise RetryableSinkError; the runner retries."""

    @abstractmethod
    async def send(self, batch: Batch) -> None:
        """Deliver every event of `batch`, or raise a SinkError."""

    async def healthcheck(self) -> None:  # noqa: B027 - optional hook
        """Raise a SinkError when the destination cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release what start() opened."""
