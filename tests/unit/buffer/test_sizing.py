from __future__ import annotations

import sys

from shipper.buffer.sizing import EVENT_FIXED_BYTES, FIELDS_BYTES_PER_CHAR, batch_bytes, held_bytes
from shipper.event import Batch, ContainerMeta, Event

META = ContainerMeta(id="c1", name="one")


def test_an_event_holds_its_message_as_python_stores_it() -> None:
    """ASCII takes the quick count; any other text is asked of Python: 1, 2 or 4 bytes a character."""
    for text in ("", "x" * 1000, "é" * 1000, "字" * 1000, "😀" * 1000, "mixed ascii and 字"):
        assert held_bytes(text, None) == EVENT_FIXED_BYTES + sys.getsizeof(text), text


def test_parsed_fields_count_by_the_message_they_came_from() -> None:
    text = '{"level": "info", "msg": "served"}'
    assert held_bytes(text, {"level": "info", "msg": "served"}) - held_bytes(text, None) \
        == int(len(text) * FIELDS_BYTES_PER_CHAR)


def test_a_batch_holds_what_its_events_hold() -> None:
    events = [Event("t", "plain"), Event("t", "字" * 10), Event("t", '{"a": 1}', fields={"a": 1})]
    assert batch_bytes(Batch(META, events)) == sum(held_bytes(e.message, e.fields) for e in events)
    assert batch_bytes(Batch(META, [])) == 0
