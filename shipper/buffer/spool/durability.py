"""When a pushed batch counts as safe: the fsync policy, group commit, and handing checkpoints to `on_safe`
strictly in push order (a reader's offset may move only past what survives the crash the policy covers).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path

from shipper.buffer.base import OnSafe, Signal
from shipper.buffer.ledger import fsync_dir
from shipper.buffer.spool.index import Mark, SegmentIndex
from shipper.errors import SpoolError
from shipper.event import Checkpoint


class Durability(SegmentIndex):
    """Tracks what is written (`_written`), fsynced (`_synced`) and released (`_released_seq`)."""

    directory: Path
    on_safe: OnSafe
    _state: str
    _next_seq: int
    _pending: deque[tuple[Mark, Checkpoint]]  # checkpoints waiting for their record to be durable
    _synced: Mark
    _last_sync: float
    _syncing: bool
    _sync_done: Signal
    _released_seq: int

    def _release(self, mark: Mark) -> None:
        """Hand the checkpoints of everything up to `mark` to on_safe, in push order."""
        pending = self._pending
        while pending and pending[0][0] <= mark:
            self.on_safe(pending.popleft()[1])

    def _safe_in_order(self, cp: Checkpoint | None) -> None:
        """A checkpoint with no data of its own (dropped batch) waits behind the ones pushed before it."""
        if cp is None:
            return
        if self._pending:
            self._pending.append((self._written(), cp))
        else:
            self.on_safe(cp)

    def _mark_synced(self, mark: Mark, seq: int) -> None:
        """Everything up to `mark` (the end of record `seq`) is durable: release its checkpoints."""
        if mark > self._synced:
            self._synced = mark
        self._last_sync = time.monotonic()
        self._release(self._synced)
        self._advance_released(seq)
        self._sync_done.fire()

    def _advance_released(self, seq: int) -> None:
        """Saved in the ledger at the next ack or tick: a lag only means decoding a few more records at open."""
        if seq > self._released_seq:
            self._released_seq = seq

    async def _sync_once(self) -> None:
        """fsync everything written so far (group commit: one fsync covers every push before it)."""
        if self._syncing:
            await self._sync_done.wait()
            return
        active = self._active
        mark = self._written()
        seq = self._next_seq - 1
        if mark <= self._synced:
            self._mark_synced(mark, seq)
            return
        assert active.wfd is not None
        fd = os.dup(active.wfd)  # the sync thread owns its fd: a rotation may close the original meanwhile
        self._syncing = True
        try:
            await asyncio.to_thread(_fsync_close, fd, None if active.dir_synced else active.path.parent)
            active.dir_synced = True
        finally:
            self._syncing = False
            self._sync_done.fire()
        self._mark_synced(mark, seq)

    async def _wait_durable(self, mark: Mark) -> None:
        while self._synced < mark:
            if self._state == "closed":
                raise SpoolError(f"spool {self.directory} closed before the write was made durable")
            try:
                await self._sync_once()
            except OSError as e:
                raise SpoolError(f"cannot fsync spool {self.directory}: {e}") from e


def _fsync(fd: int, directory: Path | None) -> None:
    os.fsync(fd)
    if directory is not None:
        fsync_dir(directory)


def _fsync_close(fd: int, directory: Path | None) -> None:
    try:
        _fsync(fd, directory)
    finally:
        os.close(fd)
