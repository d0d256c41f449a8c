"""The http protocol against a real aiohttp.web server playing Logstash's http input: NDJSON bodies, basic
auth, headers, gzip, 429/5xx retried (Retry-After honoured), other 4xx refused for good with the body."""

from __future__ import annotations

import gzip
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from shipper.errors import FatalSinkError, RetryableSinkError
from shipper.sinks.base import Partial
from shipper.sinks.logstash.http import retry_after
from tests.unit.sinks.logstash.conftest import MakeSink, batch


@dataclass
class Input:
    """What arrived, and what to answer next (then 200)."""

    answers: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    bodies: list[list[dict[str, object]]] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"


@pytest.fixture
async def http_input() -> AsyncIterator[Input]:
    got = Input()

    async def handle(request: web.Request) -> web.Response:
        got.requests.append(request)
        got.times.append(time.monotonic())
        raw = await request.read()
        if raw[:2] == b"\x1f\x8b":  # aiohttp's server opens gzip bodies itself; in case it did not
            raw = gzip.decompress(raw)
        if got.answers:
            status, headers, text = got.answers.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        got.bodies.append([orjson.loads(line) for line in raw.splitlines()])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/in", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.port = runner.addresses[0][1]
    yield got
    await runner.cleanup()


async def test_a_request_is_one_ndjson_post(make_sink: MakeSink, http_input: Input) -> None:
    sink = make_sink(protocol="http", hosts=[http_input.url], headers={"X-Tenant": "shop"})
    assert await sink.send(sink.encode([batch(3)])) is None
    assert [[d["message"] for d in b] for b in http_input.bodies] == [["line 0", "line 1", "line 2"]]
    req = http_input.requests[0]
    assert req.method == "POST" and req.headers["Content-Type"] == "application/x-ndjson"
    assert req.headers["X-Tenant"] == "shop" and "Authorization" not in req.headers
    m = sink.context.metrics
    assert m.get("shipper_logstash_http_responses_total", sink="ls", host=f"127.0.0.1:{http_input.port}",
                 status="200") == 1


async def test_basic_auth_from_a_file_and_gzip(make_sink: MakeSink, http_input: Input, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    sink = make_sink(protocol="http", hosts=[http_input.url], user="shipper", password_file=str(pw), gzip=True)
    await sink.send(sink.encode([batch(2)]))
    req = http_input.requests[0]
    assert req.headers["Authorization"] == "Basic c2hpcHBlcjpodW50ZXIy"  # shipper:hunter2
    assert req.headers["Content-Encoding"] == "gzip"
    assert len(http_input.bodies[0]) == 2


async def test_503_is_retried_and_429_waits_for_retry_after(make_sink: MakeSink, http_input: Input,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(protocol="http", hosts=[http_input.url])
    request = sink.encode([batch(2)])
    http_input.answers = [(503, {}, "pipeline busy"), (429, {"Retry-After": "1"}, "slow down")]
    with pytest.raises(RetryableSinkError, match="HTTP 503"):
        await sink.send(request)
    with pytest.raises(RetryableSinkError, match="HTTP 429"):
        await sink.send(request)
    assert await sink.send(request) is None
    assert http_input.times[2] - http_input.times[1] >= 0.95, "Retry-After was not honoured"
    assert len(http_input.bodies) == 1
    assert "pipeline busy" in caplog.text


async def test_400_is_refused_for_good_with_the_body(make_sink: MakeSink, http_input: Input) -> None:
    sink = make_sink(protocol="http", hosts=[http_input.url], user="u", password="do-not-log-me")
    http_input.answers = [(400, {}, "unexpected character at line 1")]
    with pytest.raises(FatalSinkError, match="HTTP 400 'unexpected character at line 1'") as info:
        await sink.send(sink.encode([batch(1)]))
    assert "do-not-log-me" not in str(info.value)
    m = sink.context.metrics
    assert m.get("shipper_logstash_http_responses_total", sink="ls", host=f"127.0.0.1:{http_input.port}",
                 status="400") == 1


async def test_a_second_host_takes_what_the_first_refuses_for_now(make_sink: MakeSink, http_input: Input) -> None:
    sink = make_sink(protocol="http", hosts=["http://127.0.0.1:1/in", http_input.url])
    assert await sink.send(sink.encode([batch(2)])) is None
    assert len(http_input.bodies) == 1


def test_retry_after_forms() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


async def test_413_splits_the_request_and_refuses_only_an_event_too_large_alone(make_sink: MakeSink,
                                                                                 http_input: Input) -> None:
    sink = make_sink(protocol="http", hosts=[http_input.url])
    http_input.answers = [(413, {}, "too large"), (413, {}, "too large")]
    assert await sink.send(sink.encode([batch(4)])) is None
    assert [[d["message"] for d in b] for b in http_input.bodies] == [["line 0"], ["line 1"], ["line 2", "line 3"]]
    http_input.answers = [(413, {}, "too large"), (413, {}, "this one is")]
    outcome = await sink.send(sink.encode([batch(2, 10)]))
    assert isinstance(outcome, Partial) and list(outcome.rejected) == [0] and not outcome.retry
    assert "HTTP 413 'this one is'" in outcome.reason
    assert [d["message"] for d in http_input.bodies[-1]] == ["line 11"]


async def test_a_missing_password_file_fails_the_start_naming_the_key(make_sink: MakeSink, tmp_path: Path) -> None:
    sink = make_sink(protocol="http", hosts=["http://127.0.0.1:1/"], user="u", password_file=str(tmp_path / "nope"))
    with pytest.raises(RetryableSinkError, match="password_file"):
        await sink.start()
