"""The zlib format, by the fastest deflater installed: what the Logstash sink's compressed windows and the
disk spool's compressed records are written with, and read back by any zlib inflater.

The `fast` extra brings ISA-L (`isal`), which deflates the reference mix about 3.5 times as fast as zlib-ng
at zlib's level 3 and within 5% of its size, and zlib-ng, about 1.4 times as fast as the standard library's
zlib; without them the standard library's zlib does it all.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import cast


def isal_level(level: int) -> int:
    """ISA-L has levels 0 to 3: zlib's 1-3 take its 1 (about zlib's 3 in size), 4-6 its 2, 7-9 its 3."""
    return 0 if level <= 0 else 1 if level <= 3 else 2 if level <= 6 else 3


Backend = tuple[Callable[[bytes, int], bytes], Callable[[bytes], bytes], type[Exception], str]


def _backend() -> Backend:
    try:
        from isal import isal_zlib

        def isal_deflate(data: bytes, level: int) -> bytes:
            return bytes(isal_zlib.compress(data, isal_level(level)))

        def isal_inflate(data: bytes) -> bytes:
            return bytes(isal_zlib.decompress(data))
        return cast(Backend, (isal_deflate, isal_inflate, isal_zlib.error, "isal"))
    except ImportError:  # pragma: no cover - depends on what is installed
        pass
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - depends on what is installed
        return zlib.compress, zlib.decompress, zlib.error, "zlib"
    return cast(Backend, (zlib_ng.compress, zlib_ng.decompress, zlib_ng.error, "zlib-ng"))


deflate, inflate, InflateError, BACKEND = _backend()  # InflateError: what `inflate` raises on data not zlib
