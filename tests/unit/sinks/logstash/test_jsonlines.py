"""json_lines over TCP: one document a line, delivered once the receiver's TCP acknowledged it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from shipper.errors import RetryableSinkError
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
