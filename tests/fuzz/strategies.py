"""Hypothesis strategies for the fuzz targets, and the example budget (SHIPPER_FUZZ_EXAMPLES)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import string
import struct
import typing
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from shipper.config import Config
from shipper.event import ContainerMeta, Event
from shipper.sinks import SINKS, sink_config_class
from shipper.sinks.syslog.encode import Format, Framing
from tests.fuzz.props import SyslogCase

# Examples per test, times each test's weight. The default keeps the whole tests/fuzz suite at about two
# minutes on a busy 2-core CI machine; the long run (run_long.py) sets its own.
EXAMPLES = int(os.environ.get("SHIPPER_FUZZ_EXAMPLES", "1600"))


def budget(weight: float = 1.0) -> settings:
    return settings(max_examples=max(1, int(EXAMPLES * weight)), deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# --- shared pieces ---------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\n", "\r\n", "\r", "\t", "\x00", "\x1b[31m", "é", "日本", "\U0001f600",
                            "\u2028", "\ufeff", "}", "{", '"', "\\", "]", "=", "@", "#012", "%"])
TEXT = st.one_of(st.text(max_size=40), ODD_TEXT, st.text(alphabet=string.printable, max_size=200))
SURROGATE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)

DOCKER_TS = st.builds(lambda s, f: f"2024-05-01T12:{s // 60:02d}:{s % 60:02d}.{f:09d}Z",
                      st.integers(0, 3599), st.integers(0, 999_999_999))
ODD_TS = st.sampled_from([
    "", "Z", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.1Z", "2024-05-01T12:00:00.1234567891234Z",
    "2024-05-01t12:00:00z", "2024-05-01 12:00:00Z", "2024-05-01T12:00:00+02:00", "2024-05-01T12:00:00-0330",
    "2024-05-01T12:00:00", "2024-13-45T99:99:99Z", "0000-00-00T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2024-05-01T12:00:00+24:00",
    "2024-02-30T12:00:00Z", "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00,5Z",
    "\uff11\uff12\uff13\uff14-05-01T12:00:00Z",
    "2024-05-01T12:00:60Z", "not a time at all, but long enough", "2024-05-01T12:00:00.123456789Z+000002"])
TIMESTAMP = st.one_of(DOCKER_TS, ODD_TS, st.text(max_size=40))

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


# --- json-file -------------------------------------------------------------------------------------------

MAX_ENTRY = 256 * 1024


@st.composite
def docker_line(draw: st.DrawFn) -> bytes:
    """One json-file line as dockerd writes it, then often damaged the way disks and crashes do."""
    text = draw(TEXT)
    end = draw(st.sampled_from(["\n", "\n", "", "\r\n"]))
    entry: dict[str, Any] = {"log": text + end, "stream": draw(st.sampled_from(["stdout", "stderr"])),
                             "time": draw(st.one_of(DOCKER_TS, DOCKER_TS, ODD_TS))}
    how = draw(st.integers(0, 24))
    if how == 1:
        entry[draw(st.sampled_from(["log", "stream", "time"]))] = draw(JSON_VALUE)
    elif how == 2:
        del entry[draw(st.sampled_from(["log", "stream", "time"]))]
    elif how == 3:
        entry["attrs"] = draw(JSON_VALUE)
    elif how == 4:
        entry = draw(st.sampled_from([[entry], "x", 1, None]))  # type: ignore[assignment]
    line = orjson.dumps(entry)
    if how == 5:
        line = line[:draw(st.integers(0, len(line)))]
    elif how == 6:
        i = draw(st.integers(0, len(line) - 1))
        line = line[:i] + bytes([line[i] ^ draw(st.integers(1, 255))]) + line[i + 1:]
    elif how == 7:
        line = b"\x00" * draw(st.integers(1, 300)) + line
    elif how == 8:
        i = draw(st.integers(0, len(line)))
        line = line[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80\x80"])) + line[i:]
    elif how == 9:
        line = draw(st.binary(max_size=80))
    elif how == 10:
        line = b"\x00" * draw(st.integers(1, 50))
    elif how == 11:
        line = draw(st.sampled_from([b"", b" ", b"\r", b"\t \x0b", b"{}", b"[]", b"null", b'{"log":"a"}']))
    elif how == 12 and draw(st.integers(0, 9)) == 0:  # rare: an over-long line (costly)
        n = MAX_ENTRY + draw(st.integers(-64, 2000))
        line = b'{"log":"' + b"y" * n + b'\\n","stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}'
    elif how == 13:
        line = b"\x00" * draw(st.integers(1, 20)) + b'{"log":"a\\n","stream":"stdout","time":' + \
            draw(st.sampled_from([b"5", b"null", b"[]", b'"t"'])) + b"}"
    return line


@st.composite
def jsonfile_input(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    lines = draw(st.lists(docker_line(), max_size=12))
    data = b"\n".join(lines)
    if lines and draw(st.booleans()):
        data += b"\n"
    if draw(st.integers(0, 5)) == 0:
        data += draw(docker_line())  # an entry whose newline is not written yet
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=6))
    return data, cuts, draw(st.integers(0, 3))


@st.composite
def assemble_ops(draw: st.DrawFn) -> tuple[list[tuple[int, int, str]], int]:
    """Entries as Docker splits and ends them (partials, CRLF, stack traces, JSON lines, long lines)."""
    piece = st.one_of(
        TEXT,
        st.sampled_from(["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                         "ValueError: bad", "java.lang.IllegalStateException: x", "\tat a.b.C.d(C.java:1)",
                         "Caused by: java.io.IOException", "\t... 3 more", "goroutine 1 [running]:",
                         "panic: boom", "main.main()", "\t/x/main.go:5 +0x1d", "", "{\"msg\": \"m\", \"level\": 3}",
                         "{not json", "{\"msg\": 5}"]),
        st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001f600", "a\n"]), st.integers(200, 1500)),
    )
    entry = st.tuples(st.just(0), st.integers(0, 11),
                      st.builds(lambda t, e: t + e, piece, st.sampled_from(["\n", "\n", "\n", "", "\r\n", "\r"])))
    op = st.one_of(entry, entry, entry, st.tuples(st.integers(1, 2), st.just(0), st.just("")))
    return draw(st.lists(op, max_size=25)), draw(st.integers(0, 3))


# --- config ----------------------------------------------------------------------------------------------

TOML_SCALAR = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.integers(), st.floats(), TEXT,
    st.datetimes(), st.dates(), st.times(),
    st.datetimes(timezones=st.just(datetime.UTC)),
    st.sampled_from(["64KiB", "1m", "0", "-1", "1e5", "1.5 GiB", " 12 kb ", "1" + "0" * 400, "99999999999tib",
                     "${HOME}", "${NOPE}", "${NOPE:-5}", "${X:-}", "${", "$${X}", "auto", "pattern", "off",
                     "field", "text", "memory", "disk", "always", "interval", "never", "block", "drop_oldest",
                     "api", "files", "beginning", "end", "rfc5424", "rfc3164", "lf", "octet-counting",
                     "local0", "err", "warning", "1.2", "1.3", "json", "unix:///dev/log", "udp://127.0.0.1:514",
                     "tcp://[::1]:6514", "tls://h", "udp://h:99999", "unix://rel", "tcp://", "file", "syslog",
                     "stdout", "null", "(", "a{99999999999}", "(" * 1100, "[", "\\", "x*", "docker@32473",
                     "{container.name}", "{container.id:12}", "{nope}", "{", "name@", "a b@1"]))
TOML_VALUE = st.recursive(TOML_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=10)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


SECTIONS = {f.name: _fields(typing.get_type_hints(Config)[f.name]) for f in dataclasses.fields(Config)
            if f.name != "sinks"}
SINK_FIELDS = {kind: _fields(sink_config_class(kind)) for kind in SINKS}


@st.composite
def config_tree(draw: st.DrawFn) -> dict[str, Any]:
    """Known sections and keys with values of any type (often the right one), plus unknown keys."""
    tree: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([*SECTIONS, "sinks"]), max_size=5, unique=True)):
        if name == "sinks":
            sinks: dict[str, Any] = {}
            for sname in draw(st.lists(st.sampled_from(["a", "b", "c.d", ""]), max_size=3, unique=True)):
                kind = draw(st.sampled_from([*SINK_FIELDS, "bogus"]))
                keys = SINK_FIELDS.get(kind, ["type"])
                table = {k: draw(TOML_VALUE) for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))}
                if draw(st.integers(0, 5)):
                    table["type"] = kind
                sinks[sname] = table if draw(st.integers(0, 8)) else draw(TOML_VALUE)
            tree["sinks"] = sinks if draw(st.integers(0, 8)) else draw(TOML_VALUE)
        elif draw(st.integers(0, 8)):
            keys = draw(st.lists(st.sampled_from(SECTIONS[name]), max_size=4, unique=True))
            tree[name] = {k: draw(TOML_VALUE) for k in keys}
        else:
            tree[name] = draw(TOML_VALUE)
    if draw(st.integers(0, 4)) == 0:
        tree.update(draw(st.dictionaries(TEXT, TOML_VALUE, max_size=2)))
    return tree


ENV = st.dictionaries(st.sampled_from(["HOME", "X", "NOPE", "A"]), TEXT, max_size=3)


# --- spool -----------------------------------------------------------------------------------------------

SPOOL_OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20), st.integers(0, 1 << 16),
                               st.integers(0, 1 << 16)), max_size=4)
RECORD_PAYLOAD = st.one_of(
    st.binary(max_size=200),
    JSON_VALUE.map(orjson.dumps),
    st.builds(lambda meta, rows, cp: orjson.dumps([meta, rows, cp]),
              st.one_of(st.fixed_dictionaries({"id": TEXT, "name": TEXT}), JSON_VALUE),
              st.one_of(st.lists(st.lists(JSON_VALUE, max_size=7), max_size=3), JSON_VALUE),
              st.one_of(st.none(), st.lists(JSON_VALUE, max_size=5), JSON_VALUE)),
)


# --- syslog ----------------------------------------------------------------------------------------------

LABEL_KEY = st.one_of(TEXT, st.sampled_from(["com.docker.compose.project", "com.docker.compose.service",
                                             "a=b", "x]y", 'q"', "with space", "k" * 40, "k" * 40 + "x", ""]))
META = st.builds(ContainerMeta, id=TEXT, name=st.one_of(TEXT, st.just("/web")), image=TEXT,
                 labels=st.dictionaries(LABEL_KEY, TEXT, max_size=4), host=st.one_of(TEXT, st.text(min_size=250)))
LEVEL_FIELDS = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["level", "severity", "log.level", "log", "msg"]),
    st.one_of(st.sampled_from(["error", "WARN ", "fatal", "trace", "nope", 30, 50, 60, 99, True, 1.5]),
              st.fixed_dictionaries({"level": st.sampled_from(["info", "crit", 40, None])}), JSON_VALUE),
    max_size=3))
EVENT = st.builds(Event, timestamp=TIMESTAMP,
                  message=st.one_of(TEXT, SURROGATE_TEXT,
                                    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\n", "😀", "\r\n"]),
                                              st.integers(100, 3000))),
                  stream=st.sampled_from(["stdout", "stderr", "other"]), fields=LEVEL_FIELDS,
                  flags=st.integers(0, 15), seq=st.integers(0, 5))
TEMPLATE = st.sampled_from(["{container.name}", "{container.id:12}", "-", "", "app", "{stream}", "{host.name}",
                            "{compose.project}-{compose.service}", "x" * 60, "a b", "{container.image}"])
SYSLOG_CASE = st.builds(
    SyslogCase, format=st.sampled_from(Format), framing=st.sampled_from([None, *Framing]),
    max_bytes=st.one_of(st.integers(480, 2048), st.sampled_from([480, 2048, 8192, 65536])), meta=META,
    events=st.lists(EVENT, max_size=5), host_name=st.one_of(TEXT, st.text(min_size=200, max_size=300)),
    app_name=TEMPLATE, procid=st.one_of(TEMPLATE, st.just("p" * 128)), msgid=TEMPLATE, sd_labels=st.booleans(),
    bom=st.booleans())


# --- Docker ----------------------------------------------------------------------------------------------

ACTION = st.sampled_from(["create", "start", "die", "destroy", "rename", "exec_start", "", None])
EVENT_DOC = st.builds(
    lambda action, cid, attrs, t, extra: {"Type": "container", "Action": action, "status": action,
                                          "Actor": {"ID": cid, "Attributes": attrs}, "id": cid, **t, **extra},
    ACTION, st.one_of(st.sampled_from(["a" * 64, "b" * 64]), TEXT, JSON_VALUE),
    st.one_of(st.dictionaries(st.sampled_from(["name", "image", "exitCode", "l", "oldName"]),
                              st.one_of(TEXT, JSON_VALUE), max_size=4), JSON_VALUE),
    st.one_of(st.just({}), st.fixed_dictionaries({"timeNano": st.integers(-(2**63), 2**64 - 1)}),
              st.fixed_dictionaries({"time": st.one_of(st.integers(-(2**63), 2**63 - 1), JSON_VALUE)})),
    st.dictionaries(st.sampled_from(["Type", "Actor", "from", "scope"]), JSON_VALUE, max_size=2))


@st.composite
def event_chunks(draw: st.DrawFn) -> list[bytes]:
    lines = draw(st.lists(st.one_of(EVENT_DOC.map(orjson.dumps), JSON_VALUE.map(orjson.dumps),
                                    st.binary(max_size=40), st.sampled_from([b"", b" ", b"{", b"\r"])), max_size=8))
    data = b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"{\"partial"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


INSPECT_DOC = st.one_of(JSON_VALUE, st.fixed_dictionaries(
    {"Id": st.one_of(st.just("c" * 64), JSON_VALUE)},
    optional={"Name": st.one_of(TEXT, JSON_VALUE), "Image": JSON_VALUE, "LogPath": st.one_of(TEXT, JSON_VALUE),
              "Created": st.one_of(TIMESTAMP, JSON_VALUE), "ID": st.one_of(st.just("c" * 64), JSON_VALUE),
              "Config": st.one_of(st.fixed_dictionaries({}, optional={
                  "Image": st.one_of(TEXT, JSON_VALUE), "Labels": st.one_of(st.dictionaries(TEXT, TEXT), JSON_VALUE),
                  "Env": st.one_of(st.lists(st.sampled_from(["A=1", "AB=x=y", "B=2", "A", "=A"])), JSON_VALUE),
                  "Tty": JSON_VALUE}), JSON_VALUE),
              "State": st.one_of(st.fixed_dictionaries({}, optional={
                  "Running": JSON_VALUE, "StartedAt": st.one_of(TIMESTAMP, JSON_VALUE)}), JSON_VALUE),
              "HostConfig": st.one_of(st.fixed_dictionaries({}, optional={
                  "LogConfig": st.one_of(st.fixed_dictionaries({"Type": st.one_of(
                      st.sampled_from(["json-file", "local", "journald"]), JSON_VALUE)}), JSON_VALUE),
                  "AutoRemove": JSON_VALUE}), JSON_VALUE)}))


def frame(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload) if length is None else length) + payload


@st.composite
def frame_chunks(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    tty = draw(st.integers(0, 4)) == 0
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        ts = draw(st.one_of(DOCKER_TS, DOCKER_TS, ODD_TS)).encode()
        body = draw(st.one_of(TEXT.map(str.encode), st.binary(max_size=30)))
        payload = draw(st.sampled_from([ts + b" " + body + b"\n", ts + b" " + body, body, ts, b""]))
        if tty:
            parts.append(payload)
            continue
        kind = draw(st.sampled_from([1, 1, 2, 3, 0, 4, 255]))
        length = draw(st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1), st.integers(0, 64)))
        raw = frame(kind, payload, length)
        if draw(st.integers(0, 10)) == 0:
            i = draw(st.integers(1, 3))
            raw = raw[:i] + b"\x01" + raw[i + 1:]
        parts.append(raw)
    data = b"".join(parts)
    if draw(st.integers(0, 5)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)], tty
