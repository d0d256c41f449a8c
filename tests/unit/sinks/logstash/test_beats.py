"""The beats protocol against a Lumberjack test server on loopback: windows, partial and keep-alive ACKs,
timeouts, pipelining, several hosts."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from shipper.errors import RetryableSinkError
from shipper.sinks.base import Partial
from tests.conftest import require
from tests.integration.lumberjack import LumberjackServer
from tests.tlsutil import have_openssl, make_certs
from tests.unit.sinks.logstash.conftest import MakeSink, batch, closed_port


def messages(server: LumberjackServer) -> list[str]:
    return [e["message"] for e in server.events]


@pytest.mark.parametrize("level", [0, 3])
async def test_a_request_is_sent_in_windows_and_acked(make_sink: MakeSink, level: int) -> None:
    server = await LumberjackServer().start()
    sink = make_sink(hosts=[server.address], compression_level=level, window_max_events=4)
    assert await sink.send(sink.encode([batch(10)])) is None
    assert messages(server) == [f"line {i}" for i in range(10)]
    assert [w.count for w in server.windows] == [4, 4, 2]
    assert all(w.compressed == bool(level) for w in server.windows)
    assert all(w.sequences == list(range(1, w.count + 1)) for w in server.windows)
    m = sink.context.metrics
    assert m.get("shipper_logstash_windows_total", sink="ls", host=server.address) == 3
    assert m.get("shipper_logstash_events_acked_total", sink="ls", host=server.address) == 10
    await server.stop()


@pytest.mark.parametrize("level", [0, 3])
async def test_a_request_framed_for_one_window_size_is_sent_whole_in_another(make_sink: MakeSink,
                                                                             level: int) -> None:
    """Frames are built in windows of the hosts' size when encoded; a host whose window shrank before the send
    (an error on another request) gets windows framed again, each numbered from 1."""
    server = await LumberjackServer().start()
    sink = make_sink(hosts=[server.address], compression_level=level, window_max_events=4, pipelining=0)
    request = sink.encode([batch(6), batch(4, start=6)])
    assert request.payload.size == 4
    sink.pool.hosts[0].window.size = 3
    assert await sink.send(request) is None
    assert messages(server) == [f"line {i}" for i in range(10)]
    assert [w.count for w in server.windows] == [3, 4, 3]  # acked in full, the window grows back to 4
    assert all(w.sequences == list(range(1, w.count + 1)) for w in server.windows)
    await server.stop()


async def test_the_window_grows_after_success_and_shrinks_after_an_error(make_sink: MakeSink) -> None:
    server = await LumberjackServer(plan=["ack", "ack", "drop"]).start()
    sink = make_sink(hosts=[server.address], slow_start=True, window_max_events=100, pipelining=0)
    await sink.send(sink.encode([batch(10 + 15)]))
    assert [w.count for w in server.windows] == [10, 15]
    host = sink.pool.hosts[0]
    assert host.window.size == 23
    with pytest.raises(RetryableSinkError):
        await sink.send(sink.encode([batch(30)]))
    assert host.window.size == 11
    await server.stop()


async def test_progressive_acks_release_the_window(make_sink: MakeSink) -> None:
    server = await LumberjackServer(plan=["ack_each"]).start()
    sink = make_sink(hosts=[server.address], compression_level=0)
    assert await sink.send(sink.encode([batch(5)])) is None
    assert server.acks_sent == [1, 2, 3, 4, 5]
    assert sink.context.metrics.get("shipper_logstash_partial_acks_total") == 4
    await server.stop()


@pytest.mark.parametrize("kind", ["keepalive", "repeat"])
async def test_keepalives_reset_the_timeout_and_resend_nothing(make_sink: MakeSink, kind: str) -> None:
    """Logstash busy for 1.5 s, three times the ACK timeout, saying so every 0.1 s."""
    server = await LumberjackServer(plan=[(kind, 1.5, 0.1)]).start()
    sink = make_sink(hosts=[server.address], timeout_secs=0.5)
    started = time.monotonic()
    assert await sink.send(sink.encode([batch(6)])) is None
    assert time.monotonic() - started >= 1.5
    assert server.connections == 1 and len(server.windows) == 1
    assert messages(server) == [f"line {i}" for i in range(6)]
    assert sink.context.metrics.get("shipper_logstash_keepalives_total") >= 10
    assert sink.context.metrics.get("shipper_logstash_host_failures_total") == 0
    await server.stop()


async def test_a_partial_ack_then_a_lost_connection_returns_the_rest(make_sink: MakeSink) -> None:
    server = await LumberjackServer(plan=[("partial_drop", 3)]).start()
    sink = make_sink(hosts=[server.address], window_max_events=8)
    request = sink.encode([batch(8)])
    outcome = await sink.send(request)
    assert isinstance(outcome, Partial)
    assert list(outcome.retry) == [3, 4, 5, 6, 7]
    rest = sink.subset(request, outcome.retry)
    assert await sink.send(rest) is None
    assert messages(server) == [f"line {i}" for i in range(8)] + [f"line {i}" for i in range(3, 8)]
    await server.stop()


async def test_a_stalled_host_times_out_and_another_takes_the_window(make_sink: MakeSink) -> None:
    stalled = await LumberjackServer(plan=["stall"]).start()
    good = await LumberjackServer().start()
    sink = make_sink(hosts=[stalled.address, good.address], timeout_secs=0.3)
    started = time.monotonic()
    assert await sink.send(sink.encode([batch(5)])) is None
    assert 0.3 <= time.monotonic() - started < 3
    assert messages(good) == [f"line {i}" for i in range(5)]
    m = sink.context.metrics
    assert m.get("shipper_logstash_host_failures_total", sink="ls", host=stalled.address, what="window") == 1
    assert m.get("shipper_logstash_host_up", sink="ls", host=stalled.address) == 0
    assert m.get("shipper_logstash_events_moved_total", sink="ls", host=stalled.address) == 5
    assert m.get("shipper_sink_failovers_total") == 1
    await stalled.stop()
    await good.stop()


async def test_loadbalance_spreads_windows_over_every_host(make_sink: MakeSink) -> None:
    servers = [await LumberjackServer().start() for _ in range(2)]
    sink = make_sink(hosts=[s.address for s in servers], loadbalance=True, window_max_events=10)
    assert await sink.send(sink.encode([batch(200)])) is None
    got = [messages(s) for s in servers]
    assert sorted(got[0] + got[1], key=lambda m: int(m.split()[1])) == [f"line {i}" for i in range(200)]
    assert all(len(g) >= 50 for g in got), [len(g) for g in got]
    for s in servers:
        await s.stop()


async def test_failover_keeps_to_one_host(make_sink: MakeSink) -> None:
    servers = [await LumberjackServer().start() for _ in range(2)]
    sink = make_sink(hosts=[s.address for s in servers], window_max_events=10)
    for k in range(3):
        await sink.send(sink.encode([batch(30, 30 * k)]))
    assert len(messages(servers[0])) == 90 and not messages(servers[1])
    await servers[0].stop()
    await sink.send(sink.encode([batch(30, 90)]))
    assert len(messages(servers[1])) == 30
    await sink.send(sink.encode([batch(30, 120)]))
    assert len(messages(servers[1])) == 60, "went back to the first host"
    await servers[1].stop()


async def test_a_dead_host_is_left_alone_until_its_backoff_passed(make_sink: MakeSink) -> None:
    good = await LumberjackServer().start()
    dead = closed_port()
    sink = make_sink(hosts=[f"127.0.0.1:{dead}", good.address], loadbalance=True, backoff_init_secs=60,
                     backoff_max_secs=60)
    for k in range(3):
        assert await sink.send(sink.encode([batch(20, 20 * k)])) is None
    m = sink.context.metrics
    assert m.get("shipper_logstash_host_failures_total", sink="ls", host=f"127.0.0.1:{dead}", what="connect") == 1
    assert len(messages(good)) == 60
    await good.stop()


async def test_no_host_is_a_retryable_error_naming_each(make_sink: MakeSink) -> None:
    a, b = closed_port(), closed_port()
    sink = make_sink(hosts=[f"127.0.0.1:{a}", f"127.0.0.1:{b}"], loadbalance=True)
    with pytest.raises(RetryableSinkError) as info:
        await sink.send(sink.encode([batch(3)]))
    assert str(a) in str(info.value) and str(b) in str(info.value)
    with pytest.raises(RetryableSinkError):
        await sink.healthcheck()


async def test_pipelining_puts_windows_on_the_wire_before_the_first_ack(make_sink: MakeSink) -> None:
    server = await LumberjackServer(plan=[("keepalive", 0.3, 0.1)]).start()
    sink = make_sink(hosts=[server.address], window_max_events=5, pipelining=3)
    task = asyncio.create_task(sink.send(sink.encode([batch(15)])))
    await asyncio.sleep(0.2)
    assert len(server.windows) == 3, "the second and third windows waited for the first ACK"
    assert await task is None
    assert messages(server) == [f"line {i}" for i in range(15)]
    await server.stop()


async def test_a_server_that_acks_past_the_window_is_dropped(make_sink: MakeSink) -> None:
    """A protocol error (an ACK for more events than the window holds) fails the connection, never
    counts events as delivered."""

    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"2A\x00\x00\x00\x09")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    srv = await asyncio.start_server(bad, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    sink = make_sink(hosts=[f"127.0.0.1:{port}"])
    with pytest.raises(RetryableSinkError, match="ACK 9 for a window of 2"):
        await sink.send(sink.encode([batch(2)]))
    srv.close()


async def test_tls_checks_the_chain_and_the_host_name(make_sink: MakeSink, tmp_path: Path) -> None:
    require("openssl", have_openssl())
    certs = make_certs(tmp_path / "certs")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    server = await LumberjackServer(tls=ctx).start()
    host = f"localhost:{server.port}"
    for keys in ({}, {"tls_server_name": "not-the-server.example"}):  # no CA: the system's roots; a wrong name
        bad = make_sink(hosts=[host], tls=True, tls_ca="" if not keys else str(certs.ca), **keys)
        with pytest.raises(RetryableSinkError, match="certificate verify failed"):
            await bad.send(bad.encode([batch(1)]))
    unchecked = make_sink(hosts=[host], tls=True, tls_ca=str(certs.ca), tls_server_name="not-the-server.example",
                          tls_verify_hostname=False)
    assert await unchecked.send(unchecked.encode([batch(2)])) is None
    assert messages(server) == ["line 0", "line 1"]
    await server.stop()


async def test_an_idle_connection_closed_by_logstash_is_replaced_without_a_failure(make_sink: MakeSink) -> None:
    server = await LumberjackServer().start()
    sink = make_sink(hosts=[server.address])
    assert await sink.send(sink.encode([batch(2)])) is None
    await server.drop_connections()  # client_inactivity_timeout
    await asyncio.sleep(0.1)
    assert await sink.send(sink.encode([batch(2, 2)])) is None
    assert messages(server) == [f"line {i}" for i in range(4)] and server.connections == 2
    assert sink.context.metrics.get("shipper_logstash_host_failures_total") == 0
    await server.stop()
