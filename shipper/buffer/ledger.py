"""The spool's ledger: each cursor's acked sequence number and the next sequence number to write.

Small JSON, replaced whole (temporary file, then rename), so a crash leaves either the old or the new
ledger, never a mix. A ledger older than the segments only means re-delivery (duplicates, never loss),
which is why it is not fsynced on every ack. `next_seq` keeps sequence numbers growing when every
segment is gone, so a cursor's acked number can never hide new records. `released` is the highest seq
whose checkpoint went to on_safe: after a crash only the records above it are decoded to hand their
checkpoints out again, so a lagging value only costs a little decoding at open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shipper.atomicfile import Snapshots, fsync_dir

__all__ = ["LEDGER_NAME", "LEDGER_VERSION", "Ledger", "fsync_dir"]  # fsync_dir: the spool imports it from here

log = logging.getLogger("shipper.spool")
LEDGER_VERSION = 1
LEDGER_NAME = "ledger.json"


@dataclass
class Ledger:
    path: Path
    next_seq: int = 1
    cursors: dict[str, int] = field(default_factory=dict)  # name -> last acked seq (0: none)
    # segment first seq -> reason -> [records, bytes] already counted, so a restart does not count them again
    damage: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    damaged: bool = False  # the file existed but could not be read
    # highest seq whose checkpoint went to on_safe; None: unknown (no ledger, or an unreadable one)
    released: int | None = None

    @classmethod
    def load(cls, directory: Path) -> Ledger:
        path = directory / LEDGER_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != LEDGER_VERSION:
                raise ValueError(f"unknown ledger version {doc.get('version')!r}")
            cursors = {str(k): int(v) for k, v in doc["cursors"].items()}
            damage = {str(k): {str(r): [int(n) for n in c] for r, c in v.items()}
                      for k, v in (doc.get("damage") or {}).items()}
            next_seq = max(int(doc["next_seq"]), 1)
            # a ledger written before records carried checkpoints: none of its records has one to give
            released = int(doc["released"]) if "released" in doc else next_seq - 1
            return cls(path, next_seq, cursors, damage, released=released)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.error("spool ledger unreadable, cursors restart at the oldest record (duplicates, no loss) "
                      "path=%s error=%r", path, e)
            return cls(path, damaged=True)

    def __post_init__(self) -> None:
        self._file = Snapshots(self.path)

    def snapshot(self) -> tuple[int, bytes]:
        """The ledger as it is now, numbered so that a slower older write cannot replace it."""
        doc: dict[str, object] = {"version": LEDGER_VERSION, "next_seq": self.next_seq,
                                  "cursors": self.cursors, "damage": self.damage}
        if self.released is not None:
            doc["released"] = self.released
        return self._file.take(), orjson.dumps(doc)

    def write(self, snap: tuple[int, bytes], fsync: bool = False) -> None:
        """Write a snapshot (from any thread); raises OSError."""
        self._file.write(snap[1], fsync, snap[0])

    def save(self, fsync: bool = False) -> None:
        self.write(self.snapshot(), fsync)
