"""The Lumberjack v2 codec against exact expected bytes (the beats input's PROTOCOL.md)."""

from __future__ import annotations

import importlib.util
import zlib

import pytest

from shipper.sinks.logstash.lumberjack import (
    ACK_FRAME_BYTES,
    DEFLATE_BACKEND,
    FRAME_ACK,
    FRAME_COMPRESSED,
    FRAME_JSON,
    FRAME_WINDOW,
    VERSION,
    Frames,
    ProtocolError,
    ack_frame,
    decode_frames,
    deflate,
    encode_window,
    isal_level,
    json_frames,
    parse_ack,
    window_frame,
    window_parts,
)
from tests.conftest import IN_CI


def test_frame_constants() -> None:
    assert (VERSION, FRAME_WINDOW, FRAME_JSON, FRAME_COMPRESSED, FRAME_ACK) == (b"2", b"W", b"J", b"C", b"A")
    assert ACK_FRAME_BYTES == 6


def test_window_frame() -> None:
    assert window_frame(3) == b"2W\x00\x00\x00\x03"
    assert window_frame(0x01020304) == b"2W\x01\x02\x03\x04"


def test_json_frames_are_numbered_from_one() -> None:
    assert json_frames([b'{"a":1}', b"{}"]) == (b"2J\x00\x00\x00\x01\x00\x00\x00\x07" + b'{"a":1}'
                                                 + b"2J\x00\x00\x00\x02\x00\x00\x00\x02" + b"{}")
    assert json_frames([]) == b""


def test_documents_in_two_parts_are_framed_in_windows_numbered_from_one() -> None:
    docs = [b'{"n":%d,"m":"%s","c":1}' % (i, "日本".encode() * i) for i in range(7)]
    parts = [([d[:-7] for d in docs[:3]], b',"c":1}'), ([], b"x"), ([d[:-7] for d in docs[3:]], b',"c":1}')]
    frames = Frames.build(parts, 3)
    assert len(frames) == 7 and frames.docs == docs
    assert frames.windows == [json_frames(docs[0:3]), json_frames(docs[3:6]), json_frames(docs[6:])]
    assert [Frames.build(parts, n).windows for n in (7, 100)] == [[json_frames(docs)]] * 2


def test_a_window_cut_where_it_was_built_is_sent_as_built_and_any_other_is_numbered_again() -> None:
    docs = [b'{"n":%d}' % i for i in range(7)]
    frames = Frames.build([(docs, b"")], 3)
    assert frames.window(range(3, 6)) is frames.windows[1]
    assert frames.window(range(6, 7)) is frames.windows[2]
    assert frames.window(range(2, 5)) == json_frames(docs[2:5])  # sequences 1..3 again
    assert frames.window(range(3, 5)) == json_frames(docs[3:5])
    assert decode_frames(frames.window(range(0, 7))) == [(b"J", i + 1, d) for i, d in enumerate(docs)]
    whole = Frames.of(docs[1:3])
    assert whole.windows == [json_frames(docs[1:3])] and whole.window(range(2)) is whole.windows[0]
    assert len(Frames.of([])) == 0 and Frames.of([]).docs == []


def test_plain_window() -> None:
    assert encode_window([b'{"m":"x"}'], 0) == (b"2W\x00\x00\x00\x01"
                                                 b"2J\x00\x00\x00\x01\x00\x00\x00\x09" b'{"m":"x"}')


def test_compressed_window() -> None:
    """The frames around the zlib data are exact; the zlib data itself depends on the deflater installed
    (isal, zlib-ng or zlib): any inflater must read it back to exactly the json frames."""
    docs = [b'{"n":1}', b'{"n":2}']
    frames = b"2J\x00\x00\x00\x01\x00\x00\x00\x07" b'{"n":1}' b"2J\x00\x00\x00\x02\x00\x00\x00\x07" b'{"n":2}'
    data = deflate(frames, 3)
    assert encode_window(docs, 3) == b"2W\x00\x00\x00\x02" + b"2C" + len(data).to_bytes(4, "big") + data
    assert zlib.decompress(data) == frames  # the standard inflater, as Logstash's java.util.zip
    assert window_parts(2, frames, data) == [b"2W\x00\x00\x00\x02", b"2C" + len(data).to_bytes(4, "big"), data]
    assert window_parts(2, frames, None) == [b"2W\x00\x00\x00\x02", frames]


def test_the_fastest_deflater_installed_is_used() -> None:
    """isal, else zlib-ng, else zlib; CI installs the `fast` extra, so isal."""
    found = [name for name, module in (("isal", "isal"), ("zlib-ng", "zlib_ng"))
             if importlib.util.find_spec(module) is not None]
    assert (found[0] if found else "zlib") == DEFLATE_BACKEND
    if IN_CI:
        assert DEFLATE_BACKEND == "isal"


@pytest.mark.parametrize("level", range(10))
def test_every_level_gives_what_any_inflater_reads(level: int) -> None:
    frames = json_frames([b'{"n":%d,"m":"%s"}' % (i, b"x" * (i % 50)) for i in range(500)])
    assert zlib.decompress(deflate(frames, level)) == frames
    assert [isal_level(n) for n in range(10)] == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_multibyte_documents_are_counted_in_bytes() -> None:
    doc = '{"m":"日本"}'.encode()
    assert json_frames([doc])[6:10] == len(doc).to_bytes(4, "big") == b"\x00\x00\x00\x0e"


def test_ack_frames() -> None:
    assert ack_frame(7) == b"2A\x00\x00\x00\x07"
    assert parse_ack(b"2A\x00\x00\x00\x07") == 7
    assert parse_ack(b"2A\xff\xff\xff\xff") == 0xFFFFFFFF
    assert parse_ack(b"2A\x00\x00\x00\x00") == 0  # a keep-alive


@pytest.mark.parametrize("frame", [b"1A\x00\x00\x00\x01", b"2W\x00\x00\x00\x01", b"2A\x00\x00\x01", b""])
def test_anything_but_an_ack_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_ack(frame)


@pytest.mark.parametrize("level", [0, 1, 9])
def test_decode_reads_back_what_encode_wrote(level: int) -> None:
    docs = [b'{"i":%d}' % i for i in range(5)]
    frames = decode_frames(encode_window(docs, level))
    assert frames[0] == (b"W", 5, b"")
    assert frames[1:] == [(b"J", i + 1, d) for i, d in enumerate(docs)]
