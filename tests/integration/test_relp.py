"""The syslog sink over RELP against a real rsyslogd's imrelp: plain, TLS (openssl and gnutls), and a receiver
killed with kill -9 in the middle of a burst, which must lose nothing.

Events are compared with what rsyslog parsed, field by field, as tests/integration/test_syslog.py does.
The harness's imrelp ruleset writes through a direct queue, so what rsyslog acknowledged is in the file
before the acknowledgement leaves: a kill -9 can only cost what was in flight, which the sink sends again.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull
from shipper.errors import RetryableSinkError
from shipper.event import Batch, Event
from shipper.sinks.runner import SinkRunner
from shipper.sinks.syslog.relp import DEFAULT_WINDOW
from tests.conftest import require
from tests.integration.rsyslog import RELP_INPUTS, Rsyslog, relp_available
from tests.integration.test_syslog import (
    EVENTS,
    assert_events_arrived,
    container,
    expected_sd,
    make_sink,
    of,
    require_rsyslog,
    tls_keys,
)

pytestmark = pytest.mark.rsyslog

BURST = 20_000  # events in flight when rsyslogd is killed
DOWN_SECS = 1.0  # how long it stays dead
KILL_AT_BYTES = 4 << 20  # of rsyslog's output file


def require_relp() -> None:
    require_rsyslog()
    require("imrelp", relp_available(), "apt-get install rsyslog-relp")


@pytest.fixture(scope="module")
def rsyslog() -> Iterator[Rsyslog]:
    require_relp()
    r = Rsyslog(inputs=RELP_INPUTS)
    r.start()
    yield r
    r.close()


def keys(r: Rsyslog, kind: str) -> dict[str, str]:
    return tls_keys(r, kind == "relp_mtls") if kind != "relp" else {}


@pytest.mark.parametrize("kind", RELP_INPUTS)
@pytest.mark.parametrize("framing", ["octet-counting", "lf"])
async def test_every_field_arrives_intact(rsyslog: Rsyslog, kind: str, framing: str) -> None:
    """RELP carries the message bare, whatever `framing` says: newlines and all arrive as they were."""
    meta = container()
    batch = Batch(meta, [Event(ts, msg, stream, fields, seq=i)
                         for i, (ts, _, msg, stream, fields, _) in enumerate(EVENTS)])
    sink = make_sink(rsyslog.address(kind), procid="{container.id:12}", framing=framing, **keys(rsyslog, kind))
    await sink.start()
    assert await sink.send(sink.encode([batch])) is None
    await sink.close()

    recs = await rsyslog.wait_records(of(meta), len(EVENTS))
    assert len(recs) == len(EVENTS), recs
    assert_events_arrived(recs, meta, kind)


async def test_rfc3164(rsyslog: Rsyslog) -> None:
    meta = container()
    events = [Event("2024-05-01T12:34:56.123Z", "first", "stdout"),
              Event("2024-12-09T01:02:03Z", "second\nline", "stderr", seq=1)]
    sink = make_sink(rsyslog.address("relp"), format="rfc3164", procid="{container.id:8}", facility="user")
    await sink.send(sink.encode([Batch(meta, events)]))
    await sink.close()
    recs = await rsyslog.wait_records(of(meta), 2)
    assert [r["pri"] for r in recs] == ["14", "11"]
    assert {r["tag"] for r in recs} == {f"{meta.name}[{meta.id[:8]}]:"}
    assert [r["msg"] for r in recs] == [" first", " second\nline"]


async def test_large_messages_arrive_whole_and_are_cut_at_the_limit(rsyslog: Rsyslog) -> None:
    meta = container()
    ts = "2024-05-01T12:34:56.123456Z"
    header = (f"<134>1 {ts} node-1 {meta.name} - stdout {expected_sd(meta)} ").encode()
    sizes = [65536 - len(header), 65536 - len(header) + 1, 200_000]  # 65536: relp's default limit
    sink = make_sink(rsyslog.address("relp_tls"), **keys(rsyslog, "relp_tls"))
    await sink.send(sink.encode([Batch(meta, [Event(ts, "z" * n, seq=i) for i, n in enumerate(sizes)])]))
    await sink.close()
    recs = await rsyslog.wait_records(of(meta), 3)
    assert [len(header) + len(r["msg"]) for r in recs] == [65536, 65536, 65536]
    assert sink.context.metrics.get("shipper_events_truncated_total") == 2


async def test_relp_tls_checks_the_receivers_certificate(rsyslog: Rsyslog) -> None:
    meta = container()
    batch = Batch(meta, [Event("2024-05-01T00:00:00Z", "over relp+tls")])
    address = rsyslog.address("relp_tls")
    wrong = make_sink(address, tls_server_name="not-the-server.example", **keys(rsyslog, "relp_tls"))
    with pytest.raises(RetryableSinkError, match="certificate verify failed"):
        await wrong.send(wrong.encode([batch]))
    no_ca = make_sink(address)  # the system's roots do not know the test CA
    with pytest.raises(RetryableSinkError, match="certificate verify failed"):
        await no_ca.send(no_ca.encode([batch]))
    unchecked = make_sink(address, tls_server_name="not-the-server.example", tls_verify_hostname=False,
                          **keys(rsyslog, "relp_tls"))
    await unchecked.send(unchecked.encode([batch]))
    await unchecked.close()
    assert [r["msg"] for r in await rsyslog.wait_records(of(meta), 1)] == ["over relp+tls"]


async def test_a_refused_client_certificate_is_an_error_not_a_loss(rsyslog: Rsyslog) -> None:
    """The session's `open` must be answered before anything counts as sent: a receiver that refuses the
    client's certificate (after a TLS 1.3 handshake the client thinks complete) fails the request."""
    meta = container()
    batch = Batch(meta, [Event("2024-05-01T00:00:00Z", "needs a client certificate")])
    anonymous = make_sink(rsyslog.address("relp_mtls"), **tls_keys(rsyslog, False))
    for _ in range(2):
        with pytest.raises(RetryableSinkError, match=r"relp\+tls://.*certificate"):
            await anonymous.send(anonymous.encode([batch]))
    await anonymous.close()
    await asyncio.sleep(0.3)
    assert rsyslog.records(of(meta)) == []


async def test_client_certificates_with_librelps_gnutls() -> None:
    """librelp's other TLS library (its default): it asks every client for a certificate."""
    require_relp()
    r = Rsyslog(inputs=("relp_mtls",), relp_tls_lib="gnutls")
    r.start()
    try:
        meta = container()
        sink = make_sink(r.address("relp_mtls"), **tls_keys(r, True))
        await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", f"g{i}", seq=i)
                                                  for i in range(100)])]))
        await sink.close()
        assert [rec["msg"] for rec in await r.wait_records(of(meta), 100)] == [f"g{i}" for i in range(100)]
    finally:
        r.close()


async def test_a_graceful_restart_while_idle_loses_and_repeats_nothing() -> None:
    """rsyslog stopped (it sends serverclose) and started while the sink is idle: the next request goes to
    the new rsyslog, and what the old one acknowledged is not sent again."""
    require_relp()
    r = Rsyslog(inputs=("relp",))
    r.start()
    try:
        meta = container()
        sink = make_sink(r.address("relp"), connect_timeout_secs=2)
        await sink.send(sink.encode([Batch(meta, [Event("2024-05-01T00:00:00Z", "before")])]))
        r.stop()
        r.start()
        after = Batch(meta, [Event("2024-05-01T00:00:00Z", "after")])
        for attempt in range(2):  # the old session's end may only be seen at the first send
            try:
                await sink.send(sink.encode([after]))
                break
            except RetryableSinkError:
                assert attempt == 0
        await sink.close()
        assert [rec["msg"] for rec in await r.wait_records(of(meta), 2)] == ["before", "after"]
    finally:
        r.close()


def burst_numbers(r: Rsyslog, app: str) -> list[int]:
    """The n= of every record of `app` in rsyslog's file. A kill -9 in the middle of a write can leave half a
    line, which the restarted rsyslog completes with its first record: that record is read from the end."""
    try:
        raw = r.out.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.split(b"\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            rec = json.loads(line[line.rindex(b'{"pri"'):])
        if rec["app"] == app:
            out.append(int(rec["msg"].split(" ", 1)[0].removeprefix("n=")))
    return out


class Killer(threading.Thread):
    """Kills rsyslogd (kill -9) as soon as its output file has grown past `size` bytes, then counts the
    records written by then."""

    def __init__(self, r: Rsyslog, size: int) -> None:
        super().__init__(daemon=True)
        self.r, self.size = r, size
        self.written = -1  # records in the file when it was killed
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                size = os.stat(self.r.out).st_size
            except FileNotFoundError:
                size = 0
            if size >= self.size:
                self.r.kill()
                self.written = self.r.out.read_bytes().count(b"\n")
                return
            time.sleep(0.0005)


@pytest.mark.parametrize(("kind", "window"), [("relp", DEFAULT_WINDOW), ("relp_tls", DEFAULT_WINDOW),
                                              ("relp", 16)])
async def test_kill_9_in_the_middle_of_a_burst_loses_nothing(kind: str, window: int) -> None:
    """20,000 events go out through the runner; rsyslogd is killed with kill -9 while they are in flight and
    started again a second later. Every event arrives, and no more of them twice than one window."""
    require_relp()
    r = Rsyslog(inputs=(kind,))
    r.start()
    try:
        meta = container()
        table: dict[str, Any] = {"retry_initial_secs": 0.05, "retry_max_secs": 0.2, "connect_timeout_secs": 2,
                                 "relp_window": window, **keys(r, kind)}
        sink = make_sink(r.address(kind), **table)
        metrics = sink.context.metrics
        buf = MemoryBuffer(lambda cp: None, metrics, max_events=100_000, max_bytes=1 << 27,
                           when_full=WhenFull.BLOCK)
        runner = SinkRunner("syslog", sink, buf.cursor("syslog"), metrics)
        pad = "p" * 200
        await buf.push(Batch(meta, [Event("2024-05-01T00:00:00Z", f"n={i} {pad}", seq=i) for i in range(BURST)]))

        killer = Killer(r, KILL_AT_BYTES)  # a record is some 700 bytes: about a quarter of the burst
        killer.start()
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 30
        while killer.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        killer.stop.set()
        assert 0 < killer.written < BURST, f"not killed in the middle of the burst ({killer.written} written)"
        await asyncio.sleep(DOWN_SECS)
        assert buf.cursor("syslog").pending() > 0
        r.start()

        deadline = time.monotonic() + 60
        while len(set(got := burst_numbers(r, meta.name))) < BURST and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything sent twice shows too
        got = burst_numbers(r, meta.name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        missing = set(range(BURST)) - set(got)
        duplicates = len(got) - len(set(got))
        print(f"\n{kind} window={window}: {BURST} events, killed with {killer.written} written, "
              f"{len(got)} received, {len(missing)} missing, {duplicates} duplicates, "
              f"retries={metrics.get('shipper_sink_retries_total')}")
        assert not missing, f"lost {len(missing)}: {sorted(missing)[:20]}"
        assert duplicates <= window
        assert buf.cursor("syslog").pending() == 0
        assert metrics.get("shipper_sink_retries_total") >= 1
    finally:
        r.close()
