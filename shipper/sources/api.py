"""Reads a container's log through the Engine API (`GET /containers/{id}/logs?follow=1&timestamps=1`).

Used when the json-file is not readable (remote daemon, other log driver with dual logging, no access to
the data root). Without a TTY the stream is multiplexed: each log message is one frame, an 8-byte header
(stream type: 1 stdout, 2 stderr, 3 a daemon error; three zero bytes; big-endian uint32 length) then the
payload, and frames ignore chunk boundaries. With a TTY it is the raw terminal output, stdout only, with
"\\r\\n" line ends. With timestamps=1 every message starts with dockerd's RFC 3339 timestamp (always nine
fraction digits, UTC) and a space; a message that does not end in "\\n" is a 16 KiB partial.

Positions and resuming
    A position is a timestamp plus how many entries with exactly that timestamp come before it:
    "2024-05-01T12:00:00.123456789Z" or "2024-05-01T12:00:00.123456789Z+000002". Resuming from (T, n)
    asks dockerd for `since=T` (it sends entries stamped T or later), then drops entries stamped before T
    and the first n stamped exactly T: those were emitted already. dockerd stamps entries with
    nanoseconds, so n is almost always 0. Positions compare as strings in stream order, so the
    assembler's `safe_position` may take the smallest. Limitation of the API itself: an entry whose
    timestamp is older than one already written (stdout and stderr are stamped by separate goroutines)
    can fall before `since` and is not re-sent after a reconnect.

The stream ends when the container stops (and on a daemon restart): then `inspect` tells whether to
reconnect at once, or flush the open events and wait for a restart (`started()`, or a slow poll).

Framed or raw is the container's Config.Tty, from inspect: dockerd 20.10 sends no Content-Type on this
endpoint (API 1.42 added application/vnd.docker.raw-stream / multiplexed-stream, which is honoured when
present). A reader given a guessed info asks inspect before its first connection, and a stream that is not
in the expected format makes it ask again. Every failure is counted (shipper_reader_failures_total) and
logged with its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from dataclasses import replace
from typing import Any

from shipper.backoff import Backoff
from shipper.config import StartAt
from shipper.docker.client import DockerClient, LogStream, since_from_ns
from shipper.docker.metadata import ContainerInfo
from shipper.errors import ContainerGone, DockerError, DockerUnavailable
from shipper.event import Checkpoint, ContainerMeta
from shipper.sources.base import LogSource, SourceContext
from shipper.telemetry import events
from shipper.timefmt import parse_ns

log = logging.getLogger("shipper.sources.api")

RETRY_INITIAL_SECS = 0.1  # first reconnect delay of a log stream; then doubling up to docker.reconnect_max_secs
RETRY_FLOOR_SECS = 0.05  # a stream that ends at once (with data, so the backoff resets) must not spin
MAX_FRAME = 1024 * 1024  # dockerd frames hold one message (16 KiB of text at most): longer is a broken stream
PARTIAL_BYTES = 16 * 1024  # dockerd's partial message size
_HEADER = struct.Struct(">BxxxL")
_TS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
_TS_LEN = 31  # "2006-01-02T15:04:05.000000000Z "
STREAMS = {1: "stdout", 2: "stderr"}
SYSTEMERR = 3
_END = object()


class BrokenStream(DockerError):
    """The log stream is not in the expected format; reconnecting starts a clean one."""

    retriable = True


class FrameDecoder:
    """Splits a multiplexed stream into (stream type, payload); keeps a frame cut by a chunk for the next."""

    def __init__(self) -> None:
        self._buf = b""
        self.cut = b""  # set by finish(): the start of a frame the stream ended in

    def reset(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        out = []
        i = 0
        n = len(buf)
        unpack = _HEADER.unpack_from
        while n - i >= 8:
            kind, length = unpack(buf, i)
            if kind > SYSTEMERR or buf[i + 1:i + 4] != b"\0\0\0" or length > MAX_FRAME:
                raise BrokenStream(f"not a log frame header: {buf[i:i + 8]!r}")
            end = i + 8 + length
            if end > n:
                break
            out.append((kind, buf[i + 8:end]))
            i = end
        self._buf = buf[i:] if i else buf
        return out

    def finish(self) -> list[tuple[int, bytes]]:
        """The stream ended cleanly: a frame cut short there was never sent whole."""
        if self._buf:
            self.cut = self._buf
        self._buf = b""
        return []


class TtyDecoder:
    """Splits a TTY stream into stdout messages at "\\n" (the "\\r" before it is the assembler's to drop).

    There are no frames, so a 16 KiB partial message runs straight into the next message's timestamp;
    it is cut there when a timestamp follows exactly 16 KiB of text.
    """

    def __init__(self) -> None:
        self._buf = b""

    def reset(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        rest = lines.pop()
        out: list[tuple[int, bytes]] = []
        for line in lines:
            if len(line) > _TS_LEN + PARTIAL_BYTES:
                line = _cut_partials(line, out)
            out.append((1, line + b"\n"))
        if len(rest) > _TS_LEN + PARTIAL_BYTES:
            rest = _cut_partials(rest, out)
        if len(rest) > MAX_FRAME:
            raise BrokenStream(f"{len(rest)} bytes without a line end or a partial message boundary")
        self._buf = rest
        return out

    def finish(self) -> list[tuple[int, bytes]]:
        """The container exited: what is left is its last output, written without a final newline."""
        rest, self._buf = self._buf, b""
        return [(1, rest)] if rest else []


def _cut_partials(line: bytes, out: list[tuple[int, bytes]]) -> bytes:
    step = _TS_LEN + PARTIAL_BYTES
    match = _TS.match
    while len(line) > step and match(line, step):
        out.append((1, line[:step]))
        line = line[step:]
    return line


def parse_position(pos: str) -> tuple[str, int]:
    ts, _, n = pos.partition("+")
    return ts, int(n) if n else 0


def format_position(ts: str, n: int) -> str:
    return f"{ts}+{n:06d}" if n else ts


ts_to_ns = parse_ns  # the name the json-file reader and the tests import


class ApiSource(LogSource):
    def __init__(self, info: ContainerInfo, ctx: SourceContext, resume: Checkpoint | None,
                 client: DockerClient | None = None) -> None:
        super().__init__(info, ctx, resume)
        if client is None and ctx.docker_client() is None:
            raise ValueError("ApiSource needs a DockerClient (SourceContext.docker)")
        self._client = client
        cfg = ctx.config
        self._batch_max = cfg.input.batch_max_events
        self._chunk = cfg.input.read_chunk_bytes
        self._poll = max(cfg.docker.poll_interval_secs, 0.01)
        self._backoff_max = max(cfg.docker.reconnect_max_secs, RETRY_INITIAL_SECS)
        self._decoder: FrameDecoder | TtyDecoder = TtyDecoder() if info.tty else FrameDecoder()
        self._check_format = info.guessed  # ask inspect for Config.Tty before the next connection
        self._start_seen = False  # a start event came since the current stream was opened
        # what has been handed to the assembler: the last timestamp and how many entries carried it
        self._last_ts = ""
        self._run = 0
        # the resume filter of the current connection (None: off)
        self._skip_ns: int | None = None
        self._skip_n = 0
        self._skip_seen = 0
        self._fresh_since: str | None = None
        if resume is not None and isinstance(resume.position, str) and resume.position:
            self._last_ts, self._run = parse_position(resume.position)
        else:
            if resume is not None:
                log.info("checkpoint is not an API position (read mode changed?); applying start_at "
                         "container=%s", self._label)
            if cfg.docker.start_at is StartAt.END:
                self._fresh_since = since_from_ns(time.time_ns())

    @property
    def client(self) -> DockerClient:
        """The client given, else the app's current one (it is replaced when discovery restarts)."""
        client = self._client or self.ctx.docker_client()
        if client is None:
            raise DockerUnavailable("no Docker API client")
        return client

    def renamed(self, meta: ContainerMeta) -> None:
        super().renamed(meta)
        self._wake.set()  # the app reports a restart of a known container this way too

    def started(self) -> None:
        self._start_seen = True
        super().started()

    async def run(self) -> None:
        self._running = True
        try:
            await self._loop()
        finally:
            self._running = False
            self._done.set()

    # --- the loop --------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = Backoff(RETRY_INITIAL_SECS, self._backoff_max, floor=RETRY_FLOOR_SECS)
        failures = 0  # connections that failed in a row (the backoff also counts clean ends without data)
        cid = self.meta.id
        while not self._closing:
            try:
                if self._check_format:
                    await self._learn_format()
                self._start_connection()
                self._start_seen = False  # a start from now on may have logs this stream does not carry
                stream = await self.client.open_logs(cid, follow=True, since=self._since(), timestamps=True,
                                                     chunk_bytes=self._chunk)
                if "raw-stream" in stream.content_type and isinstance(self._decoder, FrameDecoder):
                    self._decoder = TtyDecoder()  # the daemon knows best whether there is a TTY
                elif "multiplexed-stream" in stream.content_type and isinstance(self._decoder, TtyDecoder):
                    self._decoder = FrameDecoder()
                got = await self._consume(stream)
                ended_cleanly = True
            except ContainerGone:
                if not self._last_ts:  # removed before a single entry was streamed: never silently
                    events.container_unreadable(self.ctx.metrics, self._label, "gone_before_read",
                                                "removed before its log could be streamed (read = \"api\"; "
                                                "read = \"auto\" reads the json-file, which outlives it)")
                await self._finish()
                return
            except DockerError as e:  # unreachable, cut, broken, or an HTTP error
                failures += 1
                got, ended_cleanly = False, False
                delay = backoff.next_delay()
                if isinstance(e, BrokenStream):
                    self._check_format = True  # framed vs raw may be what is wrong: ask the container's config
                self.ctx.metrics.inc("shipper_docker_reconnects_total", where="logs")
                events.reader_failed(self.ctx.metrics, self._label, failures, delay, e)
            if self._closing:
                await self._emit()
                return
            if got:
                backoff.reset()
                failures = 0
            if not ended_cleanly:
                await self._idle(delay)
                continue
            # a clean end: the container stopped, or dockerd is going away
            try:
                running = await self._running_now()
            except ContainerGone:
                await self._finish()
                return
            except DockerError:
                await self._idle(backoff.next_delay())
                continue
            if running and not self._removed:
                if self._stop_pending:  # it exited and was restarted already: close what the last run left open
                    self._stop_pending = False
                    self._asm.flush()
                    await self._emit()
                await self._idle(min(backoff.next_delay(), self._poll))
                continue
            # exited: everything it wrote was in the stream
            self._stop_pending = False
            self._feed(self._final_frames())
            self._asm.flush()
            await self._emit()
            if self._removed:
                return
            if not await self._wait_restart():
                return

    async def _learn_format(self) -> None:
        """Framed or raw, from the container's Config.Tty (inspect): the logs endpoint of dockerd 20.10 does not
        say. Raises ContainerGone; another failure leaves the decoder as it is, to be asked again."""
        d = await self.client.inspect(self.meta.id)
        tty = bool((d.get("Config") or {}).get("Tty"))
        self._check_format = False
        if tty != isinstance(self._decoder, TtyDecoder):
            log.info("log stream format set from the container's config container=%s tty=%s", self._label, tty)
            self._decoder = TtyDecoder() if tty else FrameDecoder()
        if tty != self.info.tty or self.info.guessed:
            self.info = replace(self.info, tty=tty, guessed=False)

    async def _running_now(self) -> bool:
        state = (await self.client.inspect(self.meta.id)).get("State") or {}
        return bool(state.get("Running")) or bool(state.get("Restarting"))

    async def _wait_restart(self) -> bool:
        """Wait until the stopped container runs again (True) or is removed / shutdown comes (False)."""
        pace = Backoff(self._poll, max(self._backoff_max, self._poll), floor=self._poll)  # slowing, >= poll
        while True:
            if self._start_seen:  # it ran again, perhaps so briefly that it has stopped already: stream it
                return True
            await self._idle(pace.next_delay())
            if self._removed or self._closing:
                await self._emit()
                return False
            try:
                if await self._running_now():
                    return True
            except ContainerGone:
                return False
            except DockerError as e:
                log.debug("inspect failed while waiting for a restart container=%s error=%s", self._label, e)

    async def _finish(self) -> None:
        """The container no longer exists: emit what was read, open events included."""
        self._feed(self._final_frames())
        self._asm.flush()
        await self._emit()

    def _final_frames(self) -> list[tuple[int, bytes]]:
        frames = self._decoder.finish()
        if isinstance(self._decoder, FrameDecoder) and self._decoder.cut:
            events.line_invalid(self.ctx.metrics, self._label, "cut_frame", self._decoder.cut[:120])
            self._decoder.cut = b""
        return frames

    async def _idle(self, delay: float) -> bool:
        """Sleep up to `delay`; True when woken early."""
        woken = self._wake.is_set()
        if not woken:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
                woken = True
        self._wake.clear()
        return woken

    async def _consume(self, stream: LogStream) -> bool:
        """Read one connection until it ends; True if any data came."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        pump = asyncio.create_task(_pump(stream, queue))
        got = False
        try:
            while True:
                if queue.empty():
                    try:
                        item = await asyncio.wait_for(queue.get(), self._poll)
                    except TimeoutError:
                        self._asm.flush_expired(time.monotonic())
                        await self._emit()
                        if self._closing:
                            return got
                        continue
                else:
                    item = queue.get_nowait()
                if item is _END:
                    return got
                if isinstance(item, BaseException):
                    raise item
                got = True
                self._feed(self._decoder.feed(item))
                self._asm.flush_expired(time.monotonic())
                if queue.empty() or len(self._asm.out) >= self._batch_max:
                    await self._emit()
                if self._closing:
                    return got
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            stream.close()

    # --- entries ---------------------------------------------------------------------------------------

    def _start_connection(self) -> None:
        """Arm the resume filter for a new connection from what was handed to the assembler so far."""
        self._decoder.reset()
        self._skip_ns = None
        if self._last_ts:
            self._skip_n, self._skip_seen = self._run, 0
            try:
                self._skip_ns = parse_ns(self._last_ts)
            except ValueError:
                log.warning("unreadable resume position, reading from the start container=%s position=%r",
                            self._label, self._last_ts)
                self._last_ts, self._run = "", 0

    def _since(self) -> str | None:
        if self._last_ts:
            return since_from_ns(parse_ns(self._last_ts))
        return self._fresh_since

    def _feed(self, frames: list[tuple[int, bytes]]) -> None:
        if not frames:
            return
        add = self._asm.add
        m = self.ctx.metrics
        size = 0
        for kind, payload in frames:
            size += len(payload)
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                events.line_invalid(m, self._label, "invalid_utf8", payload[:120])
                continue
            ts, sp, text = text.partition(" ")
            stream = STREAMS.get(kind)
            if stream is None or not sp or len(ts) < 20:
                self._odd_frame(kind, payload)
                continue
            if self._skip_ns is not None and self._skipped(ts):
                continue
            if ts == self._last_ts:
                self._run += 1
            else:
                self._last_ts = ts
                self._run = 1
            add(ts, stream, text, format_position(ts, self._run - 1))
        m.inc("shipper_entries_read_total", len(frames), container=self._label)
        m.inc("shipper_bytes_read_total", size, container=self._label)

    def _skipped(self, ts: str) -> bool:
        """The resume filter: True for an entry emitted before this connection (see the module doc)."""
        assert self._skip_ns is not None
        try:
            ns = parse_ns(ts)
        except ValueError:
            ns = self._skip_ns + 1  # unreadable: deliver it rather than guess
        if ns < self._skip_ns:
            return True
        if ns == self._skip_ns and self._skip_seen < self._skip_n:
            self._skip_seen += 1
            return True
        self._skip_ns = None
        return False

    def _odd_frame(self, kind: int, payload: bytes) -> None:
        m = self.ctx.metrics
        if kind == SYSTEMERR:
            events.line_invalid(m, self._label, "daemon_error", payload[:200])
        elif kind not in STREAMS:
            events.line_invalid(m, self._label, "unknown_stream", payload[:120])
        else:
            events.line_invalid(m, self._label, "no_timestamp", payload[:120])

    async def _emit(self) -> None:
        out = self._asm.take()
        if not out:
            return
        current = format_position(self._last_ts, self._run) if self._last_ts else ""
        safe = self._asm.safe_position(current)
        cp = Checkpoint(self.meta.id, safe) if safe else None
        await self._hand_over(out, cp, self._batch_max)


async def _pump(stream: LogStream, queue: asyncio.Queue[Any]) -> None:
    """Moves chunks from the connection to the reader; the bounded queue carries backpressure."""
    try:
        async for chunk in stream:
            await queue.put(chunk)
    except DockerUnavailable as e:
        await queue.put(e)
        return
    await queue.put(_END)
