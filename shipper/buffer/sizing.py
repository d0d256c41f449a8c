"""What an event holds in memory: the memory buffer's unit of account (`buffer.max_bytes`).

Counted per event as the assembler builds it (compiled with it, a few nanoseconds while the event is still in
the cache) and carried on the batch, so the buffer does not walk every event again; `batch_bytes` counts a
batch that arrives without it (records read back from the spool, replay, tests).

Measured with tracemalloc on the reference workload as the json-file reader builds events: the Event object
(80 bytes), its timestamp string (79), its slot in the batch's list and what the reader's decoding leaves with
it (49). A JSON log's parsed fields took 3.5 bytes per character of the message they came from (dicts and
values; keys are shared).
"""

from __future__ import annotations

from sys import getsizeof
from typing import Any, Final

from shipper.event import Batch

EVENT_FIXED_BYTES: Final = 208
FIELDS_BYTES_PER_CHAR: Final = 3.5
ASCII_STR_BYTES: Final = getsizeof("")  # an ASCII str takes this plus one byte a character


def held_bytes(message: str, fields: dict[str, Any] | None) -> int:
    """What one event with this message (and parsed fields) takes in memory. Text beyond ASCII counts its
    width (1, 2 or 4 bytes a character), not one byte per character."""
    n = len(message)
    size = EVENT_FIXED_BYTES + (ASCII_STR_BYTES + n if message.isascii() else getsizeof(message))
    if fields is not None:
        size += int(n * FIELDS_BYTES_PER_CHAR)
    return size


def batch_bytes(batch: Batch) -> int:
    """What the batch's events take in memory (within a few percent on the reference workload), so that
    max_bytes bounds the process's memory and not a guess that misses parsed fields and wide characters."""
    size = 0
    for ev in batch.events:
        size += held_bytes(ev.message, ev.fields)
    return size
