"""ECS JSON lines in a local file, one event a line, rotated by size (path, path.1, ... path.N)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch
from shipper.schema import doc
from shipper.sinks.base import Request, Sink, SinkBase, SinkContext
from shipper.sinks.ecs import JsonLinesEncoder
from shipper.telemetry import events as tel


@dataclass(frozen=True)
class FileConfig(SinkBase):
    path: str = doc("", "the file to write (default: <state dir>/events.jsonl)")
    max_bytes: int = doc(100 * 1024 * 1024, "rotate when the file would grow past this (0: never)")
    max_files: int = doc(5, "rotated files kept beside the live one")
    fsync: bool = doc(False, "fsync after every batch")

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.max_bytes < 0:
            raise ConfigError(f"{key}.max_bytes", "must not be negative")


class FileSink(Sink):
    Config = FileConfig
    config: FileConfig

    def __init__(self, config: FileConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.path = config.path or str(context.state_dir / "events.jsonl")
        self.encoder = JsonLinesEncoder()
        self._fd = -1
        self._size = 0
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except OSError as e:
            raise RetryableSinkError(f"cannot open {self.path}: {e}") from e

    def _open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._cut_torn_line()

    def _cut_torn_line(self) -> None:
        """A crash mid-write leaves a last line without its newline. Its batch was never acked, so it is sent
        again whole: cut the fragment, or the next event would be glued onto it."""
        if self._size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(max(self._size - 1, 0))
            if f.read(1) == b"\n":
                return
            keep = 0
            pos = self._size
            while pos > 0 and not keep:
                start = max(pos - 65536, 0)
                f.seek(start)
                chunk = f.read(pos - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                pos = start
        os.truncate(self.path, keep)
        tel.torn_output_cut(self.context.metrics, self.context.name, self.path, self._size - keep)
        self._size = keep

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.config.max_files > 0:
            for k in range(self.config.max_files - 1, 0, -1):
                src = f"{self.path}.{k}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{k + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0

    def encode(self, batches: list[Batch]) -> Request:
        return Request(batches, self.encoder.encode(batches))

    async def send(self, request: Request) -> None:
        async with self._lock:  # requests in flight append one after another, whole
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._append, request.payload))
            try:
                await asyncio.shield(self._writing)  # cancelled, the write still finishes before close()
            except OSError as e:
                raise RetryableSinkError(f"cannot write {self.path}: {e}") from e

    def _append(self, data: bytes) -> None:
        """In a worker thread: a write, a rotation or an fsync must not stall the event loop."""
        if self._fd < 0:
            self._open()
        if self.config.max_bytes and self._size and self._size + len(data) > self.config.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)
        if self.config.fsync:
            os.fsync(self._fd)

    async def close(self) -> None:
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        async with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
