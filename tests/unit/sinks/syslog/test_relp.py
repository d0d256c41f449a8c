"""RELP: frames to the exact byte, the parser fed in pieces, and the client's session against a scripted
receiver on loopback (window, acknowledgements, refusals, serverclose), then through the sink."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shipper.config import load_dict
from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import Partial, SinkContext
from shipper.sinks.syslog.relp import (
    DEFAULT_WINDOW,
    OFFERS,
    Frame,
    FrameParser,
    RelpError,
    RelpRefused,
    RelpTransport,
    connect_relp,
    encode_frame,
    next_txnr,
    parse_offers,
    parse_response,
)
from shipper.sinks.syslog.sink import DEFAULT_MAX_MESSAGE_BYTES, SyslogConfig, SyslogSink
from shipper.sinks.syslog.transport import Address, parse_address
from shipper.telemetry.metrics import Metrics

LIBRELP_OPEN_RSP = (b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\n"
                    b"commands=syslog\n")  # what rsyslog 8.2302's imrelp (librelp 1.11) answers, to the byte
MSG = b"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout - hello\nworld"


# --- frames ---

def test_open_frame_to_the_byte() -> None:
    assert encode_frame(1, b"open", OFFERS) == (
        b"1 open 52 relp_version=0\nrelp_software=shipper\ncommands=syslog\n")


def test_syslog_frame_carries_the_message_bare() -> None:
    assert encode_frame(2, b"syslog", MSG) == b"2 syslog 70 " + MSG + b"\n"
    assert len(MSG) == 70


def test_close_frame_has_no_data() -> None:
    assert encode_frame(999999999, b"close") == b"999999999 close 0\n"


def test_txnr_wraps_after_nine_digits() -> None:
    assert [next_txnr(t) for t in (1, 2, 999999998, 999999999)] == [2, 3, 999999999, 1]


def test_parse_a_librelp_open_answer() -> None:
    frames = FrameParser().feed(LIBRELP_OPEN_RSP)
    assert frames == [Frame(1, "rsp", LIBRELP_OPEN_RSP[9:-1])]
    code, text, data = parse_response(frames[0].data)
    assert (code, text) == (200, "OK")
    assert parse_offers(data) == {"relp_version": "0", "relp_software": "librelp,1.11.0,http://librelp.adiscon.com",
                                  "commands": "syslog"}


def test_parse_acks_serverclose_and_a_refusal() -> None:
    stream = b"2 rsp 6 200 OK\n3 rsp 9 500 error\n4 rsp 0\n0 serverclose 0\n"
    assert FrameParser().feed(stream) == [Frame(2, "rsp", b"200 OK"), Frame(3, "rsp", b"500 error"),
                                          Frame(4, "rsp", b""), Frame(0, "serverclose", b"")]
    assert parse_response(b"500 error") == (500, "error", b"")
    assert parse_response(b"200 OK") == (200, "OK", b"")
    assert parse_response(b"500") == (500, "", b"")


def test_every_split_of_a_stream_gives_the_same_frames() -> None:
    stream = (b"2 rsp 6 200 OK\n" + LIBRELP_OPEN_RSP + b"13 rsp 14 500 refused\n9 \n0 serverclose 0\n"
              + b"7 rsp 6 200 OK\n")
    whole = FrameParser().feed(stream)
    assert [f.txnr for f in whole] == [2, 1, 13, 0, 7]
    assert whole[2].data == b"500 refused\n9 "  # data is counted, never scanned: LF and digits inside are data
    for cut in range(1, len(stream)):
        p = FrameParser()
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == whole, cut
        assert p.pending == 0
    p = FrameParser()
    assert [f for i in range(len(stream)) for f in p.feed(stream[i:i + 1])] == whole  # byte by byte


def test_a_rsp_split_across_reads_waits_for_its_trailer() -> None:
    p = FrameParser()
    assert p.feed(b"2 rsp 6 200") == []
    assert p.feed(b" OK") == []  # the data is whole but the trailer has not come
    assert p.pending == len(b"2 rsp 6 200 OK")
    assert p.feed(b"\n3 r") == [Frame(2, "rsp", b"200 OK")]
    assert p.feed(b"sp 6 200 OK\n") == [Frame(3, "rsp", b"200 OK")]


def test_a_zero_length_frame_may_end_with_a_space() -> None:
    assert FrameParser().feed(b"0 serverclose 0 \n") == [Frame(0, "serverclose", b"")]


@pytest.mark.parametrize("junk", [
    b"HTTP/1.1 400 Bad Request\r\n",  # not a RELP receiver
    b"1234567890 rsp 6 200 OK\n",  # TXNR of 10 digits
    b"2 rsp 6 200 OK!",  # no LF after the data
    b"2 rsp 6\n",  # data announced, none sent
    b"2 rsp-x 6 200 OK\n",
    b"2 rsp 99999999 ",  # more than any response could need
    b"2  rsp 6 200 OK\n",
])
def test_junk_is_a_protocol_error(junk: bytes) -> None:
    with pytest.raises(RelpError) as info:
        FrameParser().feed(junk)
    assert isinstance(info.value, OSError)  # so the sink retries it like any connection failure


def test_a_response_needs_a_status_code() -> None:
    with pytest.raises(RelpError):
        parse_response(b"OK")


# --- a scripted receiver ---

Answer = Callable[["Receiver", Frame], bytes]


def ack_all(r: Receiver, f: Frame) -> bytes:
    return encode_frame(f.txnr, b"rsp", b"200 OK")


@dataclass
class Receiver:
    """A RELP receiver on loopback: answers `open` as librelp does, every other frame as `answer` says;
    records the bytes it got and the frames it has not answered yet."""

    answer: Answer = ack_all
    open_answer: bytes = LIBRELP_OPEN_RSP
    raw: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)
    held: list[Frame] = field(default_factory=list)  # frames `answer` left unanswered (b"")
    most_unanswered: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def address(self) -> Address:
        return parse_address(f"relp://127.0.0.1:{self.port}")

    def syslog(self) -> list[bytes]:
        return [f.data for f in self.frames if f.command == "syslog"]

    def send(self, data: bytes) -> None:
        for w in self.writers:
            w.write(data)

    def release(self) -> None:
        """Answer every held frame with 200 OK."""
        held, self.held = self.held, []
        self.send(b"".join(encode_frame(f.txnr, b"rsp", b"200 OK") for f in held))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        parser = FrameParser(1 << 24)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.raw += data
                for f in parser.feed(data):
                    self.frames.append(f)
                    if f.command == "open":
                        out = self.open_answer
                    elif f.command == "close":
                        out = encode_frame(f.txnr, b"rsp") + b"0 serverclose 0\n"
                    else:
                        out = self.answer(self, f)
                    if out:
                        writer.write(out)
                    elif f.command == "syslog":
                        self.held.append(f)
                    self.most_unanswered = max(self.most_unanswered, len(self.held))
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.close()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def messages(n: int) -> list[bytes]:
    return [b"<134>1 - h app - - - m%d" % i for i in range(n)]


async def test_a_session_to_the_byte(receiver: Receiver) -> None:
    t = await connect_relp(receiver.address(), 5)
    assert t.offers["relp_software"].startswith("librelp")
    assert await t.send([MSG, b"x"], 5) == []
    assert t.progress == 2
    await t.close()
    await until(lambda: receiver.raw.endswith(b"close 0\n"))
    assert bytes(receiver.raw) == (b"1 open 52 relp_version=0\nrelp_software=shipper\ncommands=syslog\n"
                                   b"2 syslog 70 " + MSG + b"\n3 syslog 1 x\n4 close 0\n")


async def test_txnrs_go_on_across_sends(receiver: Receiver) -> None:
    t = await connect_relp(receiver.address(), 5)
    await t.send(messages(3), 5)
    await t.send(messages(2), 5)
    await t.close()
    assert [f.txnr for f in receiver.frames] == [1, 2, 3, 4, 5, 6, 7]


async def test_the_window_bounds_what_is_unacknowledged(receiver: Receiver) -> None:
    receiver.answer = lambda r, f: b""  # hold every message; released below, a window at a time
    t = await connect_relp(receiver.address(), 5, window=4)
    task = asyncio.create_task(t.send(messages(10), 5))
    for sent in (4, 8, 10):
        async with asyncio.timeout(5):
            while len(receiver.syslog()) < sent:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert len(receiver.syslog()) == sent  # nothing past the window until acknowledgements come
        assert not task.done()
        receiver.release()
    await task
    assert t.progress == 10 and receiver.most_unanswered == 4
    assert receiver.syslog() == messages(10)
    await t.close()


async def test_acks_arriving_a_byte_at_a_time(receiver: Receiver) -> None:
    receiver.answer = lambda r, f: b""
    t = await connect_relp(receiver.address(), 5)
    task = asyncio.create_task(t.send(messages(5), 5))
    await until(lambda: len(receiver.held) == 5)
    acks = b"".join(encode_frame(f.txnr, b"rsp", b"200 OK") for f in receiver.held)
    for i in range(len(acks)):
        receiver.send(acks[i:i + 1])
        await asyncio.sleep(0)
    await task
    assert t.progress == 5
    await t.close()


async def test_a_refusal_fails_the_send_after_what_was_acknowledged(receiver: Receiver) -> None:
    def answer(r: Receiver, f: Frame) -> bytes:
        return encode_frame(f.txnr, b"rsp", b"500 no room" if f.data.endswith(b"m3") else b"200 OK")

    receiver.answer = answer
    t = await connect_relp(receiver.address(), 5)
    with pytest.raises(RelpRefused, match="refused message 4 of 6: 500 no room"):
        await t.send(messages(6), 5)
    assert t.progress == 3
    assert not t.usable()  # a failed session is not used again
    await t.close()


async def test_serverclose_mid_send_is_a_lost_connection(receiver: Receiver) -> None:
    def answer(r: Receiver, f: Frame) -> bytes:
        if f.txnr <= 4:  # messages 1-3
            return encode_frame(f.txnr, b"rsp", b"200 OK")
        return b"0 serverclose 0\n" if f.txnr == 5 else b""

    receiver.answer = answer
    t = await connect_relp(receiver.address(), 5)
    with pytest.raises(ConnectionResetError, match="serverclose"):
        await t.send(messages(8), 5)
    assert t.progress == 3
    assert not t.usable()
    await t.close()


async def test_serverclose_while_idle_makes_it_unusable(receiver: Receiver) -> None:
    t = await connect_relp(receiver.address(), 5)
    await t.send(messages(1), 5)
    assert t.usable()
    receiver.send(b"0 serverclose 0\n")
    await until(lambda: not t.usable())
    with pytest.raises(ConnectionResetError):
        await t.send(messages(1), 5)
    assert t.progress == 0
    await t.close()


async def test_acks_out_of_order_count_from_the_first(receiver: Receiver) -> None:
    receiver.answer = lambda r, f: b""
    t = await connect_relp(receiver.address(), 5)
    task = asyncio.create_task(t.send(messages(4), 5))
    await until(lambda: len(receiver.held) == 4)
    held = receiver.held
    receiver.send(b"".join(encode_frame(f.txnr, b"rsp", b"200 OK") for f in (held[1], held[3])))
    await asyncio.sleep(0.05)
    assert t.progress == 0 and not task.done()
    receiver.send(encode_frame(held[0].txnr, b"rsp", b"200 OK"))
    await asyncio.sleep(0.05)
    assert t.progress == 2 and not task.done()
    receiver.send(encode_frame(held[2].txnr, b"rsp", b"200 OK"))
    await task
    assert t.progress == 4
    await t.close()


async def test_silence_times_out(receiver: Receiver) -> None:
    receiver.answer = lambda r, f: encode_frame(f.txnr, b"rsp", b"200 OK") if f.txnr == 2 else b""
    t = await connect_relp(receiver.address(), 5)
    with pytest.raises(TimeoutError, match=r"no acknowledgement for 0\.2s"):
        await t.send(messages(3), 0.2)
    assert t.progress == 1
    await t.close()


async def test_an_answer_to_nothing_is_a_protocol_error(receiver: Receiver) -> None:
    t = await connect_relp(receiver.address(), 5)
    receiver.send(b"77 rsp 6 200 OK\n")
    await until(lambda: not t.usable())
    with pytest.raises(RelpError, match="transaction 77"):
        await t.send(messages(1), 5)
    await t.close()


@pytest.mark.parametrize(("open_answer", "error", "words"), [
    (b"1 rsp 11 500 go away\n", RelpRefused, "refused the session: 500 go away"),
    (b"1 rsp 36 200 OK\nrelp_version=0\ncommands=other\n", RelpError, "does not take syslog"),
    (b"0 serverclose 0\n", ConnectionResetError, "closed the session at open"),
    (b"hello\n", RelpError, "not a RELP frame"),
    (b"", TimeoutError, "no answer to the RELP open within 0.3s"),
])
async def test_open_failures(receiver: Receiver, open_answer: bytes, error: type[OSError], words: str) -> None:
    receiver.open_answer = open_answer
    with pytest.raises(error, match=words):
        await connect_relp(receiver.address(), 0.3)


async def test_a_closed_port_is_refused() -> None:
    r = Receiver()
    await r.start()
    address = r.address()
    await r.close()
    with pytest.raises(ConnectionRefusedError):
        await connect_relp(address, 2)


async def test_relp_tls_without_a_context_fails() -> None:
    with pytest.raises(OSError, match="no TLS context"):
        await connect_relp(parse_address("relp+tls://127.0.0.1:1"), 1)


def test_the_transport_reports_like_datagrams() -> None:
    assert RelpTransport.stream is False  # no syslog framing; `progress` counts what the receiver took
    assert DEFAULT_WINDOW == 128


# --- through the sink ---

META = ContainerMeta(id="abc", name="web-1", host="node-1")


def sink(tmp_path: Path, address: str, **table: object) -> SyslogSink:
    cfg = build(SyslogConfig, {"type": "syslog", "address": address, **table}, "sinks.s")
    return SyslogSink(cfg, SinkContext("s", tmp_path, "host", Metrics()))


def batch(n: int) -> Batch:
    return Batch(META, [Event("2024-05-01T12:34:56.123456Z", f"m{i}", seq=i) for i in range(n)])


async def test_the_sink_sends_bare_messages(tmp_path: Path, receiver: Receiver) -> None:
    s = sink(tmp_path, f"relp://127.0.0.1:{receiver.port}", framing="octet-counting")
    assert await s.send(s.encode([batch(2)])) is None
    await s.close()
    assert receiver.syslog() == [b"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout "
                                 b'[docker@32473 id="abc" name="web-1"] m0',
                                 b"<134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout "
                                 b'[docker@32473 id="abc" name="web-1"] m1']


async def test_the_sink_retries_only_what_was_not_acknowledged(tmp_path: Path, receiver: Receiver) -> None:
    def answer(r: Receiver, f: Frame) -> bytes:
        if f.txnr == 12:  # the 11th message of the first session: the receiver goes away
            return b"0 serverclose 0\n"
        return encode_frame(f.txnr, b"rsp", b"200 OK") if f.txnr < 12 else b""

    receiver.answer = answer
    s = sink(tmp_path, f"relp://127.0.0.1:{receiver.port}", relp_window=16)
    request = s.encode([batch(40)])
    result = await s.send(request)
    assert isinstance(result, Partial)
    assert list(result.retry) == list(range(10, 40))
    assert "serverclose" in result.reason
    receiver.answer = ack_all
    rest = s.subset(request, result.retry)
    assert await s.send(rest) is None  # on a new session
    await s.close()
    got = [m.rsplit(b" ", 1)[1].decode() for m in receiver.syslog()]
    assert got[:10] == [f"m{i}" for i in range(10)]
    assert set(got) == {f"m{i}" for i in range(40)}
    assert len(got) - 40 <= 16  # duplicates: at most a window
    assert [f.txnr for f in receiver.frames if f.command == "open"] == [1, 1]


async def test_the_sink_retries_a_refusal(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda r, f: encode_frame(f.txnr, b"rsp", b"500 busy")
    s = sink(tmp_path, f"relp://127.0.0.1:{receiver.port}")
    with pytest.raises(RetryableSinkError, match="refused message 1 of 3: 500 busy"):
        await s.send(s.encode([batch(3)]))
    await s.close()


# --- config ---

def load(**table: object) -> SyslogConfig:
    cfg = load_dict({"sinks": {"central": {"type": "syslog", **table}}}).sinks["central"]
    assert isinstance(cfg, SyslogConfig)
    return cfg


def test_relp_addresses() -> None:
    assert parse_address("relp://logs") == Address("relp", "logs", 514)  # omrelp's default port
    assert parse_address("RELP+TLS://[::1]:2514") == Address("relp+tls", "::1", 2514)
    assert str(parse_address("relp+tls://logs:20514")) == "relp+tls://logs:20514"
    assert not parse_address("relp://logs").stream  # no syslog framing on RELP
    with pytest.raises(ValueError, match="relp://, relp\\+tls://"):
        parse_address("relps://logs")


def test_relp_config() -> None:
    cfg = load(address="relp+tls://logs:2514", tls_ca="/ca.pem", tls_cert="/c.pem", tls_key="/c.key",
               tls_server_name="logs.example", relp_window=1)
    assert cfg.relp_window == 1
    assert load(address="relp://logs").relp_window == DEFAULT_WINDOW
    assert DEFAULT_MAX_MESSAGE_BYTES["relp"] == DEFAULT_MAX_MESSAGE_BYTES["relp+tls"] == 65536


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"address": "relp://logs", "tls_ca": "/ca.pem"}, "sinks.central.tls_ca", "relp+tls://"),
    ({"address": "relp://logs", "relp_window": 0}, "sinks.central.relp_window", "between 1 and 65536"),
    ({"address": "relp://logs", "relp_window": 65537}, "sinks.central.relp_window", "between 1 and 65536"),
    ({"address": "relp://logs/x"}, "sinks.central.address", "unexpected path"),
])
def test_relp_config_errors_name_the_key(table: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(**table)
    assert info.value.key == key
    assert words in info.value.message


async def test_relp_tls_gets_the_sinks_tls_context(tmp_path: Path) -> None:
    s = sink(tmp_path, "relp+tls://127.0.0.1:1", tls_ca=str(tmp_path / "nope.pem"))
    with pytest.raises(RetryableSinkError, match="tls_ca"):  # built (and failing) like tls://'s
        await s.start()
