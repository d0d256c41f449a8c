"""RELP, rsyslog's Reliable Event Logging Protocol (librelp's doc/relp.html): a syslog transport with
application-level acknowledgements, as rsyslog's omrelp speaks it to imrelp.

Every frame is `TXNR SP COMMAND SP DATALEN [SP DATA] TRAILER` (TRAILER: LF). TXNR numbers the client's frames
1, 2, 3, ... within a session (after 999999999 comes 1 again); the receiver answers each with a `rsp` frame
carrying the same TXNR and a status: `200 OK`, or `500 ...` for a message it refused. A session:

    1 open 52 relp_version=0\\nrelp_software=shipper\\ncommands=syslog   ->   1 rsp 93 200 OK\\n<its offers>
    2 syslog 61 <134>1 2024-05-01T12:34:56.123456Z node-1 web-1 - stdout - hello   ->   2 rsp 6 200 OK
    ...
    N close 0                                                          ->   N rsp 0   (then 0 serverclose 0)

and the receiver may send `0 serverclose 0` at any time: it is going away, like a lost connection.

The syslog message travels bare (DATALEN frames it: no octet counting, no LF): the text the encoder makes
for a datagram. Up to `window` messages are sent ahead of their acknowledgements; `send()` returns once the
receiver acknowledged every message it was given, and on any failure raises OSError with `progress` set to
how many messages, from the first, were acknowledged: the sink retries the rest, on a new session, so a
message is never lost and at most the window's worth is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import socket
import ssl
from dataclasses import dataclass

from shipper.sinks.syslog.transport import Address, Transport

SCHEMES = ("relp", "relp+tls")
DEFAULT_WINDOW = 128  # librelp's default window, and omrelp's
MAX_WINDOW = 65536
MAX_TXNR = 999_999_999
OFFERS = b"relp_version=0\nrelp_software=shipper\ncommands=syslog"
MAX_RESPONSE_BYTES = 1 << 20  # a receiver only ever sends short responses: more is a broken peer
CLOSE_WAIT_SECS = 2.0  # longest wait for the receiver to answer `close`
READ_SIZE = 1 << 16

_HEADER = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})([ \n])")
_HEADER_PREFIX = re.compile(rb"[0-9]{0,9}(?: (?:[A-Za-z]{0,32}(?: [0-9]{0,9})?)?)?")


class RelpError(OSError):
    """The receiver broke the protocol (or is no RELP receiver at all)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


class RelpRefused(OSError):
    """The receiver answered a negative response (`500 ...`): it did not take the message (or the session)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


@dataclass(frozen=True, slots=True)
class Frame:
    txnr: int
    command: str
    data: bytes = b""


def encode_frame(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    """One frame, to the byte: `TXNR SP COMMAND SP DATALEN [SP DATA] LF`."""
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)


def next_txnr(txnr: int) -> int:
    """The TXNR after `txnr`: 1 ... 999999999, then 1 again.

    librelp itself moves from 999999999 to 1000000000 (which a frame cannot carry) before wrapping, so a
    librelp receiver ends a session at that point; that costs one reconnect per billion messages and no loss.
    """
    return 1 if txnr >= MAX_TXNR else txnr + 1


class FrameParser:
    """Frames out of a byte stream, however it is split across reads."""

    def __init__(self, max_data: int = MAX_RESPONSE_BYTES) -> None:
        self._buf = bytearray()
        self._max_data = max_data

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Every frame `data` completes; raises RelpError for bytes that cannot begin or continue a frame."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        n = len(buf)
        while pos < n:
            m = _HEADER.match(buf, pos)
            if m is None:
                if _HEADER_PREFIX.fullmatch(buf, pos) is None:
                    raise RelpError(f"not a RELP frame: {bytes(buf[pos:pos + 60])!r}")
                break  # a header still arriving
            txnr, command, size = int(m[1]), m[2].decode("ascii"), int(m[3])
            if size > self._max_data:
                raise RelpError(f"frame {txnr} {command} announces {size} bytes of data")
            end = m.end()
            if m[4] == b"\n":  # `TXNR SP COMMAND SP 0 LF`
                if size:
                    raise RelpError(f"frame {txnr} {command}: {size} bytes of data announced, none sent")
                frames.append(Frame(txnr, command))
                pos = end
                continue
            if n < end + size + 1:
                break  # data or trailer still arriving
            if buf[end + size] != 0x0A:
                raise RelpError(f"frame {txnr} {command}: no LF after its {size} bytes of data")
            frames.append(Frame(txnr, command, bytes(buf[end:end + size])))
            pos = end + size + 1
        del buf[:pos]
        return frames


def parse_response(data: bytes) -> tuple[int, str, bytes]:
    """A `rsp` frame's data, `CODE [SP TEXT] [LF CMDDATA]`: (code, text, cmddata); raises RelpError."""
    head, _, rest = data.partition(b"\n")
    code, _, text = head.partition(b" ")
    if len(code) != 3 or not code.isdigit():
        raise RelpError(f"response without a status code: {data[:60]!r}")
    return int(code), text.decode("utf-8", "replace"), rest


def parse_offers(data: bytes) -> dict[str, str]:
    """`name=value` lines (the value may be missing) of an `open` command or its response."""
    offers = {}
    for line in data.split(b"\n"):
        if line:
            name, _, value = line.partition(b"=")
            offers[name.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return offers


class RelpTransport(Transport):
    """One RELP session. A task reads the receiver's frames as they come (acknowledgements, a
    `serverclose`), so `usable()` knows when the receiver has gone even while the sink is idle."""

    # No syslog framing (each message is one RELP frame), and a failed send() reports in `progress` how many
    # messages were acknowledged: the sink treats both as it does for datagrams.
    stream = False

    def __init__(self, address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 window: int = DEFAULT_WINDOW, txnr: int = 2, parser: FrameParser | None = None,
                 offers: dict[str, str] | None = None) -> None:
        super().__init__(address)
        self.window = window
        self.offers = offers or {}
        self._reader = reader
        self._writer = writer
        self._parser = parser or FrameParser()
        self._txnr = txnr  # the next frame's
        self._pending: dict[int, int] = {}  # TXNR -> index, in the current send(), of a message not yet answered
        self._acked = bytearray()  # per message of the current send(): 1 once acknowledged
        self._refused: tuple[int, int, str] | None = None  # (index, code, text) of the first refusal
        self._control: dict[int, asyncio.Future[Frame]] = {}  # TXNR -> the answer to `close`
        self._gone: OSError | None = None  # why the session ended (EOF, serverclose, error); no more sends
        self._wake = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._read_frames())

    # --- the receiver's side ---

    async def _read_frames(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: closed by the receiver")
                for frame in self._parser.feed(data):
                    self._on_frame(frame)
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure ends the session; send() reports it
            self._end(e if isinstance(e, OSError) else RelpError(f"{self.address}: {type(e).__name__}: {e}"))

    def _on_frame(self, frame: Frame) -> None:
        if frame.command == "rsp":
            index = self._pending.pop(frame.txnr, None)
            if index is not None:
                code, text, _ = parse_response(frame.data)
                if 200 <= code < 300:
                    self._acked[index] = 1
                elif self._refused is None:
                    self._refused = (index, code, text)
                return
            waiter = self._control.pop(frame.txnr, None)
            if waiter is None:
                raise RelpError(f"{self.address}: response to transaction {frame.txnr}, which is not open")
            if not waiter.done():
                waiter.set_result(frame)
        elif frame.command == "serverclose":
            raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: the receiver closed the session "
                                                         "(serverclose)")
        else:
            raise RelpError(f"{self.address}: unexpected command from the receiver: {frame.command!r}")

    def _end(self, error: OSError) -> None:
        if self._gone is None:
            self._gone = error
        for waiter in self._control.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._control.clear()
        self._wake.set()

    # --- Transport ---

    def usable(self) -> bool:
        return self._gone is None and not self._writer.is_closing()

    def _take_txnr(self) -> int:
        t = self._txnr
        self._txnr = next_txnr(t)
        return t

    async def send(self, messages: list[bytes], timeout: float) -> list[int]:
        """Send every message and wait until the receiver acknowledged each. `timeout` is the longest wait
        with no acknowledgement at all. Raises OSError, with `progress` the messages acknowledged from the
        first on; the session is not used again after a failure."""
        self.progress = 0
        # Let the loop run twice first: a serverclose or FIN already received is then seen.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        n = len(messages)
        self._pending.clear()
        self._acked = acked = bytearray(n)
        self._refused = None
        sent = 0
        try:
            while True:
                self._wake.clear()
                while self.progress < n and acked[self.progress]:
                    self.progress += 1
                if self._refused is not None:
                    index, code, text = self._refused
                    raise RelpRefused(f"{self.address}: the receiver refused message {index + 1} of {n}: "
                                      f"{code} {text}".rstrip())
                if self._gone is not None:
                    raise self._gone
                if self.progress == n:
                    return []
                if sent < n and len(self._pending) < self.window:
                    frames = []
                    while sent < n and len(self._pending) < self.window:
                        txnr = self._take_txnr()
                        self._pending[txnr] = sent
                        frames.append(encode_frame(txnr, b"syslog", messages[sent]))
                        sent += 1
                    if self._writer.is_closing():
                        raise ConnectionResetError(errno.ECONNRESET, f"{self.address}: connection closed")
                    self._writer.write(b"".join(frames))
                    try:
                        await asyncio.wait_for(self._writer.drain(), timeout)
                    except TimeoutError:
                        raise TimeoutError(errno.ETIMEDOUT, f"{self.address}: the receiver took nothing for "
                                                            f"{timeout:g}s") from None
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    raise TimeoutError(errno.ETIMEDOUT, f"{self.address}: no acknowledgement for {timeout:g}s "
                                                        f"({len(self._pending)} messages unanswered)") from None
        except BaseException as e:
            self._end(e if isinstance(e, OSError) else RelpError(f"{self.address}: send interrupted"))
            raise

    async def close(self) -> None:
        """End the session with `close` when it is healthy and idle (waiting briefly for the answer), then
        the connection; never raises."""
        try:
            if self.usable() and not self._pending:
                txnr = self._take_txnr()
                waiter: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
                self._control[txnr] = waiter
                self._writer.write(encode_frame(txnr, b"close"))
                with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                    await asyncio.wait_for(waiter, CLOSE_WAIT_SECS)
        finally:
            self._end(ConnectionResetError(errno.ECONNRESET, f"{self.address}: session closed"))
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
            try:
                self._writer.close()
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
            except (OSError, TimeoutError, ssl.SSLError):
                pass


async def _open_session(address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        parser: FrameParser) -> dict[str, str]:
    """Send `open` (TXNR 1) and read its answer; returns the receiver's offers."""
    writer.write(encode_frame(1, b"open", OFFERS))
    await writer.drain()
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, f"{address}: closed before answering the RELP open "
                                                         "(client certificate missing or refused, or no RELP "
                                                         "receiver?)")
        frames = parser.feed(data)
        if frames:
            break
    frame = frames[0]
    if frame.command == "serverclose":
        raise ConnectionResetError(errno.ECONNRESET, f"{address}: the receiver closed the session at open")
    if frame.command != "rsp" or frame.txnr != 1 or len(frames) > 1:
        raise RelpError(f"{address}: unexpected answer to open: {frame.txnr} {frame.command}")
    code, text, data = parse_response(frame.data)
    if not 200 <= code < 300:
        raise RelpRefused(f"{address}: the receiver refused the session: {code} {text}".rstrip())
    offers = parse_offers(data)
    commands = offers.get("commands")
    if commands is not None and "syslog" not in commands.split(","):
        raise RelpError(f"{address}: the receiver does not take syslog messages (commands={commands})")
    return offers


async def connect_relp(address: Address, timeout: float, tls: ssl.SSLContext | None = None,
                       server_name: str = "", window: int = DEFAULT_WINDOW) -> RelpTransport:
    """Connect (TLS for relp+tls://) and open a session, all within `timeout`; raises OSError."""
    ssl_arg = None
    if address.scheme == "relp+tls":
        if tls is None:
            raise ssl.SSLError(f"{address}: no TLS context")
        ssl_arg = tls
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address.host, address.port, ssl=ssl_arg,
                                server_hostname=(server_name or address.host) if ssl_arg else None),
        timeout)
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        parser = FrameParser()
        try:
            offers = await asyncio.wait_for(_open_session(address, reader, writer, parser),
                                            max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"{address}: no answer to the RELP open within {timeout:g}s "
                                                "(no RELP receiver?)") from None
        except (ConnectionError, ssl.SSLError, EOFError) as e:
            if ssl_arg is None:
                raise
            # TLS 1.3: the receiver checks our certificate after our handshake is over, and refuses it by
            # closing the connection under the open (a broken pipe, a reset or an alert, as timing has it)
            raise ConnectionResetError(errno.ECONNRESET, f"closed during the RELP open over TLS (client "
                                                         f"certificate missing or refused?): {e!r}") from e
    except BaseException:
        writer.close()
        raise
    return RelpTransport(address, reader, writer, window, txnr=2, parser=parser, offers=offers)
