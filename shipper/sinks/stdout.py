"""ECS JSON lines on standard output.

The workers of one shipper (`[pipeline] workers`) share the supervisor's standard output. A pipe keeps a
write whole only up to PIPE_BUF (4 KiB), and a journald stream socket not at all: two workers writing requests
at once would splice one's lines into the middle of the other's. Each request is written under an exclusive
lock of a file in the state dir, which every worker shares; one process takes it uncontended.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys

from shipper.event import Batch
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder

log = logging.getLogger("shipper.sinks.stdout")
LOCK_FILE = "stdout.lock"


def _write(data: bytes, lock: int) -> None:
    if lock >= 0:
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
    finally:
        if lock >= 0:
            fcntl.flock(lock, fcntl.LOCK_UN)


class StdoutSink(Sink):
    def __init__(self, config: SinkBase, context: SinkContext) -> None:
        super().__init__(config, context)
        self.encoder = JsonLinesEncoder()
        self._lock = asyncio.Lock()
        self._lock_fd = -1  # the file whose flock the workers' writes take turns on
        self._writing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Without a lock file (a check or a replay run where the state dir cannot be written) one process
        writes alone anyway: said, not fatal."""
        if self._lock_fd >= 0:
            return
        path = self.context.state_dir / LOCK_FILE
        try:
            self._lock_fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("stdout sink writes without its lock sink=%s path=%s error=%s (several workers could "
                        "then interleave their lines)", self.context.name, path, e)

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches))

    async def send(self, request: Request) -> None:
        async with self._lock:  # a pipe read slowly must not stall the event loop; requests stay whole
            self._writing = asyncio.ensure_future(asyncio.to_thread(_write, request.payload, self._lock_fd))
            await asyncio.shield(self._writing)  # cancelled, the write goes on in its thread

    async def close(self) -> None:
        if self._writing is not None and not self._writing.done():
            return  # a write still waits for the reader: its lock stays open until the process ends
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)
