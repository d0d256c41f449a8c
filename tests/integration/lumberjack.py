"""A Lumberjack v2 server for tests, written from the beats input's PROTOCOL.md and how its BeatsHandler
acknowledges, with no code of the sink under test: it reads window, json and compressed frames, and answers
as told, per window, in the order the windows arrive:

    "ack"                  the last sequence once the whole window is read (what Logstash does)
    "ack_each"             every sequence as its frame is read (progressive partial ACKs)
    ("keepalive", s, i)    ACKs of sequence 0 every i seconds for s seconds, then the last sequence
    ("repeat", s, i)       half the window, that same sequence again every i seconds for s seconds, then the last
    ("partial_drop", k)    the sequence k, then closes the connection (what Logstash dying mid-window looks like)
    "drop"                 closes the connection without any ACK
    "stall"                reads the window and never answers (a hung Logstash whose TCP still works)

Once the plan is used up every window gets "ack". It stands in for Logstash for the faults Logstash cannot be
made to show on demand here (there is no Logstash on the test machines); tests/integration/test_logstash.py
checks it against pylogbeat, an independent client, so it is not only tested against the sink.

A received event is recorded when its window is read whole (before any ACK), as Logstash's pipeline would
have it: a dropped connection after a partial ACK can leave events received and not acknowledged, which is
how duplicates come about.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

Step = str | tuple[Any, ...]


@dataclass
class Window:
    count: int
    compressed: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)


def _frames(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """The frames of a decompressed payload: (type, sequence or count, document)."""
    out = []
    pos = 0
    while pos < len(data):
        version, kind = data[pos:pos + 1], data[pos + 1:pos + 2]
        if version != b"2":
            raise ValueError(f"version {version!r}")
        if kind == b"J":
            seq, size = struct.unpack(">II", data[pos + 2:pos + 10])
            out.append((kind, seq, data[pos + 10:pos + 10 + size]))
            pos += 10 + size
        elif kind == b"W":
            out.append((kind, struct.unpack(">I", data[pos + 2:pos + 6])[0], b""))
            pos += 6
        else:
            raise ValueError(f"frame {kind!r} inside a compressed frame")
    return out


class LumberjackServer:
    def __init__(self, tls: ssl.SSLContext | None = None, plan: list[Step] | None = None) -> None:
        self.tls = tls
        self.plan: list[Step] = list(plan or [])
        self.windows: list[Window] = []
        self.acks_sent: list[int] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for w in list(self.windows) for e in w.events]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- running -----------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> LumberjackServer:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port, ssl=self.tls,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection at once (a killed Logstash: no goodbye)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def drop_connections(self) -> None:
        """Close every connection and keep listening (what the beats input does to an idle client after
        client_inactivity_timeout)."""
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def start_thread(self, port: int = 0) -> LumberjackServer:
        """Serve from a loop in a thread of its own (for tests that are not async, with a daemon process)."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start(port))
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="lumberjack", daemon=True)
        self._thread.start()
        assert ready.wait(10), "lumberjack test server did not start"
        return self

    def call(self, coro_fn: Any) -> None:
        """Run a coroutine function on the server's loop (thread mode) and wait for it."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(10)

    def stop_thread(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.call(self.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    # --- one connection ----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads windows as they come (a client may pipeline several) and answers them in order, from a task
        of its own, as the beats input decodes while its pipeline works."""
        self.connections += 1
        self._writers.add(writer)
        todo: asyncio.Queue[tuple[Window, Step, int] | None] = asyncio.Queue()
        answers = asyncio.create_task(self._answer(todo, reader, writer))
        try:
            while not answers.done():
                todo.put_nowait(await self._read_window(reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            answers.cancel()  # the client is gone: nothing left to answer
            with contextlib.suppress(BaseException):
                await answers
            self._writers.discard(writer)
            writer.transport.abort()

    def _ack(self, writer: asyncio.StreamWriter, seq: int) -> None:
        self.acks_sent.append(seq)
        writer.write(struct.pack(">ccI", b"2", b"A", seq))

    async def _read_window(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> tuple[Window, Step, int]:
        head = await reader.readexactly(2)
        if head != b"2W":
            raise ConnectionError(f"expected a window frame, got {head!r}")
        (count,) = struct.unpack(">I", await reader.readexactly(4))
        step: Step = self.plan.pop(0) if self.plan else "ack"
        kind = step if isinstance(step, str) else step[0]
        docs: list[tuple[int, bytes]] = []
        compressed = False
        while len(docs) < count:
            head = await reader.readexactly(2)
            if head == b"2J":
                seq, size = struct.unpack(">II", await reader.readexactly(8))
                docs.append((seq, await reader.readexactly(size)))
                if kind == "ack_each":
                    self._ack(writer, seq)
            elif head == b"2C":
                compressed = True
                (size,) = struct.unpack(">I", await reader.readexactly(4))
                for ftype, seq, doc in _frames(zlib.decompress(await reader.readexactly(size))):
                    if ftype == b"J":
                        docs.append((seq, doc))
                        if kind == "ack_each":
                            self._ack(writer, seq)
            else:
                raise ConnectionError(f"unexpected frame {head!r} in a window")
        window = Window(count, compressed, [json.loads(d) for _, d in docs], [s for s, _ in docs])
        self.windows.append(window)
        return window, step, docs[-1][0] if docs else 0

    async def _answer(self, todo: asyncio.Queue[tuple[Window, Step, int] | None], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            while (item := await todo.get()) is not None:
                _, step, last = item
                args: tuple[Any, ...] = () if isinstance(step, str) else step[1:]
                kind = step if isinstance(step, str) else step[0]
                if kind == "ack":
                    self._ack(writer, last)
                elif kind in ("keepalive", "repeat"):
                    secs, every = float(args[0]), float(args[1])
                    half = max(1, last // 2)
                    if kind == "repeat":
                        self._ack(writer, half)
                    end = time.monotonic() + secs
                    while time.monotonic() < end:
                        await asyncio.sleep(every)
                        self._ack(writer, 0 if kind == "keepalive" else half)
                        await writer.drain()
                    self._ack(writer, last)
                elif kind == "partial_drop":
                    self._ack(writer, int(args[0]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    return
                elif kind == "drop":
                    return
                elif kind == "stall":
                    await asyncio.sleep(3600)  # until the client gives up and closes
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.transport.abort()
