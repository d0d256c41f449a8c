"""The interface both log readers share (json-file on disk, Engine API stream).

A source reads one container's log from where its checkpoint says, rebuilds events through a
`LineAssembler`, and hands them to `emit` in batches; `emit` is the pipeline's bounded push, so a full
buffer slows reading down rather than growing memory. Each batch carries the checkpoint a restart may resume
from: the position of the first byte not yet part of an emitted event (an open multi-line or partial event
is re-read after a restart, never lost).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shipper.config import Config
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta
from shipper.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from shipper.docker.client import DockerClient

Emit = Callable[[Batch], Awaitable[None]]


@dataclass
class SourceContext:
    config: Config
    metrics: Metrics
    emit: Emit
    docker: DockerClient | None = None  # the Engine API, for ApiSource; None with discovery = "files"


class LogSource(ABC):
    def __init__(self, info: ContainerInfo, ctx: SourceContext, resume: Checkpoint | None) -> None:
        self.info = info
        self.ctx = ctx
        self.resume = resume

    @property
    def meta(self) -> ContainerMeta:
        return self.info.meta

    @abstractmethod
    async def run(self) -> None:
        """Read and emit until the container is removed (then return) or the task is cancelled."""

    def renamed(self, meta: ContainerMeta) -> None:
        """The container got a new name: events read from now on carry `meta`."""
        self.info.meta = meta

    def started(self) -> None:  # noqa: B027 - optional hook
        """A stopped container runs again: a stream reader reconnects (a file reader just keeps tailing)."""

    @abstractmethod
    def stopped(self) -> None:
        """The container exited: read to the end, flush open partial/multi-line events, then wait."""

    @abstractmethod
    def removed(self) -> None:
        """The container is gone: read what is left, flush, and return from run()."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """On shutdown: emit what is complete; open events stay unread so a restart re-reads them."""
