"""The interface both log readers share (json-file on disk, Engine API stream).

A source reads one container's log from where its checkpoint says, rebuilds events through a
`LineAssembler`, and hands them to `emit` in batches; `emit` is the pipeline's bounded push, so a full
buffer slows reading down rather than growing memory. Each batch carries the checkpoint a restart may resume
from: the position of the first byte not yet part of an emitted event (an open multi-line or partial event
is re-read after a restart, never lost).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shipper.config import Config
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler

if TYPE_CHECKING:
    from shipper.docker.client import DockerClient
    from shipper.sources.jsonfile.keeper import LogKeeper

Emit = Callable[[Batch], Awaitable[None]]


@dataclass
class SourceContext:
    config: Config
    metrics: Metrics
    emit: Emit
    docker: DockerClient | None = None  # the Engine API, for ApiSource; None with discovery = "files"
    # The app's current client, asked at every use: the app replaces (and closes) its client when discovery
    # restarts, and a reader must not keep a closed one. Wins over `docker` when set.
    current_docker: Callable[[], DockerClient | None] | None = None
    keeper: LogKeeper | None = None  # json-file logs held open since their creation (a --rm container's)

    def docker_client(self) -> DockerClient | None:
        return self.current_docker() if self.current_docker is not None else self.docker


class LogSource(ABC):
    def __init__(self, info: ContainerInfo, ctx: SourceContext, resume: Checkpoint | None) -> None:
        self.info = info
        self.ctx = ctx
        self.resume = resume
        self._label = info.meta.name or info.meta.id[:12]  # in log lines and metric labels
        self._asm = LineAssembler(self._label, ctx.config, ctx.metrics)
        # set from other tasks (discovery, shutdown); the reading task acts on them when _wake fires
        self._wake = asyncio.Event()
        self._done = asyncio.Event()  # run() has returned
        self._running = False
        self._emitting = False  # a push is in flight (if cancelled there, close() must not move past it)
        self._stop_pending = False
        self._removed = False
        self._closing = False

    @property
    def meta(self) -> ContainerMeta:
        return self.info.meta

    @abstractmethod
    async def run(self) -> None:
        """Read and emit until the container is removed (then return) or the task is cancelled."""

    def renamed(self, meta: ContainerMeta) -> None:
        """The container got a new name: events read from now on carry `meta`."""
        self.info.meta = meta

    def refreshed(self, info: ContainerInfo) -> None:
        """Discovery knows more (an inspect answered): keep it. Only what this reader was built for must not
        change (driver, path, TTY): the app builds a new reader for that. Events carry `info.meta` from now."""
        self.info = info

    def started(self) -> None:
        """A stopped container runs again: a stream reader reconnects now (a file reader just looks)."""
        self._wake.set()

    def stopped(self) -> None:
        """The container exited: read to the end, flush open partial/multi-line events, then wait."""
        self._stop_pending = True
        self._wake.set()

    def removed(self) -> None:
        """The container is gone: read what is left, flush, and return from run()."""
        self._removed = True
        self._wake.set()

    async def close(self) -> None:
        """On shutdown: emit the complete events (open multi-line groups too); a dangling partial line stays
        behind the checkpoint and is re-read after a restart."""
        self._asm.flush_complete()
        self._closing = True
        self._wake.set()
        if self._running:
            await self._done.wait()
        elif not self._emitting and self._has_reader():
            await self._emit()

    def _has_reader(self) -> bool:
        """Whether there is anything to emit from (a file reader that never opened its file has not)."""
        return True

    @abstractmethod
    async def _emit(self) -> None:
        """Hand the assembler's finished events to `ctx.emit`, in batches, with the checkpoint."""

    async def _hand_over(self, out: list[Event], cp: Checkpoint | None, max_events: int) -> None:
        """`out`, just taken from the assembler, to `ctx.emit` in batches of at most `max_events`; the
        checkpoint goes with the last. The size the assembler counted goes with them: whole, or shared by
        events when the take is split (a reader catching up takes a little more than `max_events` at a
        time), so the pieces add up to it exactly."""
        meta = self.meta
        n = len(out)
        size = self._asm.taken_bytes
        self.ctx.metrics.inc("shipper_events_read_total", n, container=self._label)
        self._emitting = True
        given = 0
        for i in range(0, n, max_events):
            last = i + max_events >= n
            share = size - given if last else size * max_events // n
            given += share
            await self.ctx.emit(Batch(meta, out[i:i + max_events], cp if last else None, share))
        self._emitting = False
