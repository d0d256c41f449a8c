"""JSON application logs: a line that is a JSON object becomes the event's `fields`.

Only lines that start with "{" are tried, so plain text never pays for a parse. A line that starts with "{"
but does not parse (cut by truncation, or simply not JSON) is not an error: it ships as text, and is only
counted (`shipper_json_unparsed_total`) so a sudden jump is visible. The assembler inlines this on its fast
path; the functions here are the reference behaviour and serve the slow paths and tests.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from shipper.config import JsonConfig, JsonMode
from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper")
loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError
UNPARSED_METRIC = "shipper_json_unparsed_total"
_said: set[str] = set()


def parse_object(line: str) -> dict[str, Any] | None:
    """The JSON object `line` holds, or None when it is not one (no exception for bad input)."""
    if line[:1] != "{":
        return None
    try:
        value = loads(line)
    except JSONDecodeError:
        return None
    return value if type(value) is dict else None


def message_of(fields: dict[str, Any], key: str, line: str) -> str:
    """The event message: `fields[key]` when configured and a string, else the line as written."""
    if key:
        v = fields.get(key)
        if type(v) is str:
            return v
    return line


class JsonDetector:
    """`detect(line)` -> (message, fields) for one configured container stream."""

    def __init__(self, cfg: JsonConfig) -> None:
        self.enabled = cfg.mode is JsonMode.FIELD
        self.message_key = cfg.message_key
        self.unparsed = 0  # lines that started with "{" but were not a JSON object

    def detect(self, line: str) -> tuple[str, dict[str, Any] | None]:
        if not self.enabled or line[:1] != "{":
            return line, None
        fields = parse_object(line)
        if fields is None:
            self.unparsed += 1
            return line, None
        return message_of(fields, self.message_key, line), fields


def json_unparsed(m: Metrics, container: str, n: int) -> None:
    """Lines that looked like JSON but shipped as text: counted; logged once per container (not an error)."""
    m.inc(UNPARSED_METRIC, n, container=container)
    if container not in _said:
        if len(_said) > 10_000:
            _said.clear()
        _said.add(container)
        log.info("log lines start with '{' but are not JSON objects; shipped as text container=%s "
                 "(counted in %s; logged once per container)", container, UNPARSED_METRIC)
