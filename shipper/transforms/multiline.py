"""Which lines belong together: the stack trace state machine behind `multiline.mode = "auto"`.

The rules follow the shape of Google's exception detector and Fluent Bit's built-in java/python/go parsers
(a start rule, then per-state continuation rules), with one addition they lack: a Java exception line
(`java.lang.IllegalStateException: card declined`) or a bare `\\tat ...` frame also takes the line just
before it, the logger's own "payment failed" line, so the whole record ships as one event.

The assembler keeps one state per container stream. While the state is IDLE or HEAD, a line is classified
with `start_state()`; inside a trace, `next_state()` says whether the line continues it. Lines are only
ever looked at from their first characters on, and cheap checks run before any regex, because this runs
for every log line of every container.
"""

from __future__ import annotations

import re
from typing import Final

# States. IDLE: nothing held. HEAD: one plain line held, which a following exception line may join.
IDLE: Final = 0
HEAD: Final = 1
PATTERN: Final = 2  # mode = "pattern": a group is open, any non-start line continues it
JAVA_EXC: Final = 3  # after an exception line or "Caused by:"
JAVA: Final = 4  # after an "at ..." frame
JAVA_UNCAUGHT: Final = 5  # after 'Exception in thread "main" ...': as JAVA_EXC, but never joins a held line
PY_TB: Final = 6  # inside "Traceback (most recent call last):"
PY_END: Final = 7  # after the final "ValueError: x" line: only a chained traceback may follow
PY_GAP: Final = 8  # blank line after PY_END (tentative: kept only if a chain announcement follows)
PY_CHAIN: Final = 9  # after "During handling of the above exception..." / "The above exception was..."
GO_PANIC: Final = 10  # after "panic: ..." / "fatal error: ..."
GO_GAP: Final = 11  # blank line before "goroutine N [...]:" (tentative)
GO_FRAMES: Final = 12  # function and "\t/path.go:12 +0x1d" lines
GO_DONE: Final = 13  # after "exit status 2": the trace is over

# next_state() answers: 0 = not a continuation; a state > 0 = continuation, kept; TENTATIVE | state = a
# continuation kept only if a later line confirms it (blank lines between chained tracebacks).
TENTATIVE: Final = 0x100
STATE_MASK: Final = 0xFF

# First characters after which a line can be neither a trace start nor a continuation in HEAD/IDLE state:
# digits (timestamps), brackets and punctuation that begin log prefixes. Lines starting with a letter,
# blank or tab take the slower checks.
PLAIN_FIRST: Final = frozenset("0123456789[<(\"'#*+-=|/>@!%&~")

_JAVA_FRAME_PREFIXES: Final = ("\tat ", "    at ", "  at ", "\t... ", "        at ")
_JAVA_FRAME = re.compile(r"[\t ]+(?:at |\.\.\. \d+ (?:more|common frames omitted))")
_JAVA_CAUSE = re.compile(r"[\t ]*(?:Caused by|Suppressed|nested exception is):")
# An exception line of Java, C#, Scala, Kotlin: a dotted class name ending in Exception/Error/Throwable.
_START = re.compile(
    r"(?P<py>Traceback \(most recent call last\):$)"
    r"|(?P<go>(?:panic|fatal error): )"
    r"|(?P<uncaught>Exception in thread \")"
    r"|(?P<exc>(?:[A-Za-z_$][\w$]*\.)+[\w$]*(?:Exception|Error|Throwable|Fault)\b(?::|$))"
    r"|(?P<cause>(?:Caused by|Suppressed): )"
)
_PY_FINAL = re.compile(r"(?:[^\s.():]+\.)*[^\s.():]+(?::|$)")
_PY_CHAIN = ("During handling of the above exception, another exception occurred:",
             "The above exception was the direct cause of the following exception:")
_GO_GOROUTINE = re.compile(r"goroutine \d+ \[[^\]]*\]:$")
_GO_EXIT = re.compile(r"exit status \d+$")


def start_state(line: str) -> int:
    """Classify a line seen in IDLE/HEAD state.

    HEAD: a plain line (held, it may be a head); JAVA_EXC: an exception or "Caused by:" line (joins a held
    head); JAVA: an indented "at ..." frame (joins a held head, else is a plain line); JAVA_UNCAUGHT, PY_TB,
    GO_PANIC: a trace start (the held head is shipped on its own first).
    """
    c = line[:1]
    if c == "\t" or c == " ":
        if line.startswith(_JAVA_FRAME_PREFIXES) or _JAVA_FRAME.match(line):
            return JAVA
        return HEAD
    if not c or c in PLAIN_FIRST:
        return HEAD
    m = _START.match(line)
    if m is None:
        return HEAD
    kind = m.lastgroup
    if kind == "py":
        return PY_TB
    if kind == "go":
        return GO_PANIC
    if kind == "uncaught":
        return JAVA_UNCAUGHT
    return JAVA_EXC


def next_state(state: int, line: str) -> int:
    """Continue a trace in `state` with `line`: 0 if the line does not belong to it (see TENTATIVE)."""
    c = line[:1]
    if JAVA_EXC <= state <= JAVA_UNCAUGHT:
        if c == "\t" or c == " ":
            if line.startswith(_JAVA_FRAME_PREFIXES) or _JAVA_FRAME.match(line):
                return JAVA
            if _JAVA_CAUSE.match(line):
                return JAVA_EXC
            return 0
        if c == "C" or c == "S" or c == "n":
            return JAVA_EXC if _JAVA_CAUSE.match(line) else 0
        return 0
    if state == PY_TB:
        if c == " " or c == "\t":
            return PY_TB
        if c and c != "{" and _PY_FINAL.match(line):
            return PY_END
        return 0
    if state == PY_END:
        return TENTATIVE | PY_GAP if not line else 0
    if state == PY_GAP:
        return PY_CHAIN if line in _PY_CHAIN else 0
    if state == PY_CHAIN:
        if not line:
            return PY_CHAIN
        return PY_TB if line == "Traceback (most recent call last):" else 0
    if state == GO_PANIC:
        if not line:
            return TENTATIVE | GO_GAP
        if c == "\t" or c == " " or line.startswith("[signal "):
            return GO_PANIC
        return GO_FRAMES if _GO_GOROUTINE.match(line) else 0
    if state in (GO_GAP, GO_FRAMES):
        if c == "\t":
            return GO_FRAMES
        if not line:
            return TENTATIVE | GO_GAP
        if _GO_GOROUTINE.match(line):
            return GO_FRAMES
        if _GO_EXIT.match(line):
            return GO_DONE
        if state == GO_FRAMES and c != " " and (
                line.startswith(("created by ", "...additional frames elided..."))
                or (line.endswith(")") and "(" in line)):
            return GO_FRAMES
        return 0
    return 0


# Joinable: a held HEAD line takes these as its continuation.
JOINS_HEAD: Final = frozenset((JAVA_EXC, JAVA))
