"""Stream delivery counts what the receiver acknowledged, not what was written: real sockets on loopback and
unix paths, receivers that read, stall, reset or are left for another address."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.errors import RetryableSinkError
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.syslog.sink import SyslogConfig, SyslogSink
from shipper.sinks.syslog.transport import StreamTransport, connect, parse_address
from shipper.telemetry.metrics import Metrics
from tests.tlsutil import Certs, have_openssl, make_certs

META = ContainerMeta(id="c0ffee", name="app", host="node-1")


class Receiver:
    """A listening socket whose connections are read only once `release()` is called (or never); each
    connection's bytes are kept apart."""

    def __init__(self, unix_dir: Path | None = None) -> None:
        if unix_dir is not None:
            self.path = str(unix_dir / "r.sock")
            self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.srv.bind(self.path)
            self.address = f"unix://{self.path}"
        else:
            self.srv = socket.socket()
            self.srv.bind(("127.0.0.1", 0))
            self.address = f"tcp://127.0.0.1:{self.srv.getsockname()[1]}"
        self.srv.listen(8)
        self.srv.setblocking(False)
        self.conns: list[socket.socket] = []
        self.data: list[bytearray] = []
        self.released = asyncio.Event()
        self.tasks = [asyncio.create_task(self._accept())]

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.srv)
            conn.setblocking(False)
            self.conns.append(conn)
            self.data.append(bytearray())
            self.tasks.append(asyncio.create_task(self._read(conn, self.data[-1])))

    async def _read(self, conn: socket.socket, into: bytearray) -> None:
        await self.released.wait()
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await loop.sock_recv(conn, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            into += chunk

    def release(self) -> None:
        self.released.set()

    def reset(self, i: int) -> None:
        """Close connection `i` unread, with a reset, as a receiver that crashed."""
        self.conns[i].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conns[i].close()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.conns:
            c.close()
        self.srv.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="acks-") as d:  # a unix socket path must fit in 108 bytes
        yield Path(d)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def sink(address: str | list[str], **table: Any) -> SyslogSink:
    cfg = build(SyslogConfig, {"type": "syslog", "address": address, "framing": "lf", "write_timeout_secs": 0.3,
                               "connect_timeout_secs": 2, **table}, "sinks.s")
    return SyslogSink(cfg, SinkContext("s", Path("/nonexistent"), "host", Metrics()))


def batch(n: int) -> Batch:
    """`n` events of ~200 bytes framed: 3,000 of them are more than a loopback receive buffer holds."""
    return Batch(META, [Event("2024-05-01T00:00:00Z", f"n={i} " + "x" * 120, seq=i) for i in range(n)])


def numbers(data: bytes) -> list[int]:
    return [int(line.split(b"n=")[1].split()[0]) for line in bytes(data).split(b"\n") if b"n=" in line]


# --- the transport ----------------------------------------------------------------------------------------


async def test_tcp_counts_what_the_peer_acknowledged_and_a_stall_times_out() -> None:
    rx = Receiver()
    t = await connect(parse_address(rx.address), 2)
    try:
        assert isinstance(t, StreamTransport) and t.acks
        ends = await t.write([b"a" * 100, b"b" * 100])
        assert ends == [100, 200]
        # acknowledged by the peer's kernel although the application has not read it: the known limit
        await t.wait_acked(200, 2)
        assert t.acked() == 200
        await t.write([b"c" * (8 << 20)])  # more than the receive buffer and the send buffer together
        with pytest.raises(TimeoutError, match="acknowledged nothing"):
            await t.wait_acked(t.written, 0.3)
        assert 0 < t.acked() < t.written
        assert t.peer_answers()  # its window is closed, its TCP answers: not a path gone silent
        rx.release()
        await t.wait_acked(t.written, 5)
        assert t.acked() == t.written
        await until(lambda: len(rx.data[0]) == t.written)
    finally:
        await t.close()
        await rx.close()


async def test_unix_stream_counts_only_what_the_peer_read(short_dir: Path) -> None:
    rx = Receiver(short_dir)
    t = await connect(parse_address(rx.address), 2)
    try:
        assert isinstance(t, StreamTransport) and t.acks
        await t.write([b"hello\n"])
        with pytest.raises(TimeoutError):
            await t.wait_acked(t.written, 0.2)
        assert t.acked() == 0
        assert t.peer_answers()
        rx.release()
        await t.wait_acked(t.written, 2)
        assert rx.data[0] == b"hello\n"
    finally:
        await t.close()
        await rx.close()


async def test_a_reset_fails_the_wait() -> None:
    rx = Receiver()
    t = await connect(parse_address(rx.address), 2)
    try:
        await t.write([b"x" * (4 << 20)])
        await until(lambda: len(rx.conns) == 1)
        rx.reset(0)
        with pytest.raises(ConnectionResetError):
            await t.wait_acked(t.written, 5)
        assert t.reset
        assert not t.peer_answers()
    finally:
        await t.close()
        await rx.close()


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    if not have_openssl():
        pytest.skip("openssl is not available")
    with tempfile.TemporaryDirectory(prefix="acks-certs-") as d:
        yield make_certs(Path(d))


async def _abort_after_ack_loses_nothing(kind: str, certs: Certs, short_dir: Path) -> None:
    """Write 8 MiB, then 8 MiB more, to a slow reader; wait until the first is acknowledged, then abort: the
    receiver still gets all of the first. Counting a write before it left this host (a buffer the check
    overlooked: the event loop's, the kernel's) would cut it. The receiver is a thread with blocking
    sockets, so it reads every record that arrived whatever the loop."""
    if kind == "unix":
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(short_dir / "slow.sock"))
        address = f"unix://{short_dir / 'slow.sock'}"
    else:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        address = f"{kind}://127.0.0.1:{srv.getsockname()[1]}"
    srv.listen(1)
    srv.settimeout(10)
    server_ctx = None
    if kind == "tls":
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    got = bytearray()

    def slow() -> None:
        conn, _ = srv.accept()
        with contextlib.suppress(OSError):  # TLS: the abort sends no close_notify
            if server_ctx is not None:
                conn = server_ctx.wrap_socket(conn, server_side=True)
            conn.settimeout(10)
            while chunk := conn.recv(1 << 15):
                got.extend(chunk)
                time.sleep(0.001)
        conn.close()

    reader = threading.Thread(target=slow, daemon=True)
    reader.start()
    try:
        tls = ssl.create_default_context(cafile=str(certs.ca)) if kind == "tls" else None
        t = await connect(parse_address(address), 5, tls)
        assert isinstance(t, StreamTransport) and t.acks
        first = bytes(range(256)) * (8 << 12)  # more than the kernel takes at once
        ends = await t.write([first])
        await t.write([b"\xff" * len(first)])
        await t.wait_acked(ends[-1], 10)
        t.abort()
        await asyncio.to_thread(reader.join, 10)
        assert len(got) >= len(first)
        assert got[:len(first)] == first
    finally:
        srv.close()


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix"])
async def test_once_acknowledged_an_abort_loses_nothing(kind: str, certs: Certs, short_dir: Path) -> None:
    await _abort_after_ack_loses_nothing(kind, certs, short_dir)


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix"])
def test_once_acknowledged_an_abort_loses_nothing_on_uvloop(kind: str, certs: Certs, short_dir: Path) -> None:
    """uvloop's TLS transport does not show what its socket transport still buffers."""
    uvloop = pytest.importorskip("uvloop")
    run: Callable[[Awaitable[None]], None] = uvloop.run
    run(_abort_after_ack_loses_nothing(kind, certs, short_dir))


# --- the sink ---------------------------------------------------------------------------------------------


async def test_a_stalled_receiver_fails_the_request_on_the_same_connection() -> None:
    rx = Receiver()
    s = sink(rx.address)
    request = s.encode([batch(3000)])
    try:
        with pytest.raises(RetryableSinkError, match="acknowledged nothing"):
            await s.send(request)
        t = s.transport
        assert isinstance(t, StreamTransport)
        written = t.written
        with pytest.raises(RetryableSinkError):  # the retry waits on what is already written: nothing new
            await s.send(request)
        assert s.transport is t and t.written == written
        assert len(rx.conns) == 1
        assert s.context.metrics.get("shipper_sink_stalls_total") == 1
        rx.release()
        assert await s.send(request) is None
        await until(lambda: len(rx.data[0]) == written)
        assert numbers(rx.data[0]) == list(range(3000))  # each once
        assert await s.send(s.encode([batch(5)])) is None  # the connection serves on
    finally:
        await s.close()
        await rx.close()


async def test_a_reset_sends_the_whole_request_again() -> None:
    """A reset means the receiver dropped what its kernel held unread: even acknowledged messages of the
    request may be gone, so all of it goes out again on the next connection."""
    rx = Receiver()
    s = sink(rx.address)
    request = s.encode([batch(3000)])
    try:
        with pytest.raises(RetryableSinkError):
            await s.send(request)
        rx.reset(0)
        rx.release()
        t = s.transport
        assert t is not None
        await until(lambda: not t.usable())
        assert await s.send(request) is None
        assert len(rx.conns) == 2
        await until(lambda: len(numbers(rx.data[1])) == 3000)
        assert numbers(rx.data[1]) == list(range(3000))
        assert s.context.metrics.get("shipper_sink_resent_events_total") == 3000
    finally:
        await s.close()
        await rx.close()


async def test_a_failover_after_a_stall_resends_only_what_was_not_acknowledged() -> None:
    stalled, reading = Receiver(), Receiver()
    reading.release()
    s = sink([stalled.address, reading.address])
    request = s.encode([batch(3000)])
    try:
        with pytest.raises(RetryableSinkError):
            await s.send(request)
        assert s.transport is None  # several addresses: a stall fails over
        assert await s.send(request) is None
        assert str(s.address) == reading.address
        await until(lambda: bool(reading.data) and numbers(reading.data[0])[-1:] == [2999])
        rest = numbers(reading.data[0])
        first = rest[0]
        assert first > 0 and rest == list(range(first, 3000))
        assert s.context.metrics.get("shipper_sink_resent_events_total") == 3000 - first
        stalled.release()  # what the stalled receiver's kernel acknowledged was there all along
        await until(lambda: len(numbers(stalled.data[0])) >= first)
        assert numbers(stalled.data[0])[:first] == list(range(first))
    finally:
        await s.close()
        with contextlib.suppress(Exception):
            await stalled.close()
        await reading.close()


async def test_nothing_is_delivered_before_it_is_acknowledged(short_dir: Path) -> None:
    """On a unix stream a request is delivered only once the receiver has read it."""
    rx = Receiver(short_dir)
    s = sink(rx.address)
    try:
        with pytest.raises(RetryableSinkError):
            await s.send(s.encode([batch(1)]))
        rx.release()
        assert await s.send(s.encode([batch(2)])) is None
        await until(lambda: len(numbers(rx.data[0])) == 3)
        assert numbers(rx.data[0]) == [0, 0, 1]  # the first request, then the second
    finally:
        await s.close()
        await rx.close()


async def test_a_peer_gone_silent_is_left_for_a_new_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall where the peer's TCP no longer answers (a host or path gone: on a real network, data or window
    probes unacknowledged) is not waited on: the next attempt connects again and writes what the old
    connection did not get acknowledged."""
    rx = Receiver()
    s = sink(rx.address)
    request = s.encode([batch(3000)])
    monkeypatch.setattr(StreamTransport, "peer_answers", lambda self: False)
    try:
        with pytest.raises(RetryableSinkError):
            await s.send(request)
        assert s.transport is None
        rx.release()
        assert await s.send(request) is None
        assert len(rx.conns) == 2
        await until(lambda: numbers(rx.data[1])[-1:] == [2999])
        first = numbers(rx.data[1])[0]
        assert first > 0 and numbers(rx.data[1]) == list(range(first, 3000))
        await until(lambda: len(numbers(rx.data[0])) >= first)
        assert numbers(rx.data[0])[:first] == list(range(first))
    finally:
        await s.close()
        await rx.close()


async def test_requests_given_up_while_stalled_are_not_kept_forever() -> None:
    rx = Receiver()
    s = sink(rx.address, write_timeout_secs=0.05)
    try:
        for _ in range(10):  # each failed once and never retried, as a runner giving up would leave them
            with pytest.raises(RetryableSinkError):
                await s.send(s.encode([batch(3000)]))
        assert len(s._sent) == 2 * s.config.max_in_flight + 2
    finally:
        await s.close()
        await rx.close()
