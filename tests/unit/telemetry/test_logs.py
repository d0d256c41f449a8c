"""shipper's own logs as JSON: the key=value pairs become fields, the time is RFC 3339 UTC, tracebacks kept."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest

from shipper.cli import setup_logging
from shipper.telemetry.logs import split_fields


@pytest.fixture
def captured() -> io.StringIO:
    buf = io.StringIO()
    setup_logging("debug", "json")
    handler = logging.getLogger().handlers[0]
    handler.stream = buf  # type: ignore[attr-defined]
    yield buf
    setup_logging("info", "text")


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def test_fields_are_fields(captured: io.StringIO) -> None:
    logging.getLogger("shipper").warning("sink failed, will retry sink=%s attempt=%d retry_in=%.2fs error=%r",
                                         "out", 3, 1.5, ConnectionRefusedError(111, "refused"))
    (doc,) = lines(captured)
    assert doc["message"] == "sink failed, will retry"
    assert doc["sink"] == "out" and doc["attempt"] == 3 and doc["retry_in"] == 1.5
    assert doc["error"] == "ConnectionRefusedError(111, 'refused')"
    assert doc["level"] == "warning" and doc["logger"] == "shipper"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(doc["time"]))


def test_traceback_included(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("shipper").exception("task failed, restarting it task=%s", "discovery")
    (doc,) = lines(captured)
    assert doc["task"] == "discovery" and "ValueError: boom" in str(doc["traceback"])


def test_sentences_without_pairs_and_odd_placeholders() -> None:
    assert split_fields("stopped; offsets saved in %s", ("/x",)) == ("stopped; offsets saved in /x", {})
    assert split_fields("a fill=%.0f%% (b)", (40.0,)) == ("a (b)", {"fill": 40.0})
    msg, fields = split_fields("lost lost_bytes%s%d since=%s", (">=", 5, "t"))
    assert msg == "lost lost_bytes>=5" and fields == {"since": "t"}
    assert split_fields("100%% done n=%d", (1,)) == ("100% done", {"n": 1})
    _, fields = split_fields("stats events_read=%d", (3.0,))  # a metric's value: a float, logged as a count
    assert fields == {"events_read": 3} and isinstance(fields["events_read"], int)
    # a field may not overwrite the document's own keys
    assert split_fields("x message=%s", ("m",)) == ("x message=m", {})


def test_the_kafka_clients_connection_errors_speak_only_at_debug() -> None:
    """aiokafka logs each refused connection at ERROR, several a second; the kafka sink says it, rate limited."""
    buf = io.StringIO()
    try:
        for level, expect in (("info", 0), ("debug", 1)):
            setup_logging(level, "json")
            logging.getLogger().handlers[0].stream = buf  # type: ignore[attr-defined]
            logging.getLogger("aiokafka.conn").error('Unable connect to "127.0.0.1:1": refused')
            assert len(lines(buf)) == expect, level
    finally:
        setup_logging("info", "text")
