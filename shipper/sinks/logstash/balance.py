"""Hosts: their state, counters and backoff, and which one takes the next window or request.

`loadbalance = true` spreads windows over every healthy host, the least busy first, as libbeat's load
balancer hands batches to whichever client is free. `loadbalance = false` keeps to one host, in the order
given, and moves on to the next when it fails (it stays there: no flapping back). A host that failed is not
used again before its backoff has passed while another one works; when none works, the one that failed
longest ago is tried, so a single host is paced by the runner's backoff. A request never goes back to a host
that failed during it: each send tries each host at most once, then reports what it could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import insort
from collections.abc import Awaitable, Callable, Sequence

from shipper.backoff import Backoff
from shipper.errors import RetryableSinkError
from shipper.sinks.logstash.beats import AckListener, BeatsConnection, WindowFailed
from shipper.sinks.logstash.config import Host, LogstashConfig
from shipper.sinks.logstash.lumberjack import Frames
from shipper.sinks.logstash.window import AdaptiveWindow
from shipper.telemetry import events as tel
from shipper.telemetry.metrics import Metrics


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class HostState:
    """One host as the sink sees it: up or down, since when, its window, its connection (beats)."""

    def __init__(self, host: Host, cfg: LogstashConfig, sink: str, metrics: Metrics) -> None:
        self.host = host
        self.name = str(host)
        self.sink = sink
        self.metrics = metrics
        self.window = AdaptiveWindow(cfg.window_max_events, cfg.slow_start)
        self.backoff = Backoff(cfg.backoff_init_secs, cfg.backoff_max_secs)
        self.retry_at = 0.0  # monotonic: not used before this while another host works
        self.failed_at = -1.0  # monotonic time of the last failure
        self.up: bool | None = None  # None: not tried yet
        self.last_error = ""
        self.conn: BeatsConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.busy = 0  # windows or requests reserved on this host
        tel.logstash_window_size(metrics, sink, self.name, self.window.size)

    def status(self) -> dict[str, object]:
        """For /status: up, down (with the error, and when it is tried again) or not tried yet."""
        state = "untried" if self.up is None else "up" if self.up else "down"
        doc: dict[str, object] = {"host": self.name, "state": state, "busy": self.busy,
                                  "window": self.window.size, "last_error": self.last_error}
        if self.up is False:
            doc["retry_in_secs"] = round(max(self.retry_at - time.monotonic(), 0.0), 2)
        return doc

    def usable(self, now: float) -> bool:
        return bool(self.up) or now >= self.retry_at

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.alive

    def succeeded(self) -> None:
        if self.up is not True:
            self.up = True
            self.backoff.reset()
            tel.logstash_host_up(self.metrics, self.sink, self.name)

    def failed(self, error: BaseException, what: str, unacked: int = 0) -> None:
        now = time.monotonic()
        self.failed_at = now
        delay = self.backoff.next_delay()
        self.retry_at = now + delay
        self.last_error = describe(error)
        first = self.up is not False
        self.up = False
        tel.logstash_host_down(self.metrics, self.sink, self.name, what, self.last_error, delay, unacked, first)

    def listener(self) -> AckListener:
        m, sink, name = self.metrics, self.sink, self.name
        return AckListener(keepalive=lambda: tel.logstash_keepalive(m, sink, name),
                           partial=lambda acked, count: tel.logstash_partial_ack(m, sink, name, acked, count))


class HostPool:
    def __init__(self, hosts: Sequence[Host], cfg: LogstashConfig, sink: str, metrics: Metrics) -> None:
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.hosts = [HostState(h, cfg, sink, metrics) for h in hosts]
        self.active = 0  # loadbalance = false: the host in use
        self._turn = 0  # loadbalance: round robin among equally busy hosts
        self._waiters: list[asyncio.Future[None]] = []

    # --- changes ------------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed (a slot freed, a connect finished): whoever waits looks again."""
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(f)
        return f

    def window_size(self) -> int:
        """The window a request is most likely cut into: the largest of the hosts' (a healthy host's)."""
        return max(h.window.size for h in self.hosts)

    # --- choosing -----------------------------------------------------------------------------------------

    def candidates(self, since: float) -> list[HostState]:
        """Hosts a request started at `since` may use, in the order to prefer them: not failed during it,
        and up or past their backoff; if none, the one that failed longest ago (so one host, or all of them
        down, is paced by the runner's backoff rather than the hosts')."""
        now = time.monotonic()
        fresh = [h for h in self.hosts if h.failed_at < since]
        usable = [h for h in fresh if h.usable(now)]
        if not usable:
            usable = sorted(fresh, key=lambda h: h.retry_at)[:1]
        if self.cfg.loadbalance or not usable:
            return usable
        n = len(self.hosts)
        for k in range(n):  # failover: the active host, else the next usable one after it
            h = self.hosts[(self.active + k) % n]
            if h in usable:
                self._activate(h)
                return [h]
        return []  # pragma: no cover - usable is a subset of hosts

    def _activate(self, h: HostState) -> None:
        i = self.hosts.index(h)
        if i != self.active:
            old = self.hosts[self.active]
            self.active = i
            tel.logstash_failover(self.metrics, self.sink, old.name, h.name)

    def least_busy(self, hosts: Sequence[HostState]) -> HostState:
        low = min(h.busy for h in hosts)
        best = [h for h in hosts if h.busy == low]
        self._turn += 1
        return best[self._turn % len(best)]


class BeatsDispatcher:
    """Sends one request's documents as windows over the pool's connections: cuts a window of the host's
    current size, encodes it, writes it, waits for its ACKs. A window that fails gives back what was not
    acked; another host (or the same one, reconnected, if it was an idle connection that closed) takes it."""

    def __init__(self, pool: HostPool, connect: Callable[[HostState], Awaitable[BeatsConnection]],
                 encode: Callable[[bytes, int], Awaitable[list[bytes]]]) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.slots = max(1, self.cfg.pipelining)
        self._connect_fn = connect
        self._encode = encode

    def _start_connect(self, h: HostState) -> None:
        if h.connecting is None and not h.connected:
            h.connecting = asyncio.create_task(self._connect(h), name=f"logstash:{h.name}:connect")

    async def _connect(self, h: HostState) -> None:
        try:
            old, h.conn = h.conn, None
            if old is not None:
                await old.close()
            h.conn = await self._connect_fn(h)
        except Exception as e:  # refused, unreachable, DNS, timeout, TLS; anything else must not spin either
            h.failed(e, "connect")
        finally:
            h.connecting = None
            self.pool.wake()

    def _reserve(self, since: float) -> tuple[HostState | None, bool]:
        """A host with a free slot, reserved; else (None, whether waiting can help: a connect is under way
        or every slot of a connected host is taken by other windows)."""
        hosts = self.pool.candidates(since)
        for h in hosts:
            self._start_connect(h)
        free = [h for h in hosts if h.connected and h.busy < self.slots]
        if free:
            h = self.pool.least_busy(free)
            h.busy += 1
            return h, True
        return None, any(h.connecting is not None or h.connected for h in hosts)

    async def send(self, docs: Frames) -> list[int]:
        """Deliver every document; returns the indices of those no host acknowledged (all delivered: [])."""
        since = time.monotonic()
        todo: list[range] = [range(len(docs))] if docs else []
        running: dict[asyncio.Task[None], tuple[HostState, range]] = {}
        errors: list[str] = []
        try:
            while todo or running:
                hopeful = True
                while todo:
                    h, hopeful = self._reserve(since)
                    if h is None:
                        break
                    head = todo.pop(0)
                    size = h.window.size
                    if len(head) > size:
                        todo.insert(0, head[size:])
                        head = head[:size]
                    assert h.conn is not None  # _reserve hands out connected hosts only
                    task = asyncio.create_task(self._window(h, h.conn, docs, head))
                    running[task] = (h, head)
                if todo and not running and not hopeful:
                    break  # every host failed during this request: the runner backs off and retries the rest
                waiter = self.pool.changed()
                done, _ = await asyncio.wait([*running, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for t in done:
                    if t is waiter or t not in running:
                        continue
                    h, piece = running.pop(t)
                    exc = t.exception()
                    if exc is None:
                        continue
                    acked = exc.acked if isinstance(exc, WindowFailed) else 0
                    errors.append(f"{h.name}: {describe(exc)}")
                    rest = piece[acked:]
                    if rest:
                        insort(todo, rest, key=lambda r: r.start)
                        if len(self.pool.hosts) > 1:
                            tel.logstash_events_moved(self.pool.metrics, self.pool.sink, h.name, len(rest))
        finally:
            for t in running:
                t.cancel()
            for t in list(running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        left = [i for r in todo for i in r]
        if left and len(left) == len(docs):
            tried = "; ".join(errors) or "; ".join(f"{h.name}: {h.last_error or 'not reachable'}"
                                                   for h in self.pool.hosts)
            raise RetryableSinkError(f"no Logstash host took the request: {tried}")
        return left

    async def _window(self, h: HostState, conn: BeatsConnection, docs: Frames, piece: range) -> None:
        try:
            frames = await self._encode(docs.window(piece), len(piece))
            try:
                await conn.send_window(frames, len(piece))
            except WindowFailed as e:
                h.window.shrink()
                tel.logstash_window_size(self.pool.metrics, self.pool.sink, h.name, h.window.size)
                if h.conn is conn:  # the first window to fail on this connection reports it
                    h.conn = None
                    h.failed(e.cause, "window", len(piece) - e.acked)
                raise
            h.succeeded()
            grown = h.window.size
            h.window.grew(len(piece))
            if h.window.size != grown:
                tel.logstash_window_size(self.pool.metrics, self.pool.sink, h.name, h.window.size)
            tel.logstash_window_acked(self.pool.metrics, self.pool.sink, h.name, len(piece))
        finally:
            h.busy -= 1
            self.pool.wake()

    async def close(self) -> None:
        for h in self.pool.hosts:
            if h.connecting is not None:
                h.connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await h.connecting
            conn, h.conn = h.conn, None
            if conn is not None:
                await conn.close()
