"""One Lumberjack v2 connection to Logstash's beats input: windows written back to back (`pipelining` of them
ahead of their ACKs, as libbeat's async client does), ACK frames read exactly and matched to the windows in
the order they were written.

An ACK of the window at the head is one of three things:
- its last sequence: the window is done (Logstash's pipeline took every event of it);
- a sequence between what is acked and the last: a partial ACK; those events are delivered, and if the
  connection is lost before the rest, only the rest is sent again;
- 0, or what the window already has (the same sequence again): a keep-alive from a Logstash that is busy.
  It acknowledges nothing new and resends nothing; it only proves the peer alive.
Any ACK, keep-alives included, restarts the `timeout_secs` clock; a window with no ACK of any kind for that
long fails the connection, and every window on it reports how much of it was acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shipper.sinks.logstash.lumberjack import ACK_FRAME_BYTES, KEEPALIVE_SEQUENCE, ProtocolError, parse_ack


class WindowFailed(Exception):
    """A window was not acked in full: `acked` of its events were (a partial ACK), the rest were not."""

    def __init__(self, acked: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__)
        self.acked = acked
        self.cause = cause


@dataclass(eq=False)
class _Window:
    count: int
    done: asyncio.Future[None]
    acked: int = 0


@dataclass
class AckListener:
    """What a connection reports as ACKs arrive (the host's counters hang off these)."""

    keepalive: Callable[[], None] = lambda: None
    partial: Callable[[int, int], None] = lambda acked, count: None


@dataclass(eq=False)
class BeatsConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    name: str
    timeout: float
    listener: AckListener = field(default_factory=AckListener)

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Window] = deque()
        self._progress_at = self._loop.time()  # the last ACK, or the write of a window onto an idle connection
        self.error: BaseException | None = None
        self._acks = asyncio.create_task(self._read_acks(), name=f"logstash:{self.name}:acks")

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def send_window(self, frames: Sequence[bytes], count: int) -> None:
        """Write one encoded window of `count` events (its pieces, in order) and return once Logstash acked
        all of them; raises WindowFailed (with what was acked) when the connection fails first."""
        if self.error is not None:
            raise WindowFailed(0, self.error)
        w = _Window(count, self._loop.create_future())
        if not self._pending:
            self._progress_at = self._loop.time()
        self._pending.append(w)
        self.writer.writelines(frames)
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, TimeoutError) as e:
            self.fail(e if isinstance(e, OSError) else TimeoutError(
                errno.ETIMEDOUT, f"{self.name}: took no data for {self.timeout:g}s"))
        while not w.done.done():
            left = self._progress_at + self.timeout - self._loop.time()
            if left <= 0:
                self.fail(TimeoutError(errno.ETIMEDOUT, f"{self.name}: no ACK for {self.timeout:g}s "
                                                        f"({w.count - w.acked} events of the window unacked)"))
                break
            await asyncio.wait([w.done], timeout=left)
        exc = w.done.exception()
        if exc is not None:
            raise WindowFailed(w.acked, exc)

    async def _read_acks(self) -> None:
        try:
            while True:
                seq = parse_ack(await self.reader.readexactly(ACK_FRAME_BYTES))
                self._progress_at = self._loop.time()
                if not self._pending:
                    if seq != KEEPALIVE_SEQUENCE:
                        raise ProtocolError(f"ACK {seq} with no window out")
                    self.listener.keepalive()
                    continue
                head = self._pending[0]
                if seq == KEEPALIVE_SEQUENCE or seq <= head.acked:
                    self.listener.keepalive()
                    continue
                if seq > head.count:
                    raise ProtocolError(f"ACK {seq} for a window of {head.count} events")
                head.acked = seq
                if seq < head.count:
                    self.listener.partial(seq, head.count)
                    continue
                self._pending.popleft()
                head.done.set_result(None)
        except asyncio.IncompleteReadError as e:
            self.fail(ConnectionResetError(errno.ECONNRESET, f"{self.name}: closed by Logstash"
                                           + (f" mid-frame ({len(e.partial)} bytes)" if e.partial else "")))
        except (OSError, ProtocolError) as e:
            self.fail(e)

    def fail(self, error: BaseException) -> None:
        """The connection is done: every window still out fails with what it had acked."""
        if self.error is None:
            self.error = error
        while self._pending:
            w = self._pending.popleft()
            if not w.done.done():
                w.done.set_exception(error)
                w.done.exception()  # retrieved: a window whose sender was cancelled must not warn
        if self._acks is not asyncio.current_task():
            self._acks.cancel()
        self.writer.transport.abort()

    async def close(self) -> None:
        self.fail(ConnectionAbortedError(errno.ECONNABORTED, f"{self.name}: closed by the sink"))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._acks


async def open_connection(host: str, port: int, name: str, timeout: float, connect_timeout: float,
                          listener: AckListener, tls: object = None, server_name: str = "") -> BeatsConnection:
    """Connect (TLS when `tls` is an SSLContext); raises OSError (refused, unreachable, timeout, TLS)."""
    import socket
    import ssl

    ctx = tls if isinstance(tls, ssl.SSLContext) else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=(server_name or host) if ctx else None,
                                limit=1 << 16),
        connect_timeout)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return BeatsConnection(reader, writer, name, timeout, listener)
