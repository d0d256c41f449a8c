"""A syslog receiver that accepts connections and stops reading (a hung rsyslog, a full queue, a stopped
process): real sockets, a burst larger than every buffer on the way.

What the sink must do: count nothing as sent that the receiver has not acknowledged, keep the state
'retrying'/'failing' (never 'up') while the receiver takes nothing, stay on the one connection instead of
filling a new receive buffer every `write_timeout_secs`, and deliver every event at least once when the
receiver reads again, or when it is killed and a real rsyslogd takes its place.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.sinks.syslog.sink import SyslogConfig, SyslogSink
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.integration.rsyslog import Rsyslog, available
from tests.tlsutil import Certs, have_openssl, make_certs

pytestmark = pytest.mark.rsyslog

EVENTS = 40_000  # ~9 MB framed: more than the sender's send buffer (up to 4 MiB) and the receiver's together
PAD = "x" * 120
STALL_SECS = 4.0  # how long the receiver takes nothing; write_timeout_secs is 1
FIONREAD = 0x541B
N_RE = re.compile(rb"n=(\d+) ")


class StalledReceiver:
    """Accepts TCP (or TLS, or unix stream) connections and reads nothing until `resume()` (then everything
    on every connection it holds, and on new ones), or `kill()` (closes them all unread, as a crashed
    receiver does: the peer gets a reset, what the kernel held unread is gone)."""

    def __init__(self, kind: str, port: int = 0, certs: Certs | None = None) -> None:
        self.kind = kind
        self.tls: ssl.SSLContext | None = None
        if kind == "tls":
            assert certs is not None
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(certs.server_cert, certs.server_key)
        self.dir = Path(tempfile.mkdtemp(prefix="stall-"))  # short: a unix socket path fits in 108 bytes
        if kind == "unix":
            self.path = str(self.dir / "r.sock")
            self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.srv.bind(self.path)
        else:
            self.srv = socket.socket()
            self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.srv.bind(("127.0.0.1", port))
        self.srv.listen(64)
        self.srv.settimeout(0.05)
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.held_bytes = 0  # unread in the held connections' receive buffers when resumed or killed
        self.lines: list[bytes] = []
        self.lock = threading.Lock()
        self.reading = False
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def address(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        return f"{self.kind}://127.0.0.1:{self.srv.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except (TimeoutError, OSError):
                continue
            if self.tls is not None:
                try:
                    conn.settimeout(5)
                    conn = self.tls.wrap_socket(conn, server_side=True)  # the handshake is read, nothing after
                except OSError:
                    conn.close()
                    continue
            with self.lock:
                self.accepted += 1
                if not self.reading:
                    self.held.append(conn)
                    continue
            self._reader(conn)

    def _reader(self, conn: socket.socket) -> None:
        t = threading.Thread(target=self._read, args=(conn,), daemon=True)
        self.threads.append(t)
        t.start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        rest = b""
        while not self.stop.is_set():
            try:
                data = conn.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            *done, rest = (rest + data).split(b"\n")
            with self.lock:
                self.lines.extend(done)
        conn.close()

    def _unread(self, conn: socket.socket) -> int:
        n = fcntl.ioctl(conn.fileno(), FIONREAD, b"\0\0\0\0")  # TLS: record bytes, a little more than events
        return int(struct.unpack("i", n)[0])

    def resume(self) -> None:
        with self.lock:
            self.reading = True
            held, self.held = self.held, []
        for conn in held:
            self.held_bytes += self._unread(conn)
            self._reader(conn)

    def kill(self) -> None:
        """Close every connection unread and stop listening, as a receiver that crashed."""
        self.stop.set()
        for t in self.threads:
            t.join()
        for conn in self.held:
            self.held_bytes += self._unread(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # unread data: RST
            conn.close()
        self.held = []
        self.srv.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        for conn in self.held:
            conn.close()
        self.srv.close()

    def numbers(self) -> list[int]:
        with self.lock:
            return [int(m.group(1)) for m in (N_RE.search(line) for line in self.lines) if m]


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    require("openssl", have_openssl(), "apt-get install openssl")
    with tempfile.TemporaryDirectory(prefix="stall-certs-") as d:
        yield make_certs(Path(d))


def make_runner(address: str, **table: Any) -> tuple[SinkRunner, MemoryBuffer, SyslogSink]:
    cfg = build(SyslogConfig, {"type": "syslog", "address": address, "framing": "lf", "write_timeout_secs": 1.0,
                               "connect_timeout_secs": 2.0, "retry_initial_secs": 0.2, "retry_max_secs": 1.0,
                               **table}, "sinks.stall")
    metrics = Metrics()
    sink = SyslogSink(cfg, SinkContext("stall", Path("/nonexistent"), "daemon-host", metrics))
    buf = MemoryBuffer(lambda cp: None, metrics, max_events=1_000_000, max_bytes=1 << 31, when_full=WhenFull.BLOCK)
    return SinkRunner("stall", sink, buf.cursor("stall"), metrics), buf, sink


async def burst(buf: MemoryBuffer, meta: ContainerMeta) -> None:
    for start in range(0, EVENTS, 1000):
        await buf.push(Batch(meta, [Event("2024-05-01T00:00:00Z", f"n={i} {PAD}", seq=i)
                                    for i in range(start, min(start + 1000, EVENTS))]))


def states(caplog: pytest.LogCaptureFixture) -> list[tuple[float, str]]:
    """Every state the runner entered, with its time: each change is logged, however short it lasted."""
    out = []
    for rec in caplog.records:
        if rec.name == "shipper" and rec.getMessage().startswith("sink state changed sink=stall "):
            out.append((rec.created, rec.getMessage().rsplit("state=", 1)[1]))
    return out


def assert_never_up_while_stalled(caplog: pytest.LogCaptureFixture, until: float) -> None:
    seen = states(caplog)
    first_failure = next((t for t, s in seen if s in ("retrying", "failing")), None)
    assert first_failure is not None, f"the stall never showed in the sink's state: {seen}"
    flaps = [(t, s) for t, s in seen if first_failure < t < until and s == "up"]
    assert not flaps, f"'up' while the receiver took nothing: {seen}"


async def wait_all(get: Any, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if len(set(got)) >= EVENTS or time.monotonic() > deadline:
            await asyncio.sleep(0.3)
            return list(get())
        await asyncio.sleep(0.1)


def assert_every_event_arrived(got: list[int]) -> None:
    lost = sorted(set(range(EVENTS)) - set(got))
    assert not lost, f"{len(lost)} of {EVENTS} events lost (first {lost[:5]}), {len(got) - len(set(got))} duplicates"
    assert set(got) <= set(range(EVENTS))


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix"])
async def test_a_receiver_that_stops_reading_gets_everything_once_it_reads_again(
        kind: str, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shipper")
    rx = StalledReceiver(kind, certs=certs)
    table = {"tls_ca": str(certs.ca)} if kind == "tls" else {}
    runner, buf, sink = make_runner(rx.address, **table)
    try:
        await burst(buf, ContainerMeta(id=uuid.uuid4().hex, name="app-stall", host="node-1"))
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(STALL_SECS)
        sent_while_stalled = runner.sent_events
        state = runner.state
        resumed = time.time()
        rx.resume()
        got = await wait_all(rx.numbers, 30)
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()

        assert_every_event_arrived(got)
        assert state in ("retrying", "failing")
        assert_never_up_while_stalled(caplog, resumed)
        # nothing counted as sent that the receiver's kernel did not hold: the events it had are at most
        # its buffered bytes over the smallest event
        assert sent_while_stalled * len(f"n=0 {PAD}") <= rx.held_bytes
        assert rx.accepted == 1, "a new connection into a stalled receiver only fills another buffer"
        assert len(got) == len(set(got))  # one connection throughout: nothing had to be sent twice
        assert sink.context.metrics.get("shipper_sink_stalls_total") == 1
        assert runner.state == "up"
        assert buf.cursor("stall").pending() == 0
    finally:
        rx.close()


async def test_a_stalled_receiver_killed_and_replaced_by_rsyslog_loses_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """The receiver hangs, then is killed (its unread buffer is gone, the sink gets a reset) and a real
    rsyslogd starts on the same port: every event arrives there at least once."""
    require("rsyslogd", available(), "apt-get install rsyslog")
    caplog.set_level(logging.INFO, logger="shipper")
    r = Rsyslog(inputs=("tcp",))
    rx = StalledReceiver("tcp", port=r.ports["tcp"])
    runner, buf, sink = make_runner(r.address("tcp"))
    meta = ContainerMeta(id=uuid.uuid4().hex, name=f"app-{uuid.uuid4().hex[:8]}", host="node-1")
    try:
        await burst(buf, meta)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(STALL_SECS)
        state = runner.state
        killed = time.time()
        rx.kill()
        await asyncio.to_thread(r.start)

        def numbers() -> list[int]:
            return [int(rec["msg"].split()[0].removeprefix("n=")) for rec in r.records(lambda x: x["app"] == meta.name)]

        got = await wait_all(numbers, 30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()

        assert_every_event_arrived(got)
        assert state in ("retrying", "failing")
        assert_never_up_while_stalled(caplog, killed)
        assert rx.accepted == 1
        assert buf.cursor("stall").pending() == 0
    finally:
        rx.close()
        r.close()
