"""The zlib format by the fastest deflater installed: whatever the backend, any zlib inflater reads it."""

from __future__ import annotations

import zlib

import pytest

from shipper.deflate import BACKEND, InflateError, deflate, inflate
from tests.conftest import IN_CI


def test_the_standard_inflater_reads_every_level() -> None:
    data = b"".join(b'{"n":%d,"log":"%s"}\n' % (i, b"ab" * (i % 40)) for i in range(2000))
    for level in range(10):
        assert zlib.decompress(deflate(data, level)) == data
        assert inflate(zlib.compress(data, level)) == data


def test_what_is_not_zlib_raises_the_backends_error() -> None:
    with pytest.raises(InflateError):
        inflate(b"not zlib at all")


def test_ci_has_the_fast_backend() -> None:
    if IN_CI:
        assert BACKEND == "isal"
