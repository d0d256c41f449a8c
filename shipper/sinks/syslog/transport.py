"""Sockets for syslog: UDP, TCP, TLS (RFC 5425) and unix (datagram, else stream, as /dev/log may be either).

A transport knows nothing of syslog messages: it carries a list of already framed messages, one datagram
each or written back to back on a stream. `send` returns once the bytes are in the kernel (stream: after
`drain()`). Syslog itself has no acknowledgement, but on a stream the kernel knows more: Linux's SIOCOUTQ
tells how many of the bytes written are still in the send queue, not yet acknowledged by the peer's TCP (a
unix stream socket: not yet read by the peer). `StreamTransport.write` and `wait_acked` use it, so a stream
sender can tell what has left this host, and what would be lost with the connection.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import socket
import ssl
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shipper.tls import client_context

SCHEMES = ("udp", "tcp", "tls", "unix", "relp", "relp+tls")
# RFC 5426, common practice, RFC 5425; RELP: rsyslog's omrelp default (imrelp has none), TLS or not
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514, "relp": 514, "relp+tls": 514}
UDP_MAX_PAYLOAD = 65507  # IPv4: 65535 - 8 (UDP header) - 20 (IP header)
# TLS 1.3 finishes the client's handshake before the server has checked the client's certificate: a
# receiver that refuses it answers with an alert a round trip later, after the first batch would have been
# written "successfully" into a connection about to close. Wait this long for such an answer first.
TLS13_REJECT_WAIT_SECS = 1.0
# Linux ioctl (TIOCOUTQ, <asm/ioctls.h>): on a TCP socket the bytes written and not yet acknowledged by the
# peer (sent or not), on a unix stream socket the bytes (as allocated, so a little more) not yet read by it.
SIOCOUTQ = 0x5411
# How often a sender looks whether its bytes were acknowledged: at once, then after 1 ms, doubling to 50 ms.
ACK_POLL_FIRST_SECS = 0.001
# A receiver's delayed ACK comes up to 40 ms after a small request; polled at most every 10 ms, it is seen
# within 10 ms of coming (at 50 ms it was seen ~63 ms after the write, most of a quiet sink's latency). One
# getsockopt a poll: nothing, even for a stalled receiver polled for its whole timeout.
ACK_POLL_MAX_SECS = 0.01
# struct tcp_info (<linux/tcp.h>, stable since 2.6): tcpi_retransmits and tcpi_probes are bytes 2 and 3;
# tcpi_bytes_acked (since 4.1) is the u64 at byte 120.
TCP_INFO_LEN = 128
TCP_INFO_BYTES_ACKED = 120


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def stream(self) -> bool:
        """Whether framing applies; a unix socket's kind is only known once connected."""
        return self.scheme in ("tcp", "tls")

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """`udp://host:port`, `tcp://host:port`, `tls://host:port`, `relp://host:port`, `relp+tls://host:port`
    (port optional) or `unix:///path`."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not an address: {text!r} ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"must start with {', '.join(s + '://' for s in SCHEMES)}; got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"unexpected '?' or '#' in {text!r}")
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"a unix address is unix:///absolute/path, got {text!r}")
        return Address("unix", path=parts.path)
    if not parts.hostname:
        raise ValueError(f"no host in {text!r}")
    if parts.path not in ("", "/"):
        raise ValueError(f"unexpected path in {text!r}")
    return Address(scheme, parts.hostname, port or DEFAULT_PORTS[scheme])


def tls_context(ca: str, cert: str, key: str, verify_hostname: bool, min_version: str) -> ssl.SSLContext:
    """A client context that always checks the server's chain (against `ca`, else the system's roots)."""
    return client_context(ca, cert, key, verify_hostname=verify_hostname, min_version=min_version)


class Transport(ABC):
    stream: bool = True

    def __init__(self, address: Address) -> None:
        self.address = address
        self.progress = 0  # messages of the last send() that surely went out whole (datagrams only)

    @abstractmethod
    def usable(self) -> bool:
        """Still connected as far as we can tell (the peer has not closed or reset it)."""

    @abstractmethod
    async def send(self, messages: list[bytes], timeout: float) -> list[int]:
        """Write every message or raise OSError; returns the sizes of datagrams the kernel refused as too
        large (dropped: retrying could never help)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the socket; never raises."""


class StreamTransport(Transport):
    """A TCP, TLS or unix stream connection that knows how much of what it wrote has left this host.

    `written` counts the bytes handed to the writer; `acked()` how many of them the peer's TCP has
    acknowledged (a unix stream peer: read), from what the event loop still buffers plus the kernel's send
    queue (SIOCOUTQ). Over TLS the queue holds records, a little larger than the bytes written: an upper bound,
    so `acked()` never claims too much. CPython's TLS transport hides what the socket transport under it
    buffers and is looked through; uvloop's cannot be, so there a write counts as acknowledged only once
    nothing at all is left, seen twice an event-loop turn apart.
    """

    stream = True

    def __init__(self, address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(address)
        self._reader = reader
        self._writer = writer
        self.written = 0  # bytes handed to the writer on this connection
        self._acked = 0  # of them, acknowledged by the peer as far as has been seen (never goes back)
        self._sock: Any = writer.get_extra_info("socket")
        self._tcp = self._sock is not None and self._sock.family in (socket.AF_INET, socket.AF_INET6)
        tls = writer.get_extra_info("ssl_object") is not None
        self._inner = _tls_socket_transport(writer) if tls else None
        self._exact = not tls or self._inner is not None
        self.acks = self._sock is not None and self._unacked() is not None  # SIOCOUTQ answers (Linux)

    def usable(self) -> bool:
        # A receiver that went away has sent FIN (EOF) or RST (exception). Writing into such a socket still
        # "succeeds" once, into the kernel buffer, and those bytes are lost: look before writing.
        r = self._reader
        return not (self._writer.is_closing() or r.at_eof() or r.exception() is not None)

    async def write(self, messages: list[bytes]) -> list[int]:
        """Hand `messages` to the socket without waiting; returns the connection's byte offset after each
        (what `wait_acked` takes). Raises ConnectionResetError if the receiver has closed the connection."""
        # Let the loop run twice first: a FIN or RST that reached the socket is then seen by usable().
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if not self.usable():
            raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: closed by the receiver")
        ends = []
        end = self.written
        for m in messages:
            end += len(m)
            ends.append(end)
        self._writer.write(messages[0] if len(messages) == 1 else b"".join(messages))
        self.written = end
        return ends

    async def send(self, messages: list[bytes], timeout: float) -> list[int]:
        await self.write(messages)
        await asyncio.wait_for(self._writer.drain(), timeout)
        return []

    def _unacked(self) -> int | None:
        """Bytes written and not yet acknowledged by the peer: still in the event loop's buffers or in the
        kernel's send queue. None when it cannot be told (closing, or no SIOCOUTQ)."""
        if self._writer.is_closing():
            return None  # the file descriptor may already be closed, its number reused
        try:
            fd = self._sock.fileno()
            if fd < 0:
                return None
            queued = array.array("i", [0])
            fcntl.ioctl(fd, SIOCOUTQ, queued, True)
            size = queued[0] + self._writer.transport.get_write_buffer_size()
            if self._inner is not None:
                size += self._inner.get_write_buffer_size()
        except (OSError, AttributeError, TypeError):
            return None
        return size

    def acked(self) -> int:
        """How many of the `written` bytes the peer has surely acknowledged (a lower bound)."""
        if self._exact:
            unacked = self._unacked()
            if unacked is not None:
                self._acked = max(self._acked, self.written - unacked)
        return self._acked

    def _progress(self) -> int:
        """A number that grows whenever the peer acknowledges anything: TCP's count of bytes acknowledged,
        else what `acked()` sees."""
        if self._tcp and not self._writer.is_closing():  # closing: the descriptor's number may be reused
            try:
                info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            except OSError:
                info = b""
            if len(info) >= TCP_INFO_BYTES_ACKED + 8:
                return int(struct.unpack_from("=Q", info, TCP_INFO_BYTES_ACKED)[0])
        return self.acked()

    async def wait_acked(self, offset: int, timeout: float) -> None:
        """Return once the peer has acknowledged every byte up to `offset`. Raises TimeoutError when it
        acknowledges nothing for `timeout` seconds (a stall: see `peer_answers`), ConnectionResetError when
        the connection closes first."""
        if not self.acks:  # cannot tell: as much as the kernel took, the most a syslog sender knew
            await asyncio.wait_for(self._writer.drain(), timeout)
            return
        loop = asyncio.get_running_loop()
        mark = self._progress()
        deadline = loop.time() + timeout
        delay = ACK_POLL_FIRST_SECS
        seen_empty = False
        while True:
            if self.acked() >= offset:
                return
            if not self._exact and self._unacked() == 0:  # uvloop TLS: nothing left anywhere, look once more
                if seen_empty:
                    self._acked = self.written
                    return
                seen_empty = True
            else:
                seen_empty = False
            if not self.usable():
                raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: closed by the receiver with "
                                                             f"{self.written - self._acked} bytes unacknowledged")
            now = loop.time()
            progress = self._progress()
            if progress != mark:
                mark = progress
                deadline = now + timeout
            elif now >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"{self.address}: the receiver acknowledged nothing for "
                                                    f"{timeout:g}s ({self.written - self._acked} bytes unacknowledged)")
            await asyncio.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, ACK_POLL_MAX_SECS)

    @property
    def unacked_bytes(self) -> int:
        return self.written - self.acked()

    @property
    def reset(self) -> bool:
        """The peer reset the connection (RST): a receiver closing with data unread, or killed, discards what
        its kernel had acknowledged and it had not read yet."""
        return isinstance(self._reader.exception(), ConnectionResetError)

    def peer_answers(self) -> bool:
        """After a stall: whether the peer's TCP is still there and answering, its window closed because the
        application does not read (then a new connection would only fill another receive buffer), rather than
        a peer or path gone silent (data sent and not acknowledged, window probes unanswered). A unix peer is
        on this host: there while the connection is open."""
        if not self.usable():
            return False
        if not self._tcp:
            return True
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
        except OSError:
            return False
        retransmits, probes = info[2], info[3]
        return retransmits == 0 and probes <= 1  # one probe may be out, its answer on the way

    def abort(self) -> None:
        """Close at once, dropping what the event loop still buffers. What the kernel holds still goes out
        (FIN after it, not RST), so a peer that reads again gets it: only ever duplicates."""
        self._writer.transport.abort()

    async def close(self) -> None:
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass


def _tls_socket_transport(writer: asyncio.StreamWriter) -> Any:
    """The socket transport under CPython's TLS transport, whose buffer the TLS transport's size leaves out;
    None elsewhere (uvloop)."""
    protocol = getattr(writer.transport, "_ssl_protocol", None)
    inner = getattr(protocol, "_transport", None)
    return inner if callable(getattr(inner, "get_write_buffer_size", None)) else None


class DatagramTransport(Transport):
    """One message per datagram, written without awaiting unless the socket buffer is full."""

    stream = False

    def __init__(self, address: Address, sock: socket.socket) -> None:
        super().__init__(address)
        self._sock = sock

    def usable(self) -> bool:
        return self._sock.fileno() >= 0

    async def send(self, messages: list[bytes], timeout: float) -> list[int]:
        sock = self._sock
        too_large: list[int] = []
        loop = asyncio.get_running_loop()
        self.progress = 0
        for msg in messages:
            try:
                sock.send(msg)
            except BlockingIOError:
                await asyncio.wait_for(loop.sock_sendall(sock, msg), timeout)
            except OSError as e:
                if e.errno != errno.EMSGSIZE:
                    raise
                too_large.append(len(msg))
            self.progress += 1
        return too_large

    async def close(self) -> None:
        self._sock.close()


async def connect(address: Address, timeout: float, tls: ssl.SSLContext | None = None,
                  server_name: str = "", relp_window: int | None = None) -> Transport:
    """Open a transport to `address`; raises OSError (refused, unreachable, timeout, TLS failure).
    `relp_window`: relp:// only, most messages sent ahead of their acknowledgements (None: RELP's default)."""
    if address.scheme in ("relp", "relp+tls"):
        from shipper.sinks.syslog import relp  # imports this module

        return await relp.connect_relp(address, timeout, tls, server_name, relp_window or relp.DEFAULT_WINDOW)
    if address.scheme == "udp":
        return await _connect_udp(address, timeout)
    if address.scheme == "unix":
        return await _connect_unix(address, timeout)
    ssl_arg = None
    if address.scheme == "tls":
        if tls is None:
            raise ssl.SSLError(f"{address}: no TLS context")
        ssl_arg = tls
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address.host, address.port, ssl=ssl_arg,
                                server_hostname=(server_name or address.host) if ssl_arg else None),
        timeout)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.version() == "TLSv1.3":
        await _await_rejection(reader, writer)
    return StreamTransport(address, reader, writer)


async def _await_rejection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Raise if the receiver closes the connection or alerts right after a TLS 1.3 handshake."""
    try:
        data = await asyncio.wait_for(reader.read(1), TLS13_REJECT_WAIT_SECS)
    except TimeoutError:
        return  # silence: accepted (a syslog receiver never sends anything)
    except OSError:
        writer.close()
        raise
    if not data:
        writer.close()
        raise ConnectionResetError(errno.ECONNRESET, "closed right after the TLS handshake (client "
                                                     "certificate missing or refused?)")


async def _connect_udp(address: Address, timeout: float) -> Transport:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM), timeout)
    error: OSError = OSError(errno.EHOSTUNREACH, f"{address}: no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(sockaddr)  # connected: an ICMP 'port unreachable' comes back as ECONNREFUSED
        except OSError as e:
            sock.close()
            error = e
            continue
        return DatagramTransport(address, sock)
    raise error


async def _connect_unix(address: Address, timeout: float) -> Transport:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(address.path)
        return DatagramTransport(address, sock)
    except OSError as e:
        sock.close()
        if e.errno != errno.EPROTOTYPE:  # EPROTOTYPE: the socket is a stream socket
            raise
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(address.path), timeout)
    return StreamTransport(address, reader, writer)
