"""JSON lines over TCP or TLS, for Logstash's tcp input with `codec => json_lines`: one ECS document a line.

The protocol has no acknowledgement, so "delivered" is what the syslog sink's stream transport already
tells: a request counts as delivered once Logstash's TCP has acknowledged its last byte (SIOCOUTQ), never
when it merely sits in this host's buffers. A connection lost before that keeps the lines its TCP did
acknowledge (none after a reset: the receiver discarded what it had not read) and the rest go to the next
host, or to the same one after a backoff.
"""

from __future__ import annotations

import ssl
import time

from shipper.errors import RetryableSinkError
from shipper.sinks.logstash.balance import HostPool, HostState, describe
from shipper.sinks.syslog.transport import Address, StreamTransport, connect
from shipper.telemetry import events as tel


class JsonLinesClient:
    def __init__(self, pool: HostPool, tls: ssl.SSLContext | None, server_name: str) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.tls = tls
        self.server_name = server_name
        self._conns: dict[str, StreamTransport] = {}

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
                ends = await t.write([rest])
                start = ends[-1] - len(rest)
                try:
                    await t.wait_acked(ends[-1], self.cfg.timeout_secs)
                except OSError:
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
            h.succeeded()
            tel.logstash_events_acked(self.pool.metrics, self.pool.sink, h.name, events - done_events)
            return events
        if not done_events:
            raise RetryableSinkError("no Logstash host took the request: " + ("; ".join(errors) or "all down"))
        return done_events

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for t in conns.values():
            await t.close()
