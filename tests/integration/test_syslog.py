"""The syslog sink against a real rsyslogd: every transport and framing, sizes, TLS, failover, a restart.

Each test compares what rsyslog parsed and wrote (header fields, structured data, message) with what
the sink was given, event by event: everything arrives once, intact or cut exactly where the limit says.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.errors import RetryableSinkError
from shipper.event import COMPOSE_PROJECT, COMPOSE_SERVICE, Batch, ContainerMeta, Event
from shipper.schema import build
from shipper.sinks.base import SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.sinks.syslog.sink import SyslogConfig, SyslogSink
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.integration.rsyslog import Rsyslog, available

pytestmark = pytest.mark.rsyslog

DOWN_SECS = 3.0  # how long rsyslog stays down in the restart test; production outages may last far longer
INPUT_NAMES = {"unix_dgram": "imuxsock"}  # imuxsock does not let an input be named


def require_rsyslog() -> None:
    require("rsyslogd", available(), "apt-get install rsyslog rsyslog-gnutls")
    require("openssl", shutil.which("openssl") is not None, "apt-get install openssl")


@pytest.fixture(scope="module")
def rsyslog() -> Iterator[Rsyslog]:
    require_rsyslog()
    r = Rsyslog()
    r.start()
    yield r
    r.close()


def container(tag: str = "") -> ContainerMeta:
    """A container whose name tells this test's records apart from every other test's."""
    name = f"app-{tag}{uuid.uuid4().hex[:8]}"
    return ContainerMeta(id=uuid.uuid4().hex + uuid.uuid4().hex, name=name,
                         image='registry.local:5000/shop/we"b]:1.2\\x',
                         labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"}, host="node-1")


def assert_events_arrived(recs: list[dict[str, Any]], meta: ContainerMeta, input_name: str,
                          newlines_escaped: bool = False) -> None:
    """Every field of every one of EVENTS, as rsyslog parsed it (`newlines_escaped`: LF framing, where rsyslog
    writes a newline inside a message as #012)."""
    for rec, (_, ts, msg, stream, _, pri) in zip(recs, EVENTS, strict=True):
        assert rec["input"] == input_name
        assert rec["pri"] == str(pri)
        assert rec["version"] == "1"
        assert rec["ts"] == ts
        assert rec["host"] == "node-1"
        assert rec["app"] == meta.name
        assert rec["procid"] == meta.id[:12]
        assert rec["msgid"] == stream
        assert rec["sd"] == expected_sd(meta)
        assert rec["msg"] == (msg.replace("\n", "#012") if newlines_escaped else msg)


def expected_sd(meta: ContainerMeta) -> str:
    # written out by hand from RFC 5424 §6.3.3 rather than with the encoder's own escaping
    return (f'[docker@32473 id="{meta.id}" name="{meta.name}" '
            'image="registry.local:5000/shop/we\\"b\\]:1.2\\\\x" '
            'compose_project="shop" compose_service="web"]')


def make_sink(address: str | list[str], name: str = "syslog", **table: Any) -> SyslogSink:
    cfg = build(SyslogConfig, {"type": "syslog", "address": address, **table}, f"sinks.{name}")
    return SyslogSink(cfg, SinkContext(name, Path("/nonexistent"), "daemon-host", Metrics()))


def tls_keys(r: Rsyslog, mutual: bool) -> dict[str, str]:
    assert r.certs is not None
    keys = {"tls_ca": str(r.certs.ca)}
    if mutual:
        keys |= {"tls_cert": str(r.certs.client_cert), "tls_key": str(r.certs.client_key)}
    return keys


def of(meta: ContainerMeta, field: str = "app") -> Any:
    return lambda rec: rec[field] == meta.name


EVENTS = [
    # (timestamp as Docker writes it, what rsyslog must report, message, stream, JSON fields, PRI)
    ("2024-05-01T12:34:56.123456789Z", "2024-05-01T12:34:56.123456Z", "plain line", "stdout", None, 134),
    ("2024-05-01T12:34:56.999999999Z", "2024-05-01T12:34:56.999999Z",
     "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom", "stderr", None, 131),
    ("2024-05-01T12:34:57.000001Z", "2024-05-01T12:34:57.000001Z", '{"level":"warn","msg":"disk"}', "stdout",
     {"level": "warn", "msg": "disk"}, 132),
    ("2024-05-01T12:34:58Z", "2024-05-01T12:34:58.000000Z",
     'ünïcödé ✓ 日本語 "quoted" back\\slash ] bracket\ttab', "stdout", None, 134),
    ("2024-05-01T14:34:59.5+02:00", "2024-05-01T12:34:59.500000Z", '{"level":"debug"}', "stderr",
     {"level": "debug"}, 135),
]

TRANSPORTS = [
    ("udp", {}),
    ("tcp", {"framing": "octet-counting"}),
    ("tcp", {"framing": "lf"}),
    ("ptcp", {"framing": "octet-counting"}),
    ("ptcp", {"framing": "lf"}),
    ("tls", {"framing": "octet-counting"}),
    ("tls", {"framing": "lf"}),
    ("mtls", {}),
    ("unix_dgram", {}),
    ("unix_stream", {}),  # the sink tries a datagram socket first, then falls back to a stream
]


def with_tls(r: Rsyslog, kind: str, table: dict[str, Any]) -> dict[str, Any]:
    if kind in ("tls", "mtls"):
        return {**table, **tls_keys(r, kind == "mtls")}
    return table


@pytest.mark.parametrize(("kind", "table"), TRANSPORTS, ids=[f"{k}-{t.get('framing', 'default')}"
                                                              for k, t in TRANSPORTS])
async def test_every_field_arrives_intact(rsyslog: Rsyslog, kind: str, table: dict[str, Any]) -> None:
    meta = container()
    batch = Batch(meta, [Event(ts, msg, stream, fields, seq=i)
                         for i, (ts, _, msg, stream, fields, _) in enumerate(EVENTS)])
    sink = make_sink(rsyslog.address(kind), procid="{container.id:12}", **with_tls(rsyslog, kind, table))
    await sink.start()
    await sink.send(sink.encode([batch]))
    await sink.close()

    recs = await rsyslog.wait_records(of(meta), len(EVENTS))
    assert len(recs) == len(EVENTS), recs
    lf = table.get("framing") == "lf" and kind not in ("udp", "unix_dgram")
    assert_events_arrived(recs, meta, INPUT_NAMES.get(kind, kind), newlines_escaped=lf)


SIZES = [479, 480, 2048, 8192, 65000]
SIZE_CASES = [  # transport, config, the limit that applies, how many of SIZES it must cut
    ("udp", {}, 2048, 3),  # the per-transport defaults
    ("unix_dgram", {}, 8192, 2),
    ("tcp", {}, 65536, 0),
    ("tls", {"framing": "lf"}, 65536, 0),
    ("ptcp", {"framing": "lf", "max_message_bytes": 8192}, 8192, 2),
    ("tcp", {"max_message_bytes": 480}, 480, 5),  # the smallest limit RFC 5424 allows
]


def sized(n: int, seed: int) -> str:
    """`n` bytes of text mixing 1- and 2-byte characters, so a cut can fall inside a character."""
    unit = "abcé" if seed % 2 else "éab"
    text = (unit * (n // len(unit.encode()) + 1)).encode()[:n].decode("utf-8", "ignore")
    return text + "x" * (n - len(text.encode()))


@pytest.mark.parametrize(("kind", "table", "limit", "cut"), SIZE_CASES,
                         ids=[f"{k}-{lim}" for k, _, lim, _ in SIZE_CASES])
async def test_sizes_are_cut_only_past_the_limit(rsyslog: Rsyslog, kind: str, table: dict[str, Any],
                                                 limit: int, cut: int) -> None:
    meta = container()
    ts = "2024-05-01T12:34:56.123456789Z"
    messages = [sized(n, i) for i, n in enumerate(SIZES)]
    sink = make_sink(rsyslog.address(kind), **with_tls(rsyslog, kind, table))
    await sink.send(sink.encode([Batch(meta, [Event(ts, m, seq=i) for i, m in enumerate(messages)])]))
    await sink.close()

    recs = await rsyslog.wait_records(of(meta), len(SIZES))
    assert len(recs) == len(SIZES)
    header = (f"<134>1 2024-05-01T12:34:56.123456Z node-1 {meta.name} - stdout {expected_sd(meta)} ").encode()
    budget = limit - len(header)
    truncated = 0
    for rec, msg in zip(recs, messages, strict=True):
        raw = msg.encode()
        if len(raw) <= budget:
            assert rec["msg"] == msg
        else:
            truncated += 1
            expect = raw[:budget].decode("utf-8", "ignore")  # what is left when no character is split
            assert rec["msg"] == expect
            assert budget - 1 <= len(expect.encode()) <= budget  # 2-byte characters: at most 1 byte short
        assert rec["sd"] == expected_sd(meta)  # header and SD are never cut
    assert truncated == cut
    assert sink.context.metrics.get("shipper_events_truncated_total", container=meta.name,
                                    where="syslog") == truncated


@pytest.mark.parametrize("kind", ["udp", "unix_dgram", "tcp"])
async def test_limit_boundary_to_the_byte(rsyslog: Rsyslog, kind: str) -> None:
    """Whole syslog messages of 479, 480 and 481 bytes against a 480-byte limit: only the last is cut."""
    meta = container()
    header = (f"<134>1 2024-05-01T12:34:56.123456Z node-1 {meta.name} - stdout {expected_sd(meta)} ").encode()
    messages = ["y" * (total - len(header)) for total in (479, 480, 481)]
    sink = make_sink(rsyslog.address(kind), max_message_bytes=480)
    ts = "2024-05-01T12:34:56.123456Z"
    await sink.send(sink.encode([Batch(meta, [Event(ts, m, seq=i) for i, m in enumerate(messages)])]))
    await sink.close()
    recs = await rsyslog.wait_records(of(meta), 3)
    assert [len(header) + len(r["msg"]) for r in recs] == [479, 480, 480]
    assert sink.context.metrics.get("shipper_events_truncated_total") == 1


@pytest.mark.parametrize(("kind", "table"), [("udp", {}), ("tcp", {"framing": "lf"})])
async def test_rfc3164(rsyslog: Rsyslog, kind: str, table: dict[str, Any]) -> None:
    meta = container()
    events = [Event("2024-05-01T12:34:56.123Z", "first", "stdout"),
              Event("2024-12-09T01:02:03Z", "second\nline", "stderr", seq=1),
              Event("2024-05-01T12:34:56Z", "third", "stdout", {"severity": "notice"}, seq=2)]
    sink = make_sink(rsyslog.address(kind), format="rfc3164", procid="{container.id:8}", facility="user",
                     **table)
    await sink.send(sink.encode([Batch(meta, events)]))
    await sink.close()
    recs = await rsyslog.wait_records(of(meta), 3)
    assert [r["pri"] for r in recs] == ["14", "11", "13"]
    assert [r["ts"][5:19] for r in recs] == ["05-01T12:34:56", "12-09T01:02:03", "05-01T12:34:56"]  # no year
    assert {r["host"] for r in recs} == {"node-1"}
    assert {r["procid"] for r in recs} == {meta.id[:8]}
    assert {r["tag"] for r in recs} == {f"{meta.name}[{meta.id[:8]}]:"}
    second = "second#012line" if kind == "tcp" else "second\nline"
    # rsyslog keeps the space after "TAG:" in an RFC 3164 message
    assert [r["msg"] for r in recs] == [" first", " " + second, " third"]


async def test_failover_to_the_next_address(rsyslog: Rsyslog) -> None:
    dead = Rsyslog(inputs=("tcp",))  # configured but never started: its port refuses
    try:
        meta = container()
        sink = make_sink([dead.address("tcp"), rsyslog.address("tcp")])
        await sink.healthcheck()
        assert str(sink.address) == rsyslog.address("tcp")
        await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", f"m{i}", seq=i) for i in range(5)])]))
        await sink.close()
        recs = await rsyslog.wait_records(of(meta), 5)
        assert [r["msg"] for r in recs] == [f"m{i}" for i in range(5)]
        assert sink.context.metrics.get("shipper_sink_failovers_total") == 1
    finally:
        dead.close()


async def test_tls_checks_the_server_name(rsyslog: Rsyslog) -> None:
    meta = container()
    batch = Batch(meta, [Event("2024-05-01T00:00:00Z", "over tls")])
    wrong = make_sink(rsyslog.address("tls"), tls_server_name="not-the-server.example",
                      **tls_keys(rsyslog, False))
    with pytest.raises(RetryableSinkError, match="certificate verify failed"):
        await wrong.send(wrong.encode([batch]))
    no_ca = make_sink(rsyslog.address("tls"))  # system roots do not know the test CA
    with pytest.raises(RetryableSinkError, match="certificate verify failed"):
        await no_ca.send(no_ca.encode([batch]))
    unchecked = make_sink(rsyslog.address("tls"), tls_server_name="not-the-server.example",
                          tls_verify_hostname=False, tls_min_version="1.2", **tls_keys(rsyslog, False))
    await unchecked.send(unchecked.encode([batch]))
    await unchecked.close()
    assert [r["msg"] for r in await rsyslog.wait_records(of(meta), 1)] == ["over tls"]


async def test_a_refused_client_certificate_is_an_error_not_a_silent_loss(rsyslog: Rsyslog) -> None:
    """Under TLS 1.3 the server checks the client's certificate after the client's handshake is done: the
    sink must notice the refusal before it calls a batch delivered."""
    meta = container()
    batch = Batch(meta, [Event("2024-05-01T00:00:00Z", "needs a client certificate")])
    anonymous = make_sink(rsyslog.address("mtls"), **tls_keys(rsyslog, False))
    for _ in range(2):
        with pytest.raises(RetryableSinkError, match="client certificate"):
            await anonymous.send(anonymous.encode([batch]))
    await anonymous.close()
    await asyncio.sleep(0.3)
    assert rsyslog.records(of(meta)) == []


@pytest.mark.parametrize("kind", ["tcp", "tls"])
async def test_restart_loses_nothing(kind: str) -> None:
    """rsyslog stops while the runner sends and comes back: every event arrives once, none twice."""
    require_rsyslog()
    r = Rsyslog(inputs=(kind,))
    r.start()
    try:
        meta = container()
        table = with_tls(r, kind, {"retry_initial_secs": 0.1, "retry_max_secs": 0.5,
                                   "connect_timeout_secs": 2})
        sink = make_sink(r.address(kind), **table)
        metrics = sink.context.metrics
        buf = MemoryBuffer(lambda cp: None, metrics, max_events=100_000, max_bytes=1 << 26,
                           when_full=WhenFull.BLOCK)
        runner = SinkRunner("syslog", sink, buf.cursor("syslog"), metrics)
        task = asyncio.create_task(runner.run())
        seq = 0

        async def push(n: int) -> None:
            nonlocal seq
            await buf.push(Batch(meta, [Event("2024-05-01T00:00:00Z", f"n={seq + i}", seq=seq + i)
                                        for i in range(n)]))
            seq += n

        await push(20)
        assert len(await r.wait_records(of(meta), 20)) == 20

        r.stop()
        await asyncio.sleep(0.1)
        probe = make_sink(r.address(kind), **table)
        with pytest.raises(RetryableSinkError):
            await probe.send(probe.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", "probe")])]))
        for _ in range(6):  # keep logging while it is down
            await push(10)
            await asyncio.sleep(DOWN_SECS / 6)
        assert runner.state in ("retrying", "failing")
        assert "RetryableSinkError" in runner.last_error
        assert metrics.get("shipper_sink_retries_total") >= 1
        assert buf.cursor("syslog").pending() > 0

        r.start()
        await push(10)
        recs = await r.wait_records(of(meta), seq, timeout=20, settle=0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        got = sorted(int(rec["msg"].removeprefix("n=")) for rec in recs)
        assert got == list(range(seq)), f"missing {set(range(seq)) - set(got)}, extra {len(got) - seq}"
        assert buf.cursor("syslog").pending() == 0
        assert runner.state == "up"
    finally:
        r.close()


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix_stream"])
async def test_a_receiver_gone_since_the_last_batch_fails_the_next_one(kind: str) -> None:
    """The receiver closes while the sink is idle and the event loop has not yet seen the FIN: the next
    send must fail (and be retried) instead of writing into a dead connection, where it would be lost."""
    require_rsyslog()
    r = Rsyslog(inputs=(kind,))
    r.start()
    try:
        meta = container()
        sink = make_sink(r.address(kind), **with_tls(r, kind, {"connect_timeout_secs": 2}))
        await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", "before")])]))
        assert len(await r.wait_records(of(meta), 1, settle=0)) == 1  # read by rsyslog, not just written
        r.stop()  # blocks the loop: the FIN waits unread in the socket
        with pytest.raises(RetryableSinkError):
            await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", "after")])]))
        r.start()
        await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", "after")])]))
        await sink.close()
        assert [rec["msg"] for rec in await r.wait_records(of(meta), 2)] == ["before", "after"]
    finally:
        r.close()
