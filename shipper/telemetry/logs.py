"""shipper's own log lines as JSON (`telemetry.log_format = "json"`): one object per line.

Log calls here are written `log.info("sink state changed sink=%s state=%s", name, state)`: a sentence, then
`key=%x` pairs. The JSON formatter turns each `key=%x` into a field of its own with the argument's value
(numbers stay numbers) and keeps the sentence, without the pairs, as `message`; so a log pipeline filters on
`sink` or `error` without parsing text. `time` is RFC 3339 in UTC with milliseconds; `traceback` carries the
exception's traceback when there is one.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

# a %-placeholder, with the `key=` right before it when there is one (a `key>=%d` keeps its operator)
_PLACEHOLDER = re.compile(
    r"(?:\b(?P<key>[a-z_][a-z0-9_.]*)(?P<op>>=|<=|=))?(?P<spec>%[-#0 +]*\d*(?:\.\d+)?[sdrfgixXeEGc%])")
_SPACES = re.compile(r"\s{2,}")
RESERVED = frozenset({"time", "level", "logger", "message", "traceback", "stack"})


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _value(spec: str, arg: Any) -> Any:
    if spec.endswith("r"):
        return repr(arg)
    if spec.endswith(("d", "i")) and isinstance(arg, float) and arg.is_integer():
        return int(arg)  # a count kept as a float (a metric's value) logged with %d
    if isinstance(arg, bool | int | float) or arg is None:
        return arg
    return str(arg)


def split_fields(msg: str, args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """(the sentence with the key=value pairs taken out, the pairs as fields)."""
    fields: dict[str, Any] = {}
    parts: list[str] = []
    rest: list[Any] = []
    pos = 0
    i = 0
    for m in _PLACEHOLDER.finditer(msg):
        spec = m.group("spec")
        if spec == "%%":
            continue
        if i >= len(args):
            raise ValueError("fewer arguments than placeholders")
        arg = args[i]
        i += 1
        key = m.group("key")
        if key and key not in RESERVED:
            parts.append(msg[pos:m.start()])
            name = key if m.group("op") == "=" else f"{key}_{'min' if m.group('op') == '>=' else 'max'}"
            fields[name] = _value(spec, arg)
        else:
            parts.append(msg[pos:m.end()])
            rest.append(arg)
        pos = m.end()
        if key and key not in RESERVED and spec[-1] in "fdg":  # a unit after a number: 2.5s, 40%
            if msg.startswith("%%", pos):
                pos += 2
            elif msg.startswith("s", pos) and not msg[pos + 1:pos + 2].isalnum():
                pos += 1
    parts.append(msg[pos:])
    sentence = "".join(parts)
    sentence = sentence % tuple(rest) if rest else sentence.replace("%%", "%")
    return _SPACES.sub(" ", sentence).strip(), fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname.lower(),
                               "logger": record.name}
        fields: dict[str, Any] = {}
        if isinstance(record.msg, str) and isinstance(record.args, tuple) and record.args:
            try:
                doc["message"], fields = split_fields(record.msg, record.args)
            except (TypeError, ValueError):
                doc["message"] = record.getMessage()
        else:
            doc["message"] = record.getMessage()
        doc.update(fields)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()
