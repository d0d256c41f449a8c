"""Lumberjack v2, the wire format of Filebeat's logstash output and Logstash's beats input (the input's
PROTOCOL.md). Pure functions from documents to bytes and from bytes to ACKs; no sockets.

Every frame starts with the version byte and a frame type; integers are 32-bit unsigned, big-endian:

    window      '2' 'W' count                     writer: how many data frames follow before it waits for an ACK
    json        '2' 'J' sequence length document  writer: one event; sequences run 1..count in each window
    compressed  '2' 'C' length zlib-data          writer: zlib of whole frames (the json frames of a window)
    ack         '2' 'A' sequence                  reader: every frame up to and including `sequence` is handled

A window is sent as its window frame followed by its json frames, or by one compressed frame holding them.
Logstash answers each window with the ACK of its last sequence once its pipeline has taken the events; while
it is busy it sends ACKs of sequence 0 (keep-alives) so the writer does not time out.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from shipper.deflate import BACKEND, deflate, isal_level  # noqa: F401 - isal_level: the sink's levels

DEFLATE_BACKEND = BACKEND  # any zlib inflater (Logstash's java.util.zip) reads what `deflate` writes

VERSION = b"2"
FRAME_WINDOW = b"W"
FRAME_JSON = b"J"
FRAME_COMPRESSED = b"C"
FRAME_ACK = b"A"
ACK_FRAME_BYTES = 6  # '2' 'A' and the sequence
KEEPALIVE_SEQUENCE = 0  # an ACK of sequence 0 acknowledges nothing: Logstash is busy, the connection is alive
MAX_SEQUENCE = 0xFFFFFFFF

_WINDOW = struct.Struct(">2sI")
_JSON = struct.Struct(">2sII")
_ACK = struct.Struct(">2sI")
_SIZE = struct.Struct(">I")
_WINDOW_TYPE = VERSION + FRAME_WINDOW
_JSON_TYPE = VERSION + FRAME_JSON
_COMPRESSED_TYPE = VERSION + FRAME_COMPRESSED
_ACK_TYPE = VERSION + FRAME_ACK


class ProtocolError(ValueError):
    """The peer sent something that is not a Lumberjack v2 ACK."""


def window_frame(count: int) -> bytes:
    return _WINDOW.pack(_WINDOW_TYPE, count)


def json_frames(docs: Sequence[bytes]) -> bytes:
    """The json frames of one window: `docs` numbered 1..len(docs)."""
    return b"".join(Frames.build([(docs, b"")], max(1, len(docs))).windows)


Documents = Sequence[tuple[Sequence[bytes], bytes]]  # (heads, tail): each head + tail is one document


class Frames:
    """The json frames of `count` documents, built once, in windows of `size`: the sequences run from 1 in
    each. A window cut at those bounds is sent as built; the documents are split out only for another cut
    (a host whose window shrank, a retry of what was not acked) and numbered again from 1 there."""

    __slots__ = ("_docs", "count", "size", "windows")

    def __init__(self, windows: list[bytes], count: int, size: int) -> None:
        self.windows = windows
        self.count = count
        self.size = size
        self._docs: list[bytes] | None = None

    @classmethod
    def of(cls, docs: Sequence[bytes]) -> Frames:
        """Whole documents in one window."""
        return cls([json_frames(docs)] if docs else [], len(docs), max(1, len(docs)))

    @classmethod
    def build(cls, documents: Documents, size: int) -> Frames:
        """Documents given in two parts (an encoder's per-event head and the tail it shares with others),
        framed in windows of `size` without joining each document first."""
        pack, kind = _JSON.pack, _JSON_TYPE
        windows: list[bytes] = []
        parts: list[bytes] = []
        append = parts.append
        seq = count = 0
        for heads, tail in documents:
            extra = len(tail)
            count += len(heads)
            for head in heads:
                seq += 1
                append(pack(kind, seq, len(head) + extra))
                append(head)
                append(tail)
                if seq == size:
                    windows.append(b"".join(parts))
                    parts.clear()
                    seq = 0
        if parts:
            windows.append(b"".join(parts))
        return cls(windows, count, size)

    def __len__(self) -> int:
        return self.count

    @property
    def docs(self) -> list[bytes]:
        if self._docs is None:
            unpack, docs = _SIZE.unpack_from, []
            for data in self.windows:
                pos, end = 0, len(data)
                while pos < end:
                    (n,) = unpack(data, pos + 6)
                    docs.append(data[pos + 10:pos + 10 + n])
                    pos += 10 + n
            self._docs = docs
        return self._docs

    def window(self, piece: range) -> bytes:
        """The json frames of the documents in `piece`, numbered from 1."""
        first, rest = divmod(piece.start, self.size)
        if not rest and len(piece) == min(self.size, self.count - piece.start):
            return self.windows[first]
        return json_frames(self.docs[piece.start:piece.stop])


def compressed_header(size: int) -> bytes:
    """What precedes `size` bytes of zlib data in a compressed frame."""
    return _WINDOW.pack(_COMPRESSED_TYPE, size)


def window_parts(count: int, frames: bytes, deflated: bytes | None) -> list[bytes]:
    """What one window of `count` events puts on the wire, in the order written (no piece is copied into
    another): the window frame, then its json frames `frames` as they are, or their zlib `deflated` in one
    compressed frame."""
    if deflated is None:
        return [window_frame(count), frames]
    return [window_frame(count), compressed_header(len(deflated)), deflated]


def encode_window(docs: Sequence[bytes], level: int) -> bytes:
    """Everything one window puts on the wire: the window frame, then the json frames, compressed into one
    frame when `level` is 1..9, plain when 0."""
    frames = json_frames(docs)
    return b"".join(window_parts(len(docs), frames, deflate(frames, level) if level else None))


def ack_frame(sequence: int) -> bytes:
    """An ACK as Logstash writes it (for tests and test servers)."""
    return _ACK.pack(_ACK_TYPE, sequence)


def parse_ack(frame: bytes) -> int:
    """The sequence of one ACK frame (exactly ACK_FRAME_BYTES long); ProtocolError for anything else."""
    if len(frame) != ACK_FRAME_BYTES:
        raise ProtocolError(f"an ACK frame is {ACK_FRAME_BYTES} bytes, got {len(frame)}")
    kind, seq = _ACK.unpack(frame)
    if kind != _ACK_TYPE:
        raise ProtocolError(f"expected an ACK frame (b'2A'), got {kind!r}")
    return int(seq)


def decode_frames(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """(frame type, sequence or count, payload) of every writer frame in `data`, compressed frames opened:
    the reading half, for the test servers and the tests of the writing half."""
    out: list[tuple[bytes, int, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] != VERSION:
            raise ProtocolError(f"bad version byte {data[pos:pos + 1]!r} at {pos}")
        kind = data[pos + 1:pos + 2]
        if kind == FRAME_WINDOW:
            (count,) = struct.unpack_from(">I", data, pos + 2)
            out.append((kind, count, b""))
            pos += 6
        elif kind == FRAME_JSON:
            seq, size = struct.unpack_from(">II", data, pos + 2)
            out.append((kind, seq, data[pos + 10:pos + 10 + size]))
            pos += 10 + size
        elif kind == FRAME_COMPRESSED:
            (size,) = struct.unpack_from(">I", data, pos + 2)
            out.extend(decode_frames(zlib.decompress(data[pos + 6:pos + 6 + size])))
            pos += 6 + size
        else:
            raise ProtocolError(f"unknown frame type {kind!r} at {pos}")
    return out
