"""Multi-line merging: Java, Python and Go traces as one event each; pattern mode; the caps."""

from __future__ import annotations

import pytest

from shipper.event import Flag
from shipper.transforms.multiline import GO_PANIC, HEAD, JAVA, JAVA_EXC, PY_TB, start_state
from tests.unit.transforms.support import Feeder, make_asm

JAVA_TRACE = [
    "2026-11-26 21:19:17,001 ERROR [worker-1] c.e.shop.Checkout - payment failed seq=0-1",
    "java.lang.IllegalStateException: card declined",
    "\tat com.example.shop.payment.Gateway.call0(Gateway.java:100)",
    "\tat com.example.shop.payment.Gateway.call1(Gateway.java:101)",
    "Caused by: java.net.SocketTimeoutException: read timed out",
    "\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)",
    "\t... 12 more",
    "\tSuppressed: java.io.IOException: close failed",
    "\t\tat a.B.close(B.java:3)",
]
PY_TRACE = [
    "Traceback (most recent call last):",
    '  File "/app/main.py", line 10, in <module>',
    "    main()",
    '  File "/app/main.py", line 6, in main',
    "    raise ValueError('x')",
    "    ^^^^^^^^^^^^^^^^^^^^^",
    "ValueError: x",
]
PY_CHAINED = [
    "Traceback (most recent call last):",
    '  File "/app/a.py", line 2, in <module>',
    "    1 / 0",
    "ZeroDivisionError: division by zero",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/app/a.py", line 4, in <module>',
    "    raise KeyError('k')",
    "KeyError: 'k'",
    "",
    "The above exception was the direct cause of the following exception:",
    "",
    "Traceback (most recent call last):",
    '  File "/app/a.py", line 6, in <module>',
    "mypkg.errors.AppError: wrapped",
]
GO_PANIC_TRACE = [
    "panic: runtime error: index out of range [5] with length 3",
    "",
    "goroutine 1 [running]:",
    "main.lookup(...)",
    "\t/app/main.go:12",
    "main.main()",
    "\t/app/main.go:20 +0x1d",
    "",
    "goroutine 6 [chan receive]:",
    "main.worker(0xc000010000)",
    "\t/app/worker.go:7 +0x45",
    "created by main.main in goroutine 1",
    "\t/app/main.go:15 +0x8a",
    "exit status 2",
]
PLAIN_BEFORE = "2026-11-26 21:19:16,999 INFO  [worker-0] c.e.shop.OrderService - order accepted seq=0-0"
PLAIN_AFTER = "2026-11-26 21:19:17,002 INFO  [worker-2] c.e.shop.OrderService - order accepted seq=0-2"
JSON_AFTER = '{"level": "info", "msg": "request served", "seq": "seq=0-3"}'


@pytest.mark.parametrize("trace", [JAVA_TRACE, PY_TRACE, PY_CHAINED, GO_PANIC_TRACE],
                         ids=["java", "python", "python-chained", "go"])
@pytest.mark.parametrize("after", [PLAIN_AFTER, JSON_AFTER], ids=["plain-after", "json-after"])
def test_each_trace_kind_is_one_event(trace: list[str], after: str) -> None:
    f = Feeder(make_asm())
    f.lines([PLAIN_BEFORE, *trace, after], "stderr")
    events = f.finish()
    assert [e.message for e in events] == [PLAIN_BEFORE, "\n".join(trace), after]
    assert [e.flags for e in events] == [0, Flag.MULTILINE, 0]
    assert events[1].timestamp == f.events[1].timestamp and events[1].stream == "stderr"


def test_a_blank_line_after_a_python_traceback_is_its_own_event() -> None:
    f = Feeder(make_asm())
    f.lines([*PY_TRACE, "", PLAIN_AFTER])
    assert [e.message for e in f.finish()] == ["\n".join(PY_TRACE), "", PLAIN_AFTER]


def test_go_panic_trailing_blank_lines_are_not_part_of_the_trace() -> None:
    f = Feeder(make_asm())
    trace = GO_PANIC_TRACE[:-1]
    f.lines([*trace, "", "", PLAIN_AFTER])
    assert [e.message for e in f.finish()] == ["\n".join(trace), "", "", PLAIN_AFTER]


def test_two_traces_back_to_back_are_two_events() -> None:
    f = Feeder(make_asm())
    f.lines([*JAVA_TRACE, *PY_TRACE, *JAVA_TRACE])
    assert [e.message for e in f.finish()] == ["\n".join(JAVA_TRACE), "\n".join(PY_TRACE),
                                               "\n".join(JAVA_TRACE)]


def test_exception_line_without_a_head_starts_the_trace() -> None:
    f = Feeder(make_asm())
    f.lines(['{"a": 1}', *JAVA_TRACE[1:4], PLAIN_AFTER])
    assert [e.message for e in f.finish()] == ['{"a": 1}', "\n".join(JAVA_TRACE[1:4]), PLAIN_AFTER]


def test_uncaught_java_exception_does_not_take_the_line_before() -> None:
    f = Feeder(make_asm())
    trace = ['Exception in thread "main" java.lang.NullPointerException: boom',
             "\tat a.Main.main(Main.java:3)"]
    f.lines([PLAIN_BEFORE, *trace])
    assert [e.message for e in f.finish()] == [PLAIN_BEFORE, "\n".join(trace)]


def test_node_style_frames_join_the_error_line() -> None:
    f = Feeder(make_asm())
    trace = ["TypeError: Cannot read properties of undefined (reading 'x')",
             "    at Object.<anonymous> (/app/index.js:3:15)", "    at Module._compile (node:internal:1:1)"]
    f.lines([*trace, PLAIN_AFTER])
    assert [e.message for e in f.finish()] == ["\n".join(trace), PLAIN_AFTER]


def test_plain_lines_and_json_lines_stay_single_events() -> None:
    f = Feeder(make_asm())
    lines = [PLAIN_BEFORE, "DEBUG payload dump seq=0-9 abab", JSON_AFTER, "level=info msg=ok",
             "    indented but not a frame", "Caused by nothing", "panic-free line", PLAIN_AFTER]
    f.lines(lines)
    events = f.finish()
    assert [e.message for e in events] == lines
    assert all(e.flags == 0 for e in events)


def test_json_line_is_never_a_continuation() -> None:
    f = Feeder(make_asm())
    f.lines([*JAVA_TRACE[:3], '{"x": "\\tat y"}', JAVA_TRACE[3]])
    assert [e.message for e in f.finish()] == ["\n".join(JAVA_TRACE[:3]), '{"x": "\\tat y"}', JAVA_TRACE[3]]


def test_mode_off_ships_every_line_alone_at_once() -> None:
    f = Feeder(make_asm(multiline={"mode": "off"}))
    f.lines(JAVA_TRACE)
    assert [e.message for e in f.take()] == JAVA_TRACE
    assert not f.asm.has_open()


def test_pattern_mode_starts_an_event_at_each_matching_line() -> None:
    f = Feeder(make_asm(multiline={"mode": "pattern", "start_pattern": r"^\d{4}-\d\d-\d\d "}))
    f.lines(["orphan first", "  orphan cont", "2026-11-26 a", "  a2", "a3", '{"j": 1}', "after json",
             "2026-11-26 b", "2026-11-26 c", "  c2"])
    assert [e.message for e in f.finish()] == ["orphan first\n  orphan cont", "2026-11-26 a\n  a2\na3",
                                               '{"j": 1}', "after json", "2026-11-26 b", "2026-11-26 c\n  c2"]
    assert [e.flags for e in f.events] == [Flag.MULTILINE, Flag.MULTILINE, 0, 0, 0, Flag.MULTILINE]


def test_max_lines_caps_a_group_without_losing_lines() -> None:
    f = Feeder(make_asm(multiline={"max_lines": 5}))
    frames = [f"\tat a.B.m{i}(B.java:{i})" for i in range(12)]
    trace = [JAVA_TRACE[0], JAVA_TRACE[1], *frames]
    f.lines([*trace, PLAIN_AFTER])
    events = f.finish()
    assert all(e.message.count("\n") < 5 for e in events)
    assert "\n".join(e.message for e in events) == "\n".join([*trace, PLAIN_AFTER])
    assert events[0].message == "\n".join(trace[:5])


def test_max_event_bytes_caps_a_group_without_losing_lines() -> None:
    f = Feeder(make_asm(input={"max_event_bytes": 1024}))
    frames = [f"\tat com.example.shop.payment.Gateway.callé{i}(Gateway.java:{i})" for i in range(60)]
    trace = [JAVA_TRACE[0], JAVA_TRACE[1], *frames]
    f.lines([*trace, PLAIN_AFTER])
    events = f.finish()
    assert len(events) > 3
    assert all(len(e.message.encode()) <= 1024 for e in events)
    assert "\n".join(e.message for e in events) == "\n".join([*trace, PLAIN_AFTER])
    assert not any(e.flags & Flag.TRUNCATED for e in events)


def test_a_long_exception_message_split_in_partials_still_joins_the_trace() -> None:
    f = Feeder(make_asm())
    exc = "java.lang.IllegalStateException: " + "m" * 40000
    trace = [JAVA_TRACE[0], exc, JAVA_TRACE[2]]
    f.lines([*trace, PLAIN_AFTER])
    events = f.finish()
    assert [e.message for e in events] == ["\n".join(trace), PLAIN_AFTER]
    assert events[0].flags == Flag.MULTILINE | Flag.PARTIAL


@pytest.mark.parametrize(("line", "state"), [
    ("2026-01-01 plain", HEAD), ("java.lang.IllegalStateException: card declined", JAVA_EXC),
    ("com.example.MyError", JAVA_EXC), ("Caused by: x.Y: z", JAVA_EXC), ("\tat a.B.c(B.java:1)", JAVA),
    ("Traceback (most recent call last):", PY_TB), ("panic: boom", GO_PANIC),
    ("fatal error: all goroutines are asleep - deadlock!", GO_PANIC), ("DEBUG payload", HEAD),
    ("", HEAD), ("ValueError: x", HEAD), ("the java.lang.Error: is mentioned", HEAD),
])
def test_start_state_classifies_first_lines(line: str, state: int) -> None:
    assert start_state(line) == state
