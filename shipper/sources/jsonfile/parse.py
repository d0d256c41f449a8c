"""Docker json-file lines -> entries for the assembler, and why a line is not one.

The hot loop (~400,000 lines/s) is batch-shaped: one `bytes.split` per chunk, then per line one
`orjson.loads` and one `assembler.add`; everything unusual (invalid JSON or UTF-8, NUL padding, missing
keys, a field that is not a string) leaves the loop through an exception and is classified off the fast
path. The loop is a method of the reader (mixed in from here) so that it reads and advances the reader's
state in place, with no call or lookup per line more than before.

The fields' type check is `field + ""`: the same str back for a str (no copy; ~7 ns), TypeError for anything
else orjson returns (number, bool, None, list, dict), cheaper than isinstance. The assembler must never see a
non-string: an int `time` or `stream` would become an Event's, and a falsy `log` (0, false, null, []) would
be dropped as an empty entry, neither of them counted.
"""

from __future__ import annotations

from typing import Any

import orjson

from shipper.sources.base import SourceContext
from shipper.sources.jsonfile.lines import BAD, feed
from shipper.telemetry import events
from shipper.transforms.assemble import LineAssembler

# dockerd writes at most 16 KiB of text per entry; JSON escaping can grow that 6-fold, plus the keys and
# attributes. A longer line is not an entry dockerd wrote: it is skipped without being held in memory whole.
MAX_ENTRY_BYTES = 256 * 1024
# the path is checked for a new live file after this many lines: a 64 KiB file rotates in ~2 ms in a burst,
# and a file must be opened before max-file rotations delete it
_LOOK_EVERY = 256


class _Parser:
    """The parsing half of `JsonFileSource`, which provides the state below and `_look`."""

    ctx: SourceContext
    _label: str
    _asm: LineAssembler
    _vbase: int  # the current file's generation, shifted
    _consumed: int  # first byte of the current file not yet handed to the assembler
    _tail: bytes  # an entry whose newline has not been written yet
    _skip: int  # > 0: inside an over-long line, this many bytes of it dropped so far

    def _look(self) -> None:
        """Open the live file if it is one we do not hold yet (dockerd rotated)."""
        raise NotImplementedError

    def _parse(self, data: bytes) -> None:
        """Hand every complete entry of `data` (plus the kept tail) to the assembler."""
        if self._skip:
            nl = data.find(b"\n")
            if nl < 0:
                self._skip += len(data)
                return
            self._skip += nl + 1
            events.line_invalid(self.ctx.metrics, self._label, "line_too_long", data[:nl][-120:])
            self._consumed += self._skip
            self._skip = 0
            data = data[nl + 1:]
        if self._tail:
            data = self._tail + data
        pos = self._vbase + self._consumed
        lines = data.split(b"\n")
        tail = lines.pop()
        m = self.ctx.metrics
        m.inc("shipper_entries_read_total", len(lines), container=self._label)
        m.inc("shipper_bytes_read_total", len(data) - len(tail), container=self._label)
        if len(data) > MAX_ENTRY_BYTES and lines and max(map(len, lines)) > MAX_ENTRY_BYTES:
            self._parse_careful(lines, pos)
        else:
            n = len(lines)
            for start in range(0, n, _LOOK_EVERY):
                if start:
                    self._look()
                pos = feed(self._asm, lines[start:start + _LOOK_EVERY] if n > _LOOK_EVERY else lines, pos, self._bad)
        self._consumed += len(data) - len(tail)
        if len(tail) > MAX_ENTRY_BYTES:
            self._skip = len(tail)
            self._tail = b""
        else:
            self._tail = tail

    def _parse_careful(self, lines: list[bytes], pos: int) -> None:
        """The loop for a chunk holding an over-long line (only with read_chunk_bytes > MAX_ENTRY_BYTES)."""
        for line in lines:
            if len(line) > MAX_ENTRY_BYTES:
                events.line_invalid(self.ctx.metrics, self._label, "line_too_long", line[:120])
            else:
                try:
                    self._add(orjson.loads(line), pos)
                except BAD:
                    if not self._bad(line, pos):
                        raise
            pos += len(line) + 1

    def _add(self, d: Any, pos: int) -> None:
        self._asm.add(d["time"] + "", d["stream"] + "", d["log"] + "", pos)

    def _bad(self, line: bytes, pos: int) -> bool:
        """Count and skip a line the fast path refused; False when the line was fine (so the error is ours).

        Leading NUL bytes are what a crash leaves where the file system had allocated but not written:
        the padding is counted and an entry behind it is still delivered.
        """
        m = self.ctx.metrics
        stripped = line.lstrip(b"\x00")
        if len(stripped) != len(line):
            events.line_invalid(m, self._label, "nul_bytes", line[:120])
            if not stripped:
                return True
            line = stripped  # its position stays the padding's start: a re-read strips it again
            reason, d = _classify(line)
            if reason is None:
                self._add(d, pos)
                return True
        else:
            reason, d = _classify(line)
            if reason is None:
                return False
        events.line_invalid(m, self._label, reason, line[:120])
        return True


def _classify(line: bytes) -> tuple[str | None, Any]:
    """Why a line is not a json-file entry (None: it is one), and the parsed object."""
    if not line.strip():
        return "empty_line", None
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8", None
        if b"\x00" in line:
            return "nul_bytes", None
        return "invalid_json", None
    if not isinstance(d, dict):
        return "not_an_object", None
    for key in ("log", "stream", "time"):
        if key not in d:
            return "missing_field", None
        if not isinstance(d[key], str):
            return "wrong_type", None
    return None, d
