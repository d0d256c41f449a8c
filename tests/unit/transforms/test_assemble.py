"""LineAssembler: partial joins, truncation, TTY line ends, restart positions, streams, seq, timeouts."""

from __future__ import annotations

import logging
import random
import time

import pytest

from shipper.buffer.sizing import batch_bytes
from shipper.event import Batch, ContainerMeta, Event, Flag, event_id
from shipper.telemetry.metrics import Metrics
from shipper.transforms.assemble import LineAssembler, cut_utf8, position_key, utf8_len
from tests.unit.transforms.support import PARTIAL_BYTES, Feeder, docker_entries, make_asm, make_config, ts

MiB = 1024 * 1024


def text_of(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(n))


def shape(events: list[Event]) -> list[tuple[str, str, str, int, int]]:
    return [(e.stream, e.timestamp, e.message, e.flags, e.seq) for e in events]


# --- partial entries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 16383, 16384, 16385, 50000, MiB])
def test_partial_entries_are_joined_byte_exact(size: int) -> None:
    f = Feeder(make_asm())
    msg = "S" + text_of(size - 1, size) if size > 1 else "x"
    parts = docker_entries(msg + "\n")
    f.entry("before\n")
    first = f.pos
    for p in parts:
        f.entry(p)
    f.entry("after\n")
    events = f.finish()
    assert [e.message for e in events] == ["before", msg, "after"]
    ev = events[1]
    assert ev.timestamp == ts(1), "an event carries its first entry's timestamp"
    assert ev.flags == (Flag.PARTIAL if len(parts) > 1 else 0)
    assert len(parts) == (size + 1 + PARTIAL_BYTES - 1) // PARTIAL_BYTES
    assert first > 0


def test_partial_join_keeps_multibyte_characters() -> None:
    f = Feeder(make_asm())
    msg = ("ünïcödé €uro 😀 " * 3000)[:40000]
    f.lines([msg])
    (ev,) = f.finish()
    assert ev.message == msg and ev.flags == Flag.PARTIAL


def test_message_of_exactly_max_event_bytes_is_not_truncated() -> None:
    m = Metrics()
    f = Feeder(make_asm(m))
    exact, over = "a" * MiB, "b" * (MiB + 1)
    f.lines([exact, over])
    ev1, ev2 = f.finish()
    assert ev1.message == exact and ev1.flags == Flag.PARTIAL
    assert ev2.message == "b" * MiB and ev2.flags == Flag.PARTIAL | Flag.TRUNCATED
    assert m.get("shipper_events_truncated_total", container="c1", where="assemble") == 1


# --- truncation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_truncation_cuts_at_a_utf8_boundary(char: str) -> None:
    m = Metrics()
    f = Feeder(make_asm(m, input={"max_event_bytes": 1024}))
    width = len(char.encode())
    msg = "a" * 1023 + char * 10  # byte 1024 falls inside the first multi-byte character
    f.lines([msg])
    fits = "a" * (1024 - width) + char  # exactly 1024 bytes: kept whole
    f.lines([fits])
    ev, ev2 = f.finish()
    assert ev.message == "a" * 1023
    assert ev.flags == Flag.TRUNCATED
    assert ev2.message == fits and ev2.flags == 0
    assert m.get("shipper_events_truncated_total") == 1


def test_truncation_of_a_partial_chain_with_multibyte_cut() -> None:
    f = Feeder(make_asm(input={"max_event_bytes": 20000}))
    msg = "x" * 19999 + "€" * 10000
    f.lines([msg])
    (ev,) = f.finish()
    assert ev.message == "x" * 19999
    assert ev.flags == Flag.PARTIAL | Flag.TRUNCATED


def test_truncation_is_counted_per_event_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    asm = LineAssembler("trunc-log-test", make_config(input={"max_event_bytes": 1024}), m)
    f = Feeder(asm)
    with caplog.at_level(logging.WARNING, logger="shipper"):
        f.lines(["y" * 5000, "z" * 3000])
        events = f.finish()
    assert [len(e.message) for e in events] == [1024, 1024]
    assert m.get("shipper_events_truncated_total", container="trunc-log-test", where="assemble") == 2
    lines = [r.getMessage() for r in caplog.records if "truncated event" in r.getMessage()]
    assert len(lines) == 1 and "container=trunc-log-test" in lines[0] and "limit=1024" in lines[0]


def test_memory_stays_bounded_while_a_huge_partial_chain_streams_in() -> None:
    asm = make_asm(input={"max_event_bytes": 4096})
    st = asm._streams["stdout"]
    piece = "q" * PARTIAL_BYTES
    for i in range(2000):  # a 32 MiB line
        asm.add(ts(i), "stdout", piece, i)
        assert st.parts is not None
        assert sum(len(p) for p in st.parts) <= 4096 + PARTIAL_BYTES
    asm.add(ts(2000), "stdout", "end\n", 2000)
    asm.flush()
    (ev,) = asm.take()
    assert ev.message == "q" * 4096 and ev.flags == Flag.PARTIAL | Flag.TRUNCATED
    assert ev.timestamp == ts(0)


def test_helpers_count_and_cut_utf8() -> None:
    assert utf8_len("a€😀") == 1 + 3 + 4
    assert cut_utf8("a€😀", 4) == "a€" and cut_utf8("a€😀", 3) == "a" and cut_utf8("abc", 2) == "ab"
    assert utf8_len("\ud800") == 3  # a lone surrogate does not raise
    order = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.09Z", "2026-01-01T00:00:00.1Z",
             "2026-01-01T00:00:00.1Z+000002", "2026-01-01T00:00:00.12Z", "2026-01-01T00:00:01Z+000001"]
    assert sorted(reversed(order), key=position_key) == order


# --- dangling partials, TTY -------------------------------------------------------------------------------


def test_dangling_partial_is_flushed_as_incomplete() -> None:
    f = Feeder(make_asm())
    f.entry("p" * PARTIAL_BYTES)
    f.entry("q" * 100)
    assert f.take() == [] and f.asm.has_open()
    events = f.finish()
    assert shape(events) == [("stdout", ts(0), "p" * PARTIAL_BYTES + "q" * 100,
                              Flag.PARTIAL | Flag.INCOMPLETE, 0)]
    assert not f.asm.has_open()


def test_tty_crlf_ends_a_line_and_both_chars_are_stripped() -> None:
    f = Feeder(make_asm())
    f.entry("hello\r\n")
    f.entry("carriage\rinside\r\n")
    f.entry("r" * PARTIAL_BYTES)
    f.entry("tail\r")
    f.entry("\n")  # "\r\n" split across two entries
    f.entry("\r\n")  # an empty TTY line
    f.entry("plain\n")
    events = f.finish()
    assert [e.message for e in events] == ["hello", "carriage\rinside", "r" * PARTIAL_BYTES + "tail", "",
                                           "plain"]


# --- restart positions ------------------------------------------------------------------------------------


def test_safe_position_is_current_when_nothing_is_open() -> None:
    asm = make_asm(multiline={"mode": "off"})
    asm.add(ts(0), "stdout", "one\n", 0)
    assert len(asm.take()) == 1
    assert asm.safe_position(10) == 10
    assert not asm.has_open()


def test_safe_position_points_at_the_first_entry_of_the_earliest_open_event() -> None:
    f = Feeder(make_asm())
    p_head = f.entry("2026 ERROR payment failed\n", "stderr")  # held: a Java exception line may follow
    assert f.asm.safe_position(f.pos) == p_head
    f.entry("java.lang.IllegalStateException: card declined\n", "stderr")
    p_part = f.entry("s" * PARTIAL_BYTES)  # an open partial on stdout, later than the stderr group
    assert f.asm.safe_position(f.pos) == p_head
    f.entry("\tat a.B.c(B.java:1)\n", "stderr")
    f.entry("2026 next\n", "stderr")  # ends the trace
    f.take()
    assert len(f.events) == 1 and f.events[0].message.count("\n") == 2
    assert f.asm.safe_position(f.pos) == p_part
    f.entry("end\n")
    p_next = f.entry("2026 more\n")
    f.take()
    assert f.asm.safe_position(f.pos) == min(p_next, f.asm._streams["stderr"].pos)


def scenario() -> list[tuple[str, str]]:
    """(stream, entry) of a log with every kind of open state, both streams interleaved."""
    rng = random.Random(7)
    out: list[tuple[str, str]] = []
    for n in range(60):
        stream = "stderr" if rng.random() < 0.4 else "stdout"
        k = rng.random()
        if k < 0.35:
            lines = [f"2026 INFO line {n}"]
        elif k < 0.5:
            lines = ['{"msg": "json ' + str(n) + '"}']
        elif k < 0.7:
            lines = [f"2026 ERROR failed {n}", "java.lang.IllegalStateException: card declined"]
            lines += [f"\tat a.B.m{i}(B.java:{i})" for i in range(rng.randint(1, 4))]
        elif k < 0.8:
            lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                     f"ValueError: v{n}"]
        elif k < 0.9:
            lines = [f"huge {n} " + "H" * rng.randint(16000, 40000)]
        else:
            lines = [f"2026 crlf {n}\r"]
        for line in lines:
            for part in docker_entries(line + "\n"):
                out.append((stream, part))
                if rng.random() < 0.3:  # the other stream writes in between
                    other = "stdout" if stream == "stderr" else "stderr"
                    out.append((other, f"2026 other {n} {len(out)}\n"))
    return out


def run_entries(entries: list[tuple[str, str, int]], asm: LineAssembler) -> list[Event]:
    got = []
    for i, (stream, text, pos) in enumerate(entries):
        asm.add(ts(pos), stream, text, pos)
        if i % 3 == 0:
            got += asm.take()
    asm.flush()
    return got + asm.take()


def test_restart_from_safe_positions_neither_loses_nor_repeats_an_event() -> None:
    entries = [(s, t, i) for i, (s, t) in enumerate(scenario())]
    want = shape(run_entries(entries, make_asm()))
    assert len(want) > 60
    for cut in range(1, len(entries)):
        asm = make_asm()
        shipped: list[Event] = []
        for stream, text, pos in entries[:cut]:
            asm.add(ts(pos), stream, text, pos)
        shipped += asm.take()  # what the checkpoint covers
        current = cut  # the position of the next entry
        start = asm.safe_position(current)
        per_stream = asm.safe_positions(current)
        assert start == min(per_stream.values())
        again = make_asm()  # the restarted reader
        again.skip_before(per_stream)
        assert isinstance(start, int)
        resumed = run_entries([e for e in entries if e[2] >= start], again)
        got = shape(shipped) + shape(resumed)
        by_stream = {s: [g for g in got if g[0] == s] for s in ("stdout", "stderr")}
        for s in ("stdout", "stderr"):
            assert by_stream[s] == [w for w in want if w[0] == s], f"cut at entry {cut}, stream {s}"


def test_safe_position_alone_is_exact_for_one_stream() -> None:
    entries = [(s, t, i) for i, (s, t) in enumerate(scenario()) if s == "stdout"]
    entries = [(s, t, i) for i, (s, t, _) in enumerate(entries)]
    want = shape(run_entries(entries, make_asm()))
    for cut in range(1, len(entries)):
        asm = make_asm()
        for stream, text, pos in entries[:cut]:
            asm.add(ts(pos), stream, text, pos)
        shipped = asm.take()
        start = asm.safe_position(cut)
        assert isinstance(start, int)
        resumed = run_entries([e for e in entries if e[2] >= start], make_asm())
        assert shape(shipped) + shape(resumed) == want, f"cut at entry {cut}"


# --- streams, seq ---------------------------------------------------------------------------------------


def test_stdout_and_stderr_never_merge_and_keep_their_order() -> None:
    f = Feeder(make_asm())
    f.entry("2026 ERROR payment failed seq=1\n", "stdout")
    f.entry("2026 stderr one\n", "stderr")
    f.entry("java.lang.IllegalStateException: card declined\n", "stdout")
    f.entry("\tat a.B.c(B.java:1)\n", "stderr")  # a frame on the other stream is not part of it
    f.entry("\tat a.B.d(B.java:2)\n", "stdout")
    f.entry("h" * PARTIAL_BYTES, "stderr")
    f.entry("2026 stdout plain\n", "stdout")
    f.entry("tail\n", "stderr")
    events = f.finish()
    out = [e.message for e in events if e.stream == "stdout"]
    err = [e.message for e in events if e.stream == "stderr"]
    assert out == ["2026 ERROR payment failed seq=1\njava.lang.IllegalStateException: card declined\n"
                   "\tat a.B.d(B.java:2)", "2026 stdout plain"]
    assert err == ["2026 stderr one\n\tat a.B.c(B.java:1)", "h" * PARTIAL_BYTES + "tail"]


def test_seq_numbers_events_of_one_stream_with_equal_timestamps() -> None:
    asm = make_asm()
    same, later = ts(5), ts(6)
    for i, (stream, text, t) in enumerate([
        ("stdout", "2026 a\n", same), ("stdout", "2026 b\n", same), ("stderr", "2026 x\n", same),
        ("stdout", '{"c": 1}\n', same), ("stdout", "2026 d\n", later), ("stderr", "2026 y\n", same),
    ]):
        asm.add(t, stream, text, i)
    asm.flush()
    events = asm.take()
    got = [(e.stream, e.message, e.seq) for e in events]
    assert sorted(got) == sorted([("stdout", "2026 a", 0), ("stdout", "2026 b", 1), ("stdout", '{"c": 1}', 2),
                                  ("stdout", "2026 d", 0), ("stderr", "2026 x", 0), ("stderr", "2026 y", 1)])
    assert len({event_id("c" * 64, e) for e in events}) == len(events)


def test_unknown_stream_names_get_their_own_state() -> None:
    asm = make_asm()
    asm.add(ts(0), "stdin", "odd\n", 0)
    asm.flush()
    assert [(e.stream, e.message) for e in asm.take()] == [("stdin", "odd")]


def test_empty_entry_is_ignored() -> None:
    asm = make_asm()
    asm.add(ts(0), "stdout", "", 0)
    asm.flush()
    assert asm.take() == [] and not asm.has_open()


# --- timeouts ---------------------------------------------------------------------------------------------


def test_flush_expired_ships_groups_idle_longer_than_the_timeout() -> None:
    f = Feeder(make_asm(multiline={"flush_timeout_secs": 1.0}))
    f.lines(["2026 ERROR failed", "java.lang.IllegalStateException: x", "\tat a.B.c(B.java:1)"], "stderr")
    f.entry("p" * PARTIAL_BYTES)  # partial chains wait for dockerd, not for the timeout
    f.asm.flush_expired(time.monotonic() + 0.5)
    assert f.take() == []
    f.asm.flush_expired(time.monotonic() + 1.5)
    (ev,) = f.take()
    assert ev.flags == Flag.MULTILINE and ev.message.count("\n") == 2
    assert f.asm.has_open() and not f.asm._streams["stderr"].state
    f.entry("q\n")
    assert [e.message for e in f.take()] == []  # "p...q" is a plain line, held
    f.asm.flush_expired(time.monotonic() + 1.5)
    assert [e.message for e in f.take()] == ["p" * PARTIAL_BYTES + "q"]


def test_idle_time_counts_from_the_last_line_of_the_group() -> None:
    f = Feeder(make_asm(multiline={"flush_timeout_secs": 0.2}))
    f.lines(["Traceback (most recent call last):"])
    f.take()
    time.sleep(0.15)
    f.lines(['  File "a.py", line 1, in <module>'])
    f.take()  # stamps the group's last activity
    f.asm.flush_expired(time.monotonic() + 0.1)
    assert f.take() == []
    f.lines(["ValueError: x"])
    f.take()
    time.sleep(0.25)
    f.asm.flush_expired(time.monotonic())
    (ev,) = f.take()
    assert ev.message.endswith("ValueError: x") and ev.message.count("\n") == 2


def test_flush_complete_ships_held_lines_but_keeps_partials_open() -> None:
    """At shutdown a held plain line must not pin the checkpoint (the other stream would be read twice)."""
    asm = make_asm()
    asm.add(ts(1), "stdout", "plain line held in case a trace follows\n", 0)
    asm.add(ts(2), "stderr", "err one\n", 100)
    asm.add(ts(3), "stderr", "err two\n", 200)
    assert asm.safe_position(300) == 0
    asm.flush_complete()
    got = asm.take()
    assert [e.message for e in got if e.stream == "stdout"] == ["plain line held in case a trace follows"]
    assert [e.message for e in got if e.stream == "stderr"] == ["err one", "err two"]
    assert asm.safe_position(300) == 300
    asm.add(ts(4), "stdout", "a partial without its newline", 300)
    asm.flush_complete()
    assert asm.take() == []
    assert asm.safe_position(400) == 300  # the partial line is re-read after a restart


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_each_take_counts_what_its_events_hold(mode: str) -> None:
    """The buffer accounts a reader's batch by what the assembler counted while building it: on every path
    (plain, held heads, JSON with fields, stack traces, 16 KiB partials, truncation, wide characters) the
    count is what `batch_bytes` finds walking the events."""
    rng = random.Random(7)
    f = Feeder(make_asm(multiline={"mode": mode}, input={"max_event_bytes": 40_000}))
    pieces = ["plain text line", "2026-01-01 INFO served", '{"level": "info", "msg": "字"}', "{not json",
              "java.lang.IllegalStateException: boom", "\tat a.b(C.java:1)", "Traceback (most recent call last):",
              '  File "a.py", line 1', "ValueError: x", "emoji 😀 line", "x" * 20_000, "y" * 50_000, "", "\tindented"]
    meta = ContainerMeta(id="c1", name="one")
    counted = walked = 0
    for round_ in range(300):
        f.lines(rng.choices(pieces, k=rng.randint(1, 6)), rng.choice(["stdout", "stderr"]))
        if round_ % 7 == 0:
            got = f.take()
            counted += f.asm.taken_bytes
            walked += batch_bytes(Batch(meta, got))
    f.asm.flush()
    got = f.take()
    counted += f.asm.taken_bytes
    walked += batch_bytes(Batch(meta, got))
    assert len(f.events) > 500 and any(e.fields for e in f.events) and any(e.flags for e in f.events)
    assert counted == walked
    assert f.asm.take() == [] and f.asm.taken_bytes == 0
