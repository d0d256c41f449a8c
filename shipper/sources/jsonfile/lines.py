"""The per-line loop of the json-file reader: decode each Docker entry and hand it to the assembler.

A module of its own so that it can be compiled with the assembler (setup.py): compiled together, the call
into `LineAssembler` is a direct one, and the loop costs no interpreter dispatch per line. What is unusual
about a line (invalid JSON or UTF-8, NUL padding, missing keys, a field that is not a string) leaves the
loop through an exception and is handled by `bad`, off the fast path (see parse.py).

The fields' type check is `field + ""`: the same str back for a str (no copy), TypeError for anything else
orjson returns (number, bool, None, list, dict). The assembler must never see a non-string.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from shipper.transforms.assemble import LineAssembler

BAD = (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError)


def feed(asm: LineAssembler, lines: list[bytes], pos: int, bad: Callable[[bytes, int], bool]) -> int:
    """Add every line of `lines` (without its newline; the first starts at `pos`) to `asm`; return the
    position after the last. A line the fast path refuses goes to `bad(line, pos)`, which counts and skips
    it, or returns False when the line was fine after all: then the error was ours, and is raised."""
    loads = orjson.loads
    if not asm.direct():
        add = asm.add
        for line in lines:
            try:
                d = loads(line)
                add(d["time"] + "", d["stream"] + "", d["log"] + "", pos)
            except BAD:
                if not bad(line, pos):
                    raise
            pos += len(line) + 1
        return pos
    for line in lines:
        try:
            d = loads(line)
            asm.add_entry(d["time"] + "", d["stream"] + "", d["log"] + "", pos)
        except BAD:
            if not bad(line, pos):
                raise
        pos += len(line) + 1
    return pos
