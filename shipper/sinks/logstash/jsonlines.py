"""JSON lines over TCP or TLS, for Logstash's tcp input with `codec => json_lines`: one ECS document a line.

The protocol has no acknowledgement, so "delivered" is what the syslog sink's stream transport already
tells: a request counts as delivered once Logstash's TCP has acknowledged its last byte (SIOCOUTQ), never
when it merely sits in this host's buffers. A connection lost before that keeps the lines its TCP did
acknowledge (none after a reset: the receiver discarded what it had not read) and the rest go to the next
host, or to the same one after a backoff. A Logstash that stops reading keeps its connection when there is
no other host: the request waits on it (see `_keep`), so a stall never counts more as delivered than one
receive buffer.
"""

from __future__ import annotations

import logging
import ssl
import time

from shipper.errors import RetryableSinkError
from shipper.sinks.logstash.balance import HostPool, HostState, describe
from shipper.sinks.syslog.transport import Address, StreamTransport, connect
from shipper.telemetry import events as tel

log = logging.getLogger("shipper.sinks.logstash")


class JsonLinesClient:
    def __init__(self, pool: HostPool, tls: ssl.SSLContext | None, server_name: str) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.tls = tls
        self.server_name = server_name
        self._conns: dict[str, StreamTransport] = {}
        # host -> (connection, bytes, start, end) of a request written there and waited on through a stall
        self._held: dict[str, tuple[StreamTransport, bytes, int, int]] = {}
        self._stalled: dict[str, bool] = {}

    async def _connection(self, h: HostState) -> StreamTransport:
        t = self._conns.get(h.name)
        if t is not None and t.usable():
            return t
        if t is not None:
            del self._conns[h.name]
            await t.close()
        scheme = "tls" if self.tls is not None else "tcp"
        new = await connect(Address(scheme, h.host.host, h.host.port), self.cfg.connect_timeout_secs, self.tls,
                            self.server_name)
        assert isinstance(new, StreamTransport)
        self._conns[h.name] = new
        return new

    async def send(self, blob: bytes, events: int) -> int:
        """Deliver the lines of `blob`; returns how many of its first lines were delivered when no host could
        take the rest (all of them: `events`). Raises RetryableSinkError when none was delivered."""
        since = time.monotonic()
        done_bytes = done_events = 0
        errors: list[str] = []
        while done_bytes < len(blob):
            hosts = self.pool.candidates(since)
            if not hosts:
                break
            h = self.pool.least_busy(hosts)
            rest = blob[done_bytes:] if done_bytes else blob
            h.busy += 1
            try:
                t = await self._connection(h)
                held = self._held.pop(h.name, None)
                if held is not None and held[0] is t and held[1] is rest:
                    start, end = held[2], held[3]  # written on this connection before a stall: wait, never twice
                else:
                    end = (await t.write([rest]))[-1]
                    start = end - len(rest)
                try:
                    await t.wait_acked(end, self.cfg.timeout_secs)
                except OSError as e:
                    if self._keep(h, t, e):
                        self._held[h.name] = (t, rest, start, end)
                        raise RetryableSinkError(f"{h.name}: Logstash took nothing for {self.cfg.timeout_secs:g}s; "
                                                 "waiting on the same connection") from e
                    acked = 0 if t.reset else max(0, t.acked() - start)
                    if acked:
                        cut = rest.rfind(b"\n", 0, acked) + 1  # whole lines only
                        n = rest.count(b"\n", 0, cut)
                        done_bytes += cut
                        done_events += n
                        tel.logstash_events_acked(self.pool.metrics, self.pool.sink, h.name, n)
                    t.abort()
                    self._conns.pop(h.name, None)
                    raise
            except (OSError, ValueError) as e:  # refused, reset, timeout, TLS (a bad certificate name: ValueError)
                errors.append(f"{h.name}: {describe(e)}")
                h.failed(e, "send", events - done_events)
                continue
            finally:
                h.busy -= 1
            if self._stalled.pop(h.name, None):
                log.info("logstash host takes data again sink=%s host=%s", self.pool.sink, h.name)
            h.succeeded()
            tel.logstash_events_acked(self.pool.metrics, self.pool.sink, h.name, events - done_events)
            return events
        if not done_events:
            raise RetryableSinkError("no Logstash host took the request: " + ("; ".join(errors) or "all down"))
        return done_events

    def _keep(self, h: HostState, t: StreamTransport, e: OSError) -> bool:
        """After `timeout_secs` with nothing acknowledged: whether to keep the connection and wait on it, as the
        syslog sink does. While Logstash's TCP still answers (its window closed because the input does not
        read), a new connection would only fill another receive buffer and count those lines as delivered; so
        with no other host to go to, the same request waits on the same connection. The stall is logged once."""
        if not isinstance(e, TimeoutError):
            return False
        keep = len(self.pool.hosts) == 1 and t.peer_answers()
        if not self._stalled.get(h.name):
            self._stalled[h.name] = True
            tel.sink_stalled(self.pool.metrics, self.pool.sink, h.name, t.unacked_bytes, self.cfg.timeout_secs,
                             keep)
        return keep

    async def close(self) -> None:
        self._held.clear()
        conns, self._conns = self._conns, {}
        for t in conns.values():
            await t.close()
