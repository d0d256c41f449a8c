"""Rebuilds what the application wrote from Docker's log entries: one `LineAssembler` per container.

Docker stores a line longer than 16 KiB as several entries, all but the last without a trailing newline;
TTY containers end lines with "\\r\\n"; stack traces arrive one line per entry. The assembler joins partial
entries byte for byte, merges stack traces (transforms.multiline), parses JSON application logs
(transforms.jsonlog), cuts events longer than `input.max_event_bytes`, and numbers events of one stream
that share a timestamp so `event_id` stays unique.

Everything is kept per stream: stdout and stderr never merge, and each keeps its order. The reader asks
`safe_position()` for where a restart must resume: the first entry of the earliest event not yet handed
out. `safe_positions()` and `skip_before()` make that exact when the two streams interleave (see there).

This runs once per log entry of every container, so `add` has a fast path for the common entry (a short
complete line, no open partial) that costs a few attribute reads and one `Event`; anything else (partials,
long lines, stack traces, pattern mode) takes the general path. Flags are plain ints here: IntFlag
arithmetic is a Python-level call per operation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from shipper.buffer.sizing import held_bytes
from shipper.config import Config, JsonMode, MultilineMode
from shipper.event import Event, Flag
from shipper.telemetry.events import event_truncated
from shipper.telemetry.metrics import Metrics
from shipper.transforms.jsonlog import JSONDecodeError, json_unparsed, loads
from shipper.transforms.multiline import (
    HEAD,
    IDLE,
    JAVA,
    JAVA_EXC,
    JOINS_HEAD,
    PATTERN,
    PLAIN_FIRST,
    STATE_MASK,
    TENTATIVE,
    next_state,
    start_state,
)

Position = int | str

PARTIAL = int(Flag.PARTIAL)
MULTILINE = int(Flag.MULTILINE)
TRUNCATED = int(Flag.TRUNCATED)
INCOMPLETE = int(Flag.INCOMPLETE)
WHERE = "assemble"  # the `where` label of shipper_events_truncated_total

_monotonic = time.monotonic


def utf8_len(text: str) -> int:
    """Bytes `text` takes as UTF-8 (lone surrogates from a lax decoder count as 3, never raise)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` that fits in `limit` UTF-8 bytes, never splitting a character."""
    if text.isascii():
        return text[:limit]
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def position_key(p: Position) -> Any:
    """A sort key for positions: offsets as they are; RFC 3339 timestamps (optionally with a suffix after
    the "Z", such as the API reader's "+000002") with the fraction padded to 9 digits, because Docker trims
    trailing zeros and "…00.1Z" must sort after "…00.09Z". Text, not `timefmt.parse_ns`: positions are
    Docker's own UTC stamps, compared per entry while skipping after a restart, and a key must never raise."""
    if not isinstance(p, str):
        return p
    dot = p.find(".")
    if dot < 0:
        head, _, tail = p.partition("Z")
        return (head, "000000000", tail)
    frac, _, tail = p[dot + 1:].partition("Z")
    return (p[:dot], frac.ljust(9, "0"), tail)


class _Stream:
    """What is open on one stream of one container: a multi-line group and a partial chain."""

    __slots__ = ("flags", "head", "last_ts", "lines", "name", "nbytes", "parts", "pbytes", "pcr", "pextra",
                 "pos", "ppos", "pts", "seq", "since", "state", "tent", "ts")

    def __init__(self, name: str) -> None:
        self.name = name
        # the open group: `head` alone while it has one line, then `lines`
        self.state = IDLE
        self.head = ""
        self.lines: list[str] | None = None
        self.ts = ""  # timestamp and position of the group's first entry
        self.pos: Position = 0
        self.flags = 0
        self.nbytes = 0  # UTF-8 bytes of "\n".join(lines), kept once `lines` exists
        # monotonic time of the group's last line; 0.0 = "a line came since the clock was last read": add
        # does not read the clock (it costs as much as a third of the fast path), take() and
        # flush_expired() stamp it, so a group's idle time is exact to one batch
        self.since = 0.0
        self.tent: list[tuple[str, Position, str, int]] | None = None  # tentative tail of `lines`
        # the open partial chain
        self.parts: list[str] | None = None
        self.pts = ""
        self.ppos: Position = 0
        self.pbytes = 0  # bytes kept in `parts`
        self.pextra = 0  # bytes seen past max_event_bytes and not kept
        self.pcr = False  # the last part seen ended with "\r"
        # event numbering for equal timestamps
        self.last_ts: str | None = None
        self.seq = 0


class LineAssembler:
    """Turns one container's log entries into events; see the module docstring."""

    def __init__(self, container: str, config: Config, metrics: Metrics) -> None:
        self.container = container
        self.metrics = metrics
        self.out: list[Event] = []
        self._held = 0  # what the events in `out` hold in memory (buffer.sizing)
        self.taken_bytes = 0  # what the events the last `take` returned hold
        self.max_bytes = config.input.max_event_bytes
        self._short = self.max_bytes // 4  # a text this long (in chars) cannot exceed max_bytes
        ml = config.multiline
        self._auto = ml.mode is MultilineMode.AUTO
        self._start = re.compile(ml.start_pattern).search if ml.mode is MultilineMode.PATTERN else None
        self._timeout = ml.flush_timeout_secs
        self._max_lines = max(1, ml.max_lines)
        self._json = config.json.mode is JsonMode.FIELD
        self._message_key = config.json.message_key
        self._json_unparsed = 0
        self._streams: dict[str, _Stream] = {"stdout": _Stream("stdout"), "stderr": _Stream("stderr")}
        self._skip: dict[str, Any] = {}
        # The reader's entry point, an attribute rather than a method so that `skip_before` can swap in the
        # skipping path for the first entries after a restart and the fast path pays no check per entry
        # (and so that the compiled build, whose methods cannot be replaced on an instance, does the same).
        self._direct: Callable[[str, str, str, Position], None] = self.add_entry
        self.add: Callable[[str, str, str, Position], None] = self._direct

    # --- the reader's interface ------------------------------------------------------------------------

    def add_entry(self, timestamp: str, stream: str, text: str, position: Position) -> None:
        """`add` when no entry is to be skipped (see __init__): one Docker log entry as stored: `text`
        ending in "\n" (or "\r\n") completes a line, without it the entry is a partial that the stream's next
        entry continues. `position` is where the entry starts (file offset or timestamp). Completed events
        land in `out`; in mode "auto" a plain line is held until the stream's next line (it may head a stack
        trace) or until `flush_expired`."""
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = _Stream(stream)
        if not text or text[-1] != "\n" or st.parts is not None or len(text) > self._short:
            self._add_slow(st, timestamp, text, position)
            return
        line = text[:-1]
        c = text[0]
        if len(text) > 1 and text[-2] == "\r":
            line = line[:-1]
        if c in PLAIN_FIRST:
            # a plain line: ship the held line, hold this one (a Java exception line may follow it)
            state = st.state
            if state == HEAD:
                ts = st.ts
                if ts == st.last_ts:
                    st.seq = seq = st.seq + 1
                else:
                    st.last_ts = ts
                    st.seq = seq = 0
                self.out.append(Event(ts, st.head, stream, None, st.flags, seq))
                self._held += held_bytes(st.head, None)
            elif state or not self._auto:
                self._line(st, timestamp, line, position, 0)
                return
            st.state = HEAD
            st.head = line
            st.ts = timestamp
            st.pos = position
            st.flags = 0
            st.since = 0.0
            return
        if c == "\t" and st.lines is not None and (st.state == JAVA or st.state == JAVA_EXC) \
                and line.startswith("\tat "):
            # the bulk of a Java trace: append the frame in place
            lines = st.lines
            n = st.nbytes + 1 + (len(line) if line.isascii() else utf8_len(line))
            if n <= self.max_bytes and len(lines) + 1 < self._max_lines:
                lines.append(line)
                st.nbytes = n
                st.state = JAVA
                st.since = 0.0
                return
            self._line(st, timestamp, line, position, 0)
            return
        if c == "{" and st.state <= HEAD:
            if st.state:  # ship the held line first: order per stream
                ts = st.ts
                if ts == st.last_ts:
                    st.seq = seq = st.seq + 1
                else:
                    st.last_ts = ts
                    st.seq = seq = 0
                self.out.append(Event(ts, st.head, stream, None, st.flags, seq))
                self._held += held_bytes(st.head, None)
                st.state = IDLE
            fields = None  # _emit_json and _emit inlined: this is the per-entry fast path
            msg = line
            if self._json:
                try:
                    fields = loads(line)
                except JSONDecodeError:
                    self._json_unparsed += 1
                else:
                    if self._message_key:
                        v = fields.get(self._message_key)
                        if type(v) is str:
                            msg = v
            if timestamp == st.last_ts:
                st.seq = seq = st.seq + 1
            else:
                st.last_ts = timestamp
                st.seq = seq = 0
            self.out.append(Event(timestamp, msg, stream, fields, 0, seq))
            self._held += held_bytes(msg, fields)
            return
        self._line(st, timestamp, line, position, 0)

    def take(self) -> list[Event]:
        """The completed events, in order; `out` starts afresh. `taken_bytes` is then what they hold in memory."""
        out = self.out
        self.out = []
        self.taken_bytes = self._held
        self._held = 0
        for st in self._streams.values():
            if st.state and st.since == 0.0:
                st.since = _monotonic()
        if self._json_unparsed:
            json_unparsed(self.metrics, self.container, self._json_unparsed)
            self._json_unparsed = 0
        return out

    def safe_position(self, current: Position) -> Position:
        """Where a restart must resume: the first entry of the earliest event not yet in `out` (an open
        partial chain or multi-line group, on either stream), else `current` (the reader's position after
        the last entry it added)."""
        best: Position | None = None
        best_key: Any = None
        for st in self._streams.values():
            if st.state:
                p = st.pos
            elif st.parts is not None:
                p = st.ppos
            else:
                continue
            k = position_key(p)
            if best is None or k < best_key:
                best, best_key = p, k
        return current if best is None else best

    def safe_positions(self, current: Position) -> dict[str, Position]:
        """`safe_position` per stream. A restart from the smallest, with `skip_before(these)`, neither loses
        nor repeats an event even when one stream's event is open while the other's are shipped."""
        out: dict[str, Position] = {}
        for name, st in self._streams.items():
            out[name] = st.pos if st.state else st.ppos if st.parts is not None else current
        return out

    def direct(self) -> bool:
        """`add` is `add_entry` itself (no entries to skip after a restart, nothing wrapped around it), so
        a caller may call `add_entry` directly."""
        return self.add is self._direct

    def skip_before(self, positions: Mapping[str, Position]) -> None:
        """After a restart from min(`positions`): drop each stream's entries before its own position (they
        were shipped before the restart). Call before the first `add`."""
        self._skip = {s: position_key(p) for s, p in positions.items()}
        if self._skip:
            self.add = self._add_skipping

    def flush_expired(self, now: float) -> None:
        """Ship multi-line groups that got no line for more than `flush_timeout_secs` (`now`: monotonic)."""
        timeout = self._timeout
        for st in list(self._streams.values()):
            if st.state:
                if st.since == 0.0:
                    st.since = _monotonic()
                if now - st.since > timeout:
                    self._close_all(st)

    def flush(self) -> None:
        """The container exited: ship everything open; a dangling partial ships flagged INCOMPLETE."""
        for st in list(self._streams.values()):
            if st.parts is not None:
                line, flags, ts, pos = self._join(st, "", complete=False)
                self._line(st, ts, line, pos, flags | INCOMPLETE)
            self._close_all(st)

    def flush_complete(self) -> None:
        """On shutdown: ship open multi-line groups (their lines are all complete) but keep dangling partials
        open, so the checkpoint stays before them. Without this, a line held back in case a stack trace
        follows would pin the checkpoint, and the other stream's later events would be read twice."""
        for st in list(self._streams.values()):
            self._close_all(st)

    def has_open(self) -> bool:
        return any(st.state or st.parts is not None for st in self._streams.values())

    # --- the general path ------------------------------------------------------------------------------

    def _add_skipping(self, timestamp: str, stream: str, text: str, position: Position) -> None:
        skip = self._skip
        key = skip.get(stream)
        if key is not None:
            if position_key(position) < key:
                return
            del skip[stream]
            if not skip:
                self.add = self._direct  # back to the fast path
        self.add_entry(timestamp, stream, text, position)

    def _add_slow(self, st: _Stream, ts: str, text: str, pos: Position) -> None:
        if not text:
            return
        if text[-1] != "\n":
            self._partial(st, ts, text, pos)
            return
        body = text[:-1]
        if st.parts is not None:
            line, flags, ts, pos = self._join(st, body, complete=True)
        else:
            line = body[:-1] if body[-1:] == "\r" else body
            flags = 0
            if len(line) > self._short:
                n = utf8_len(line)
                if n > self.max_bytes:
                    line = cut_utf8(line, self.max_bytes)
                    flags = TRUNCATED
                    event_truncated(self.metrics, self.container, WHERE, n, self.max_bytes)
        self._line(st, ts, line, pos, flags)

    def _partial(self, st: _Stream, ts: str, text: str, pos: Position) -> None:
        """One 16 KiB partial entry: kept until the chain passes max_event_bytes, then only counted."""
        n = utf8_len(text)
        parts = st.parts
        if parts is None:
            st.parts = [text]
            st.pts = ts
            st.ppos = pos
            st.pbytes = n
            st.pextra = 0
        elif st.pbytes <= self.max_bytes:
            parts.append(text)
            st.pbytes += n
        else:
            st.pextra += n
        st.pcr = text[-1] == "\r"

    def _join(self, st: _Stream, body: str, complete: bool) -> tuple[str, int, str, Position]:
        """End the partial chain with `body` (the last entry without its newline)."""
        parts = st.parts
        assert parts is not None
        n = utf8_len(body)
        if st.pbytes <= self.max_bytes:
            parts.append(body)
            st.pbytes += n
        else:
            st.pextra += n
        total = st.pbytes + st.pextra
        line = "".join(parts)
        if complete and (body[-1] == "\r" if body else st.pcr):  # "\r\n" split across entries too
            total -= 1
            if not st.pextra:
                line = line[:-1]
        flags = PARTIAL
        if total > self.max_bytes:
            line = cut_utf8(line, self.max_bytes)
            flags |= TRUNCATED
            event_truncated(self.metrics, self.container, WHERE, total, self.max_bytes)
        ts, pos = st.pts, st.ppos
        st.parts = None
        st.pbytes = st.pextra = 0
        return line, flags, ts, pos

    def _line(self, st: _Stream, ts: str, line: str, pos: Position, flags: int) -> None:
        """One complete line (joined, cut, without its newline) through JSON and multi-line handling."""
        if line[:1] == "{":  # a JSON log line is never a continuation and never a head
            self._close_all(st)
            self._emit_json(st, ts, line, flags)
            return
        if self._auto:
            state = st.state
            if state > HEAD:
                ns = next_state(state, line)
                if ns:
                    self._append(st, ts, pos, line, flags, ns)
                    return
                self._close(st)  # the trace is over; a tentative tail comes back as a held line
                state = st.state
            k = start_state(line)
            if state == HEAD and k in JOINS_HEAD:
                self._append(st, ts, pos, line, flags, k)
                return
            if state:
                self._close(st)
            self._open(st, ts, pos, line, flags, HEAD if k == JAVA else k)
            return
        start = self._start
        if start is not None:
            if st.state and not start(line):
                self._append(st, ts, pos, line, flags, PATTERN)
                return
            self._close(st)
            self._open(st, ts, pos, line, flags, PATTERN)
            return
        self._emit(st, ts, line, flags, None)

    def _open(self, st: _Stream, ts: str, pos: Position, line: str, flags: int, state: int) -> None:
        st.state = state
        st.head = line
        st.lines = None
        st.tent = None
        st.ts = ts
        st.pos = pos
        st.flags = flags
        st.since = 0.0

    def _append(self, st: _Stream, ts: str, pos: Position, line: str, flags: int, ns: int) -> None:
        """Add a line to the open group; a group that would pass max_event_bytes ships first."""
        lines = st.lines
        total = (utf8_len(st.head) if lines is None else st.nbytes) + 1 + (
            len(line) if line.isascii() else utf8_len(line))
        if total > self.max_bytes:
            self._close(st)
            self._line(st, ts, line, pos, flags)
            return
        if lines is None:
            lines = st.lines = [st.head, line]
        else:
            lines.append(line)
        st.nbytes = total
        st.flags |= flags
        st.state = ns & STATE_MASK
        if ns & TENTATIVE:
            if st.tent is None:
                st.tent = []
            st.tent.append((ts, pos, line, flags))
        else:
            st.tent = None
        st.since = 0.0
        if len(lines) >= self._max_lines:
            self._close(st)

    def _close(self, st: _Stream) -> None:
        """Ship the open group. A tentative tail (blank lines no chained trace followed) is taken off and
        handled again as ordinary lines."""
        if not st.state:
            return
        lines = st.lines
        tent = st.tent
        if lines is None:
            msg = st.head
            flags = st.flags
        else:
            if tent:
                del lines[-len(tent):]
            msg = "\n".join(lines) if len(lines) > 1 else lines[0]
            flags = st.flags | MULTILINE if len(lines) > 1 else st.flags
        ts = st.ts
        st.state = IDLE
        st.head = ""
        st.lines = None
        st.tent = None
        self._emit(st, ts, msg, flags, None)
        if tent:
            for t_ts, t_pos, t_line, t_flags in tent:
                self._line(st, t_ts, t_line, t_pos, t_flags)

    def _close_all(self, st: _Stream) -> None:
        while st.state:
            self._close(st)

    def _emit_json(self, st: _Stream, ts: str, line: str, flags: int) -> None:
        fields = None
        msg = line
        if self._json:
            try:
                fields = loads(line)
            except JSONDecodeError:
                self._json_unparsed += 1
            else:
                if self._message_key:
                    v = fields.get(self._message_key)
                    if type(v) is str:
                        msg = v
        self._emit(st, ts, msg, flags, fields)

    def _emit(self, st: _Stream, ts: str, msg: str, flags: int, fields: dict[str, Any] | None) -> None:
        if ts == st.last_ts:
            st.seq = seq = st.seq + 1
        else:
            st.last_ts = ts
            st.seq = seq = 0
        self.out.append(Event(ts, msg, st.name, fields, flags, seq))
        self._held += held_bytes(msg, fields)
