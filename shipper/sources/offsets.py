"""Where each container's log was read up to, kept in one JSON file so a restart resumes without loss.

Positions move only when the buffer says a batch is safe (`commit`, from its on_safe callback), so what is
on disk never runs ahead of what was delivered or spooled. Writes are atomic (temporary file, fsync,
rename, fsync of the directory): a crash leaves the old file or the new one, never half of one. A file
that cannot be read is logged and treated as empty: reading again from the start (or from the end, per
`docker.start_at`) is better than not starting at all.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson

from shipper.atomicfile import Snapshots
from shipper.event import Checkpoint

log = logging.getLogger("shipper.offsets")

FILE_NAME = "offsets.json"
VERSION = 1
_FORGOTTEN_KEEP = 10_000  # late commits of removed containers are ignored; remember this many ids


class OffsetStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self._cps: dict[str, Checkpoint] = {}
        self._forgotten: dict[str, None] = {}  # an ordered set, oldest first
        self._dirty = False
        self._file = Snapshots(self.path)
        self._failing = False  # the last write failed (logged once per outage)

    def load(self) -> None:
        """Read the saved positions; a missing file is a first start, a corrupt one is logged and ignored."""
        self._cps = {}
        self._dirty = False
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("cannot read offsets, starting without them path=%s error=%r", self.path, e)
            return
        try:
            doc = orjson.loads(raw)
            entries = doc["containers"]
            if not isinstance(entries, dict):
                raise TypeError("'containers' is not an object")
            cps = {}
            for cid, entry in entries.items():
                pos = entry["position"]
                fid = entry.get("file_id", "")
                streams = entry.get("streams")
                if isinstance(pos, bool) or not isinstance(pos, int | str) or not isinstance(fid, str) or (
                        streams is not None and not isinstance(streams, dict)):
                    raise TypeError(f"bad entry for {cid!r}: {entry!r:.200}")
                cps[cid] = Checkpoint(cid, pos, fid, streams)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            log.error("offsets file is corrupt, starting without it (logs are re-read per docker.start_at) "
                      "path=%s error=%s", self.path, e)
            return
        self._cps = cps

    def get(self, container_id: str) -> Checkpoint | None:
        return self._cps.get(container_id)

    def all(self) -> dict[str, Checkpoint]:
        return dict(self._cps)

    def replace_all(self, cps: dict[str, Checkpoint]) -> None:
        """Hold exactly `cps` (the containers a worker owns, gathered from every worker's file)."""
        self._cps = dict(cps)
        self._dirty = True

    def commit(self, cp: Checkpoint) -> None:
        """Record a safe position; one behind the saved one for the same file is ignored (late ack)."""
        if cp.container_id in self._forgotten:
            return
        old = self._cps.get(cp.container_id)
        if old is not None and old.file_id == cp.file_id:
            if old.position == cp.position and old.streams == cp.streams:
                return
            if type(old.position) is type(cp.position) and cp.position < old.position:  # type: ignore[operator]
                return
        self._cps[cp.container_id] = Checkpoint(cp.container_id, cp.position, cp.file_id, cp.streams)
        self._dirty = True

    def forget(self, container_id: str) -> None:
        """The container is gone: drop its position and ignore late commits of its last batches."""
        self._forgotten[container_id] = None
        if len(self._forgotten) > _FORGOTTEN_KEEP:
            del self._forgotten[next(iter(self._forgotten))]
        if self._cps.pop(container_id, None) is not None:
            self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def snapshot(self) -> tuple[int, bytes] | None:
        """What to write, if anything changed (taken on the event loop; cheap: one orjson.dumps)."""
        if not self._dirty:
            return None
        doc: dict[str, Any] = {
            "version": VERSION,
            "containers": {cid: {"position": cp.position, "file_id": cp.file_id}
                           | ({"streams": cp.streams} if cp.streams else {})
                           for cid, cp in self._cps.items()},
        }
        self._dirty = False
        return self._file.take(), orjson.dumps(doc)

    def write(self, snap: tuple[int, bytes]) -> bool:
        """Write a snapshot (from any thread); False (logged, retried at the next flush) when the disk refuses."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._file.write(snap[1], True, snap[0])
        except OSError as e:
            if not self._failing:  # once per outage: a full disk must not flood the log
                self._failing = True
                log.error("cannot save offsets (will retry every flush; logged once until it works) path=%s "
                          "error=%r", self.path, e)
            return False
        if self._failing:
            self._failing = False
            log.warning("offsets saved again path=%s", self.path)
        return True

    def flush(self) -> bool:
        """Write the file now if anything changed (at start and at shutdown)."""
        snap = self.snapshot()
        if snap is None:
            return True
        if not self.write(snap):
            self._dirty = True
            return False
        return True

    async def flush_async(self) -> bool:
        """The same with the write and its fsyncs in a worker thread, so the event loop never waits."""
        snap = self.snapshot()
        if snap is None:
            return True
        if not await asyncio.to_thread(self.write, snap):
            self._dirty = True
            return False
        return True
