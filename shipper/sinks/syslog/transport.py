"""Sockets for syslog: UDP, TCP, TLS (RFC 5425) and unix (datagram, else stream, as /dev/log may be either).

A transport knows nothing of syslog messages: it carries a list of already framed messages, one datagram
each or written back to back on a stream. `send` returns once the bytes are in the kernel (stream: after
`drain()`), which is all a syslog sender can ever know: there is no acknowledgement in the protocol.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import urlsplit

from shipper.tls import client_context

SCHEMES = ("udp", "tcp", "tls", "unix")
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}  # RFC 5426, common practice, RFC 5425
UDP_MAX_PAYLOAD = 65507  # IPv4: 65535 - 8 (UDP header) - 20 (IP header)
# TLS 1.3 finishes the client's handshake before the server has checked the client's certificate: a
# receiver that refuses it answers with an alert a round trip later, after the first batch would have been
# written "successfully" into a connection about to close. Wait this long for such an answer first.
TLS13_REJECT_WAIT_SECS = 1.0


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
    """`udp://host:port`, `tcp://host:port`, `tls://host:port` (port optional) or `unix:///path`."""
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
    stream = True

    def __init__(self, address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(address)
        self._reader = reader
        self._writer = writer

    def usable(self) -> bool:
        # A receiver that went away has sent FIN (EOF) or RST (exception). Writing into such a socket still
        # "succeeds" once, into the kernel buffer, and those bytes are lost: look before writing.
        r = self._reader
        return not (self._writer.is_closing() or r.at_eof() or r.exception() is not None)

    async def send(self, messages: list[bytes], timeout: float) -> list[int]:
        # Let the loop run twice first: a FIN or RST that reached the socket is then seen by usable().
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if not self.usable():
            raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: closed by the receiver")
        self._writer.write(messages[0] if len(messages) == 1 else b"".join(messages))
        await asyncio.wait_for(self._writer.drain(), timeout)
        return []

    async def close(self) -> None:
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass


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
                  server_name: str = "") -> Transport:
    """Open a transport to `address`; raises OSError (refused, unreachable, timeout, TLS failure)."""
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
