"""The syslog sink: encodes each batch once, writes it once, fails over between addresses in order.

Syslog has no acknowledgement. On datagrams delivery means "handed to the socket"; it resumes a retried batch
after the last datagram that went out, so a retry does not repeat what was already sent. On streams (TCP, TLS,
unix) a request is delivered once the peer's TCP has acknowledged its last byte (a unix peer: read it), as
the kernel's send queue tells (SIOCOUTQ): what still sits in this host's buffers is never counted as sent. A
receiver that takes nothing for `write_timeout_secs` fails the request (retried, the sink stays 'retrying'
or 'failing'); while its TCP still answers, the same connection is kept and waited on, since a new one would
only fill another receive buffer. A connection lost first has its unacknowledged messages written again on
the next one, and all of the request's messages after a reset (RST: the receiver discarded what it had not
read): duplicates, not losses. Before each write it checks whether the receiver has closed the connection.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch
from shipper.schema import doc, naming, parse_each
from shipper.sinks.base import Partial, Request, Sink, SinkBase, SinkContext, pick
from shipper.sinks.syslog.encode import (
    MIN_MESSAGE_BYTES,
    NILVALUE,
    Encoded,
    EncoderOptions,
    Facility,
    Format,
    Framing,
    Severity,
    SyslogEncoder,
    Template,
    check_sd_id,
)
from shipper.sinks.syslog.relp import DEFAULT_WINDOW as RELP_DEFAULT_WINDOW
from shipper.sinks.syslog.relp import MAX_WINDOW as RELP_MAX_WINDOW
from shipper.sinks.syslog.transport import (
    UDP_MAX_PAYLOAD,
    Address,
    StreamTransport,
    Transport,
    connect,
    parse_address,
    tls_context,
)
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics
from shipper.tls import TlsVersion, check_tls_keys

log = logging.getLogger("shipper.sinks.syslog")

# Longest syslog message (framing excluded) per transport when max_message_bytes is 0. UDP: RFC 5426 says
# 2048 is what a receiver should take and more risks IP fragmentation. Unix: rsyslog's default
# $MaxMessageSize (8 KiB) is what a local /dev/log reader usually takes. TCP/TLS: 64 KiB, which the receiver
# must be set up for (rsyslog: global(maxMessageSize="64k")).
# RELP: the same as TCP (rsyslog's imrelp takes up to maxMessageSize by default, like imtcp).
DEFAULT_MAX_MESSAGE_BYTES = {"udp": 2048, "unix": 8192, "tcp": 65536, "tls": 65536, "relp": 65536,
                             "relp+tls": 65536}
MAX_MESSAGE_BYTES_CAP = 16 * 1024 * 1024


@dataclass(frozen=True)
class SyslogConfig(SinkBase):
    address: list[str] = doc(["unix:///dev/log"],
                             "udp://host:port, tcp://host:port, tls://host:port, unix:///path, or "
                             "relp://host:port and relp+tls://host:port (RELP: acknowledged, the tls_* keys "
                             "apply to relp+tls); a list fails over in order")
    format: Format = doc(Format.RFC5424,
                         "'rfc5424' (structured data, microseconds) or 'rfc3164' (BSD)")
    framing: Framing = doc(Framing.OCTET_COUNTING,
                           "stream transports: 'octet-counting' (RFC 6587, any byte allowed) or 'lf' "
                           "(one message a line, LF inside written as #012)")
    facility: Facility = doc(Facility.LOCAL0,
                             "syslog facility: kern, user, daemon, ..., local0-local7")
    severity: Severity = doc(Severity.INFO,
                             "severity of stdout events without a JSON level")
    stderr_severity: Severity = doc(Severity.ERR,
                                    "severity of stderr events without a JSON level")
    app_name: str = doc("{container.name}", "APP-NAME (RFC 3164: TAG) template; fields {container.name}, "
                                            "{container.id}, {container.image}, {compose.project}, "
                                            "{compose.service}, {host.name}, {stream}; {field:N} keeps "
                                            "the first N characters")
    procid: str = doc(NILVALUE, "PROCID template (same fields); '-' for none")
    msgid: str = doc("{stream}", "MSGID template (same fields)")
    sd_id: str = doc("docker@32473", "SD-ID of the container's structured data: name@enterprise-number")
    sd_labels: bool = doc(False, "add the container's labels as a second SD element, name.labels@number")
    bom: bool = doc(False, "RFC 5424: start MSG with a UTF-8 byte order mark")
    max_message_bytes: int = doc(0, "longest syslog message, framing excluded; MSG is cut at a UTF-8 "
                                    "boundary past it (0: udp 2048, unix 8192, tcp/tls/relp 65536)")
    relp_window: int = doc(RELP_DEFAULT_WINDOW, "relp://: most messages sent and not yet acknowledged by the receiver")
    tls_ca: str = doc("", "tls://: CA bundle that signed the receiver's certificate (default: system roots)")
    tls_cert: str = doc("", "tls://: client certificate, for receivers that require mutual TLS")
    tls_key: str = doc("", "tls://: the client certificate's private key")
    tls_verify_hostname: bool = doc(True, "tls://: check the certificate names the host (the chain is "
                                          "always checked)")
    tls_server_name: str = doc("", "tls://: name to send (SNI) and check, when it differs from the host")
    tls_min_version: TlsVersion = doc(TlsVersion.V1_2,
                                      "tls://: oldest TLS version allowed: '1.2' or '1.3'")
    connect_timeout_secs: float = doc(10.0, "longest wait to connect (and finish the TLS handshake)")
    write_timeout_secs: float = doc(30.0, "longest wait for a batch to be taken by the socket")

    def validate(self, key: str) -> None:
        super().validate(key)
        if not self.address:
            raise ConfigError(f"{key}.address", "needs at least one address")
        addresses = parse_each(f"{key}.address", self.address, parse_address)
        for name in ("app_name", "procid", "msgid"):
            with naming(f"{key}.{name}"):
                Template(getattr(self, name))
        with naming(f"{key}.sd_id"):
            check_sd_id(self.sd_id)
        limit = self.max_message_bytes
        if limit and not MIN_MESSAGE_BYTES <= limit <= MAX_MESSAGE_BYTES_CAP:
            raise ConfigError(f"{key}.max_message_bytes", f"must be 0 (per transport) or between "
                                                          f"{MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES_CAP}")
        if limit > UDP_MAX_PAYLOAD and any(a.scheme == "udp" for a in addresses):
            raise ConfigError(f"{key}.max_message_bytes", f"a UDP datagram carries at most {UDP_MAX_PAYLOAD}")
        check_tls_keys(key, self, any(a.scheme in ("tls", "relp+tls") for a in addresses),
                       "no address is tls:// or relp+tls://")
        if not 1 <= self.relp_window <= RELP_MAX_WINDOW:
            raise ConfigError(f"{key}.relp_window", f"must be between 1 and {RELP_MAX_WINDOW}")
        for name in ("connect_timeout_secs", "write_timeout_secs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be positive")

    def encoder_options(self, host_name: str = "") -> EncoderOptions:
        return EncoderOptions(format=self.format, facility=self.facility, severity=self.severity,
                              stderr_severity=self.stderr_severity, app_name=self.app_name,
                              procid=self.procid, msgid=self.msgid, sd_id=self.sd_id,
                              sd_labels=self.sd_labels, bom=self.bom, host_name=host_name)


class SyslogPayload:
    """A request's messages. Encoded when the request is built for the first address's transport, and again
    only if a failover lands on a transport with other framing or size limit; truncations are counted once."""

    __slots__ = ("batches", "by_key", "counted")

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.by_key: dict[tuple[bool, int], Encoded] = {}
        self.counted = False


@dataclass(slots=True, eq=False)
class _Sent:
    """A request written on a stream connection and not yet acknowledged by the receiver as a whole."""

    payload: SyslogPayload
    first: int = 0  # its messages before this one were acknowledged on an earlier connection: not written again
    transport: StreamTransport | None = None  # the connection carrying the rest, None once that is lost
    ends: list[int] = field(default_factory=list)  # that connection's byte offset after each message from `first`
    written: bool = False  # written at least once: writing it again may duplicate

    def forget(self, acked: int) -> None:
        """Its connection is gone: what `acked` covers arrived; the rest is written again on the next one."""
        self.first += bisect.bisect_right(self.ends, acked)
        self.transport = None
        self.ends = []


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _failover(m: Metrics, sink: str, old: Address, new: Address) -> None:
    m.inc("shipper_sink_failovers_total", sink=sink)
    log.warning("syslog sink failed over sink=%s from=%s to=%s", sink, old, new)


class SyslogSink(Sink):
    Config = SyslogConfig
    config: SyslogConfig

    def __init__(self, config: SyslogConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.addresses = [parse_address(a) for a in config.address]
        self.encoder = SyslogEncoder(config.encoder_options(context.host_name))
        self.index = 0  # the address in use, or tried first on the next connect
        self.transport: Transport | None = None
        self._tls: ssl.SSLContext | None = None
        self._lock = asyncio.Lock()
        self._sent: dict[int, _Sent] = {}  # id(payload) -> stream requests written, not yet acknowledged
        self._stalled = False  # the receiver took nothing for write_timeout_secs and has not since

    @property
    def address(self) -> Address:
        return self.addresses[self.index]

    async def start(self) -> None:
        if any(a.scheme in ("tls", "relp+tls") for a in self.addresses):
            cfg = self.config
            try:
                self._tls = tls_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key, cfg.tls_verify_hostname,
                                        cfg.tls_min_version.value)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise RetryableSinkError(f"syslog TLS setup failed (tls_ca/tls_cert/tls_key): {e}") from e

    async def healthcheck(self) -> None:
        async with self._lock:
            await self._ready()

    async def _ready(self) -> Transport:
        t = self.transport
        if t is not None:
            if t.usable():
                return t
            await self._drop()
        return await self._connect()

    async def _connect(self) -> Transport:
        if self._tls is None:
            await self.start()
        errors = []
        n = len(self.addresses)
        for k in range(n):
            i = (self.index + k) % n
            addr = self.addresses[i]
            try:
                t = await connect(addr, self.config.connect_timeout_secs, self._tls,
                                  self.config.tls_server_name, self.config.relp_window)
            except OSError as e:  # refused, unreachable, DNS, timeout, TLS handshake or verification
                errors.append(f"{addr}: {_describe(e)}")
                continue
            if i != self.index:
                _failover(self.context.metrics, self.context.name, self.addresses[self.index], addr)
            self.index = i
            self.transport = t
            return t
        raise RetryableSinkError("syslog receiver unreachable: " + "; ".join(errors))

    async def _drop(self) -> None:
        t, self.transport = self.transport, None
        if t is not None:
            self._forget(t)
            await t.close()

    def _forget(self, t: Transport) -> None:
        """`t` is lost: its requests keep what it got acknowledged and write the rest on the next connection;
        all of it after a reset, which discards what the receiver's kernel held unread."""
        if isinstance(t, StreamTransport):
            acked = 0 if t.reset else t.acked()
            for sent in self._sent.values():
                if sent.transport is t:
                    sent.forget(acked)

    def limit(self, address: Address) -> int:
        return self.config.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES[address.scheme]

    def _key(self, stream: bool, address: Address) -> tuple[bool, int]:
        return stream, self.limit(address)

    def encode(self, batches: list[Batch]) -> Request:
        payload = SyslogPayload(batches)
        first = self.addresses[self.index]
        self._encoded(payload, self._key(first.stream, first))
        return Request(batches, payload)

    def _encoded(self, payload: SyslogPayload, key: tuple[bool, int]) -> Encoded:
        enc = payload.by_key.get(key)
        if enc is None:
            framing = self.config.framing if key[0] else None
            parts = [self.encoder.encode_batch(b, key[1], framing) for b in payload.batches]
            if not payload.counted:
                payload.counted = True
                for batch, part in zip(payload.batches, parts, strict=True):
                    self._count(batch, part)
            enc = parts[0] if len(parts) == 1 else Encoded([m for p in parts for m in p.messages])
            payload.by_key[key] = enc
        return enc

    def subset(self, request: Request, indices: Sequence[int]) -> Request:
        """Datagrams that did not go out: the same messages, not encoded (or counted) again."""
        old: SyslogPayload = request.payload
        indices = sorted(indices)
        batches = pick(request.batches, indices)
        payload = SyslogPayload(batches)
        payload.counted = True
        payload.by_key = {k: Encoded([e.messages[i] for i in indices]) for k, e in old.by_key.items()}
        return Request(batches, payload, len(indices))

    async def send(self, request: Request) -> Partial | None:
        if not request.events:
            return None
        sent: _Sent | None = None
        too_large: list[int] = []
        async with self._lock:  # one connection: requests in flight are written one after another
            transport = await self._ready()
            enc = self._encoded(request.payload, self._key(transport.stream, transport.address))
            try:
                if isinstance(transport, StreamTransport) and transport.acks:
                    sent = await self._write(transport, request.payload, enc.messages)
                else:
                    too_large = await transport.send(enc.messages, self.config.write_timeout_secs)
            except OSError as e:  # also TimeoutError and ssl.SSLError
                went = 0 if transport.stream else transport.progress  # datagrams went out whole, each
                await self._drop()
                if len(self.addresses) > 1:
                    self.index = (self.index + 1) % len(self.addresses)
                reason = f"syslog send to {transport.address} failed: {_describe(e)}"
                if went:
                    return Partial(retry=range(went, request.events), reason=reason)
                raise RetryableSinkError(reason) from e
        if sent is not None:
            assert isinstance(transport, StreamTransport)
            await self._until_acked(transport, sent)
        if too_large:
            tel.events_dropped(self.context.metrics, "syslog_datagram_too_large", len(too_large),
                               self.context.name)
        return None

    async def _write(self, t: StreamTransport, payload: SyslogPayload, messages: list[bytes]) -> _Sent:
        """Write what of the request `t` does not carry yet: all of it, or what an earlier connection did not
        get acknowledged; nothing when it is a retry after a stall on this same connection (waited on again)."""
        sent = self._sent.pop(id(payload), None)
        if sent is None or sent.payload is not payload:
            sent = _Sent(payload)
        self._sent[id(payload)] = sent  # the most recently used last
        while len(self._sent) > 2 * self.config.max_in_flight + 2:  # the oldest: requests the runner gave up on
            del self._sent[next(iter(self._sent))]
        if sent.transport is not t:
            rest = messages[sent.first:]
            if sent.written and rest:
                tel.sink_resent(self.context.metrics, self.context.name, len(rest))
            sent.ends = await t.write(rest) if rest else []
            sent.transport = t
            sent.written = True
        return sent

    async def _until_acked(self, t: StreamTransport, sent: _Sent) -> None:
        """Wait until the receiver has acknowledged the request's last byte. A receiver that takes nothing for
        write_timeout_secs fails it: the connection is kept while the peer's TCP answers (a new one would only
        fill another receive buffer and count it as sent), else dropped, failing over to the next address."""
        timeout = self.config.write_timeout_secs
        try:
            if sent.ends:
                await t.wait_acked(sent.ends[-1], timeout)
        except OSError as e:  # TimeoutError: a stall; else the connection was lost
            stalled = isinstance(e, TimeoutError)
            keep = stalled and len(self.addresses) == 1 and t.peer_answers()
            if stalled and not self._stalled:
                self._stalled = True
                tel.sink_stalled(self.context.metrics, self.context.name, str(t.address), t.unacked_bytes,
                                 timeout, keep)
            if not keep and self.transport is t:
                self.transport = None
                self._forget(t)
                t.abort()
                if len(self.addresses) > 1:
                    self.index = (self.index + 1) % len(self.addresses)
            raise RetryableSinkError(f"syslog send to {t.address} failed: {_describe(e)}") from e
        self._sent.pop(id(sent.payload), None)
        if self._stalled:
            self._stalled = False
            log.info("syslog receiver takes data again sink=%s address=%s", self.context.name, t.address)

    def _count(self, batch: Batch, encoded: Encoded) -> None:
        m, container = self.context.metrics, batch.container.name
        for size, limit in encoded.truncated:
            tel.event_truncated(m, container, "syslog", size, limit)
        if encoded.bad_timestamps:
            tel.line_invalid(m, container, "syslog_bad_timestamp", n=encoded.bad_timestamps)

    async def close(self) -> None:
        await self._drop()
        self._sent.clear()
