"""NDJSON batches over HTTP(S), for Logstash's http input: one POST per request, delivered when Logstash
answers 2xx (the input answers once its pipeline has taken the events).

429, 5xx, 408 and connection errors are outages: the next host is tried, else the request is retried with
backoff; a Retry-After (seconds or an HTTP date) is honoured, capped by `retry_after_max_secs`, before that
host is asked again. A 413 (body too large for the input) splits the request in halves, each sent on its own, down
to a single event, which alone is refused. Any other answer (400, 401, 403, 404, a redirect) can never
succeed as sent: the request is refused for good (counted as dropped) and the response body is in the
logged error. The password
is sent only as basic auth and never appears in a log line or an error.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import ssl
import time

import aiohttp

from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.sinks.base import Partial
from shipper.sinks.logstash.balance import HostPool, HostState, describe
from shipper.telemetry import events as tel

CONTENT_TYPE = "application/x-ndjson"  # Logstash: additional_codecs => { "application/x-ndjson" => "json_lines" }
BODY_IN_ERROR = 512  # bytes of a refusing response's body kept in the error
RETRY_STATUSES = frozenset({408, 429})


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _TooLarge(Exception):
    """413: the body is larger than the input takes; smaller ones may pass."""


class HttpClient:
    def __init__(self, pool: HostPool, tls: ssl.SSLContext | None, user: str, password: str) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.tls = tls
        self.headers = {"Content-Type": CONTENT_TYPE, **self.cfg.headers}
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        if self.cfg.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None
        self._not_before: dict[str, float] = {}  # host -> monotonic time its Retry-After ends

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.tls if self.tls is not None else True, limit=0)
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_secs, sock_connect=self.cfg.connect_timeout_secs)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def body(self, blob: bytes) -> bytes:
        if not self.cfg.gzip:
            return blob
        level = self.cfg.compression_level or 6
        if len(blob) < 65536:
            return gzip.compress(blob, level, mtime=0)  # mtime 0: a retry sends the same bytes
        return await asyncio.to_thread(gzip.compress, blob, level, mtime=0)

    async def send(self, blob: bytes, events: int) -> Partial | None:
        """POST the lines of `blob`. A body the input finds too large (413) is split in halves and each sent
        on its own, down to one event, which is then refused for good: the input's limit is not an outage."""
        chunks: list[tuple[int, bytes, int]] = [(0, blob, events)]
        rejected: list[int] = []
        reason = ""
        while chunks:
            start, data, n = chunks.pop(0)
            try:
                await self._send_one(await self.body(data), n)
            except _TooLarge as e:
                if n == 1:
                    rejected.append(start)
                    reason = str(e)
                    continue
                lines = data.split(b"\n")[:-1]
                k = n // 2
                chunks[0:0] = [(start, b"".join(x + b"\n" for x in lines[:k]), k),
                               (start + k, b"".join(x + b"\n" for x in lines[k:]), n - k)]
            except RetryableSinkError as e:
                if start == 0:
                    raise
                return Partial(retry=range(start, events), rejected=rejected, reason=str(e))
        return Partial(rejected=rejected, reason=reason) if rejected else None

    async def _send_one(self, body: bytes, events: int) -> None:
        since = time.monotonic()
        errors: list[str] = []
        while True:
            hosts = self.pool.candidates(since)
            if not hosts:
                raise RetryableSinkError("no Logstash host took the request: " + ("; ".join(errors) or "all down"))
            now = time.monotonic()
            h = self.pool.least_busy([x for x in hosts if self._not_before.get(x.name, 0) <= now] or hosts)
            wait = self._not_before.get(h.name, 0) - now
            if wait > 0:  # Retry-After: this host asked not to be asked again before then
                await asyncio.sleep(wait)
            h.busy += 1
            try:
                error = await self._post(h, body, events)
            finally:
                h.busy -= 1
            if error is None:
                return
            errors.append(error)

    async def _post(self, h: HostState, body: bytes, events: int) -> str | None:
        """None when delivered; a description when this host failed (retry elsewhere or later)."""
        sink, m = self.pool.sink, self.pool.metrics
        server_name = self.cfg.tls_server_name
        try:
            async with self.session().post(h.host.url, data=body, headers=self.headers, allow_redirects=False,
                                           server_hostname=server_name or None) as resp:
                raw = await resp.read()
                status = resp.status
                after = retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            h.failed(e, "request", events)
            return f"{h.name}: {describe(e)}"
        if 200 <= status < 300:
            h.succeeded()
            self._not_before.pop(h.name, None)
            tel.logstash_events_acked(m, sink, h.name, events, status)
            return None
        text = raw[:BODY_IN_ERROR].decode("utf-8", "replace")
        if status in RETRY_STATUSES or status >= 500:
            tel.logstash_http_response(m, sink, h.name, status, text, "retry")
            reason = f"{h.name}: HTTP {status} {text!r}"
            h.failed(RetryableSinkError(reason), "request", events)
            if after is not None:
                until = time.monotonic() + min(after, self.cfg.retry_after_max_secs)
                self._not_before[h.name] = until
                h.retry_at = max(h.retry_at, until)
            return reason
        if status == 413:
            tel.logstash_http_response(m, sink, h.name, status, text, "split" if events > 1 else "reject")
            raise _TooLarge(f"Logstash http input at {h.host.url} refused {events} events as too large: HTTP 413 "
                            f"{text!r}")
        tel.logstash_http_response(m, sink, h.name, status, text, "reject")
        raise FatalSinkError(f"Logstash http input at {h.host.url} refused the request: HTTP {status} {text!r}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
