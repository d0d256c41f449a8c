"""The durable disk buffer: append-only segment files, one cursor per sink, a small ledger of acks.

Why this shape (after Vector's disk_v2, libbeat's disk queue and Fluent Bit's chunks): records are only
appended, so a crash can damage nothing but the tail, and segments are deleted whole, never rewritten. Each
sink reads at its own pace through its own cursor, so a dead sink holds back no other; a segment goes once
every open cursor acked all of it and retention lets it go.

Durability (`fsync`): a batch's checkpoint goes to `on_safe`, strictly in push order, once the batch
survives a crash: of the process with 'never' (after write()), of the machine with 'always' (after an fsync
covering it, shared by the pushes that arrive while one runs) and 'interval' (at the next fsync tick; push
returns first).

Recovery (`open`): every record's CRC is checked. A damaged record mid-segment is skipped by resync to the
next record whose magic and CRC check out; a torn tail of the newest segment is cut off. Both are counted in
shipper_spool_corrupt_records_total / _bytes_total and logged once; the rest is delivered. A crash
re-delivers what was un-acked, plus at most the acks of the loop iteration in flight.

Records carry their batch's checkpoint. A crash between a write and the fsync that would release it leaves
the record intact (kill -9 keeps the page cache) while the reader's offset never moved: open() fsyncs such
records and hands the newest checkpoint per container to `on_safe`, so the readers do not send again what
the spool holds (after a power loss the records are gone, and so is the need to skip them). Only records
above the ledger's `released` seq are decoded (about one fsync interval of writes), and the walk stops at
the first gap: past damage the reader reads again (duplicates, never loss).

Modules: `disk` (DiskSpool: its state, open/close, the write path, cursors, ledger saves), `index` (segments
and event counts), `cursor` (SpoolCursor, the reading walk), `recovery`, `durability` (fsync, checkpoint
release), `room` (when_full, reclaiming, retention). The on-disk format is in ../FORMAT.md.
"""

from shipper.buffer.segment import SpoolReader
from shipper.buffer.spool.cursor import SpoolCursor
from shipper.buffer.spool.disk import DiskSpool

__all__ = ["DiskSpool", "SpoolCursor", "SpoolReader"]
