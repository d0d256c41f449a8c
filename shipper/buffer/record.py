"""The payload of a spool record (FORMAT.md beside this file): one batch, its metadata and its checkpoint."""

from __future__ import annotations

import orjson

from shipper.event import Batch, Checkpoint, ContainerMeta, Event


def encode_record(batch: Batch) -> bytes:
    """Serialise a batch for the spool (metadata once, then compact event rows, then the checkpoint).

    The checkpoint rides along so that a restart after a crash can tell the readers how far the spool
    already holds their logs, instead of reading (and sending) it all again.
    """
    rows = [[ev.timestamp, ev.stream, ev.message, ev.fields, ev.flags, ev.seq] for ev in batch.events]
    cp = batch.checkpoint
    if cp is None:
        return orjson.dumps([batch.container.to_dict(), rows, None])
    fields = [cp.container_id, cp.position, cp.file_id] + ([cp.streams] if cp.streams else [])
    return orjson.dumps([batch.container.to_dict(), rows, fields])


def decode_record(payload: bytes) -> Batch:
    """Inverse of `encode_record`; also reads the older `[meta, rows]` form, which has no checkpoint."""
    doc = orjson.loads(payload)
    if not isinstance(doc, list) or len(doc) not in (2, 3):
        raise ValueError(f"spool record is not [meta, rows] or [meta, rows, checkpoint]: {type(doc).__name__}")
    meta = ContainerMeta.from_dict(doc[0])
    cp = Checkpoint(*doc[2]) if len(doc) == 3 and doc[2] is not None else None
    return Batch(meta, [Event(r[0], r[2], r[1], r[3], r[4], r[5]) for r in doc[1]], cp)
