"""Each host's own state, as /status and `shipper status` show it: up, down with its error, or not tried."""

from __future__ import annotations

import asyncio

from shipper.telemetry.top import render
from tests.unit.sinks.logstash.conftest import MakeSink, batch, closed_port


async def test_each_hosts_state_is_reported_after_a_failover(make_sink: MakeSink) -> None:
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            got.extend(data)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    live = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    dead, spare = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    sink = make_sink(protocol="json_lines", hosts=[dead, live, spare], loadbalance=False)
    before = sink.details()
    assert [h["state"] for h in before["hosts"]] == ["untried"] * 3  # type: ignore[index]

    assert await sink.send(sink.encode([batch(2)])) is None  # the first host refuses: failed over
    hosts = {h["host"]: h for h in sink.details()["hosts"]}  # type: ignore[union-attr]
    assert hosts[dead]["state"] == "down" and "ConnectionRefused" in hosts[dead]["last_error"]
    assert 0 < hosts[dead]["retry_in_secs"] <= 60
    assert hosts[live]["state"] == "up" and hosts[live]["last_error"] == ""
    assert hosts[spare]["state"] == "untried"
    assert sink.details()["active"] == live

    page = render({"sinks": {"ls": {"type": "logstash", "state": "up", "in_flight": 0, "pending_events": 0,
                                    "events_per_sec": 0, "last_success": "", "last_error": "",
                                    **sink.details()}}}, color=False)
    assert f"ls host {dead}: down" in page and f"ls host {live} (active): up" in page
    srv.close()
