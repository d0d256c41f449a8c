"""json_lines over TCP: one document a line, delivered once the receiver's TCP acknowledged it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import orjson
import pytest

from shipper.errors import RetryableSinkError
from tests.conftest import require
from tests.tlsutil import have_openssl, make_certs
from tests.unit.sinks.logstash.conftest import MakeSink, batch, closed_port


async def test_lines_arrive_one_document_each(make_sink: MakeSink) -> None:
    got = bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            got.extend(data)
            if got.count(b"\n") >= 7:
                done.set()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    sink = make_sink(protocol="json_lines", hosts=[f"127.0.0.1:{port}"])
    assert await sink.send(sink.encode([batch(3)])) is None
    assert await sink.send(sink.encode([batch(4, 3)])) is None
    await asyncio.wait_for(done.wait(), 5)
    docs = [orjson.loads(line) for line in bytes(got).splitlines()]
    assert [d["message"] for d in docs] == [f"line {i}" for i in range(7)]
    assert docs[0]["@metadata"]["beat"] == "filebeat"
    assert sink.context.metrics.get("shipper_logstash_events_acked_total") == 7
    srv.close()


async def test_nothing_listening_is_retryable(make_sink: MakeSink) -> None:
    sink = make_sink(protocol="json_lines", hosts=[f"127.0.0.1:{closed_port()}"])
    with pytest.raises(RetryableSinkError, match="ConnectionRefused"):
        await sink.send(sink.encode([batch(1)]))


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_lines_over_tls(make_sink: MakeSink, tmp_path: Path, mutual: bool) -> None:
    require("openssl", have_openssl())
    certs = make_certs(tmp_path / "certs")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                got.extend(data)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    port = srv.sockets[0].getsockname()[1]
    keys = {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)} if mutual else {}
    sink = make_sink(protocol="json_lines", hosts=[f"localhost:{port}"], tls=True, tls_ca=str(certs.ca), **keys)
    assert await sink.send(sink.encode([batch(3)])) is None
    for _ in range(100):
        if got.count(b"\n") == 3:
            break
        await asyncio.sleep(0.02)
    assert [orjson.loads(line)["message"] for line in bytes(got).splitlines()] == ["line 0", "line 1", "line 2"]
    if mutual:  # without the client certificate nothing counts as delivered
        anonymous = make_sink(protocol="json_lines", hosts=[f"localhost:{port}"], tls=True, tls_ca=str(certs.ca))
        with pytest.raises(RetryableSinkError):
            await anonymous.send(anonymous.encode([batch(1)]))
    srv.close()


async def test_a_stalled_logstash_is_waited_on_over_the_same_connection(make_sink: MakeSink) -> None:
    """A receiver that stops reading (about 8 MB: more than both kernels' buffers hold) for 1.5 s: the request
    times out, is retried, and waits on the connection it was written to; it is never written twice."""
    got = bytearray()
    connections = 0
    reading = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reading.wait()
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 20):
                got.extend(data)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 16)
    port = srv.sockets[0].getsockname()[1]
    sink = make_sink(protocol="json_lines", hosts=[f"127.0.0.1:{port}"], timeout_secs=0.3)
    b = batch(8000)
    for ev in b.events:
        ev.message += " " + "x" * 1000
    request = sink.encode([b])
    with pytest.raises(RetryableSinkError, match="waiting on the same connection"):
        await sink.send(request)
    asyncio.get_running_loop().call_later(1.0, reading.set)
    outcome = None
    for _ in range(20):
        try:
            outcome = await sink.send(request)
            break
        except RetryableSinkError:
            continue
    assert outcome is None
    for _ in range(100):
        if got.count(b"\n") >= 8000:
            break
        await asyncio.sleep(0.02)
    assert got.count(b"\n") == 8000 and connections == 1
    assert sink.context.metrics.get("shipper_sink_stalls_total") == 1
    srv.close()
