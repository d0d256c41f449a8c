"""The Logstash sink end to end: real containers on the real dockerd -> `shipper run` -> each protocol's peer.

No Logstash runs here, so each protocol meets the real thing nearest to it:
- beats: timbersnake (a Lumberjack v2 server from PyPI) for plain and compressed windows, and the Lumberjack
  test server (tests/integration/lumberjack.py) for what timbersnake cannot do: partial and keep-alive ACKs,
  a stalled Logstash, a connection dropped mid-window, TLS with and without client certificates. That test
  server is checked here against pylogbeat, an independent client, so it is not only tested against the sink.
- json_lines: rsyslogd's imptcp writing each line as it came (`%rawmsg%`).
- http: an aiohttp.web server, as Logstash's http input answers (200 "ok", 429, 503, 400).

Every test counts each container's numbered lines at the peer: all of them, duplicates only where a lost
connection explains them, and then with their first copy's `event.id`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import require
from tests.integration.delivery_support import Daemon, counting_loop, numbers, wait_until
from tests.integration.harness import env_workers
from tests.integration.lumberjack import LumberjackServer
from tests.integration.rsyslog import Rsyslog
from tests.integration.rsyslog import available as rsyslog_available
from tests.tlsutil import Certs, have_openssl, make_certs

pytestmark = pytest.mark.docker

RunContainer = Callable[..., Any]
Events = Callable[[], list[dict[str, Any]]]


def need(module: str) -> Any:
    """A test dependency from the `test` extra: skipped on a developer machine without it, failed under CI."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        require(module, False, "pip install -e '.[test]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon(tmp_path: Path, sink: str, **keys: Any) -> Daemon:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return Daemon(tmp_path, f'[sinks.ls]\ntype = "logstash"\nretry_initial_secs = 0.2\nretry_max_secs = 1.0\n'
                            f'{sink}\n{extra}')


def by_name(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        out[e["container"]["name"]].append(e)
    return out


def complete(events: Events, containers: list[Any], n: int) -> Callable[[], bool]:
    def check() -> bool:
        got = by_name(events())
        return all(set(numbers([e["message"] for e in got[c.name]])) >= set(range(n)) for c in containers)
    return check


def check_delivery(events: list[dict[str, Any]], containers: list[Any], n: int) -> int:
    """Every line of every container arrived; a line that came twice kept its event.id. Returns duplicates."""
    got = by_name(events)
    dups = 0
    for c in containers:
        evs = got[c.name]
        nums = numbers([e["message"] for e in evs])
        assert set(nums) == set(range(n)), f"{c.name}: missing {sorted(set(range(n)) - set(nums))[:20]}"
        first: dict[int, str] = {}
        for k, e in zip(nums, evs, strict=True):
            assert first.setdefault(k, e["event"]["id"]) == e["event"]["id"], f"{c.name} n={k}: a new event.id"
        dups += len(nums) - n
    return dups


def run_through(tmp_path: Path, run_container: RunContainer, events: Events, sink: str, n: int = 2000,
                containers: int = 2, timeout: float = 60, **keys: Any) -> tuple[Daemon, int]:
    d = daemon(tmp_path, sink, **keys)
    d.start()
    cs = [run_container(counting_loop(n, "payload"), labels=d.labels) for _ in range(containers)]
    wait_until(complete(events, cs, n), timeout, f"{n} lines of {containers} containers", alive=d)
    dups = check_delivery(events(), cs, n)
    assert d.stop() == 0
    return d, dups


# --- the test server, against an independent client ----------------------------------------------------


def test_the_lumberjack_test_server_speaks_what_pylogbeat_speaks() -> None:
    pylogbeat = need("pylogbeat")
    server = LumberjackServer().start_thread()
    try:
        with pylogbeat.PyLogBeatClient("127.0.0.1", server.port, timeout=5) as client:
            client.send([{"message": "one"}, {"message": "two"}])
            client.send([{"message": "three"}])
        assert [e["message"] for e in server.events] == ["one", "two", "three"]
        assert [w.count for w in server.windows] == [2, 1]
        assert all(w.compressed for w in server.windows)
        assert server.acks_sent == [2, 3]  # pylogbeat numbers on across windows; the ACK names the last
    finally:
        server.stop_thread()


# --- beats: real peers ---------------------------------------------------------------------------------


class Timbersnake:
    """timbersnake's Lumberjack server in a thread. It says what it received only in debug log lines, so
    those are what is read back. Its plain json-frame path calls `json.parse`, which does not exist; the
    test supplies it (json.loads) for as long as the server runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        server_module = need("timbersnake.server")
        monkeypatch.setattr(json, "parse", json.loads, raising=False)
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        logger = logging.getLogger("timbersnake")
        monkeypatch.setattr(logger, "propagate", False)
        self.level = logger.level
        logger.setLevel(logging.DEBUG)  # setLevel, not the attribute: it also clears the logger's cache
        outer = self

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                args: Any = record.args
                if record.msg == "recv JSON: %s":  # one dict argument: logging keeps it as record.args
                    outer.received.append(args if isinstance(args, dict) else args[0])

        self.handler = Keep()
        logger.addHandler(self.handler)
        self.server = server_module.Server("127.0.0.1", self.port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(self._listening, 10, "timbersnake listening")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(self.server.start_and_serve_forever())

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.thread.join(10)
        logger = logging.getLogger("timbersnake")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)


@pytest.mark.parametrize("level", [0, 3])
def test_containers_to_timbersnake(tmp_path: Path, run_container: RunContainer, monkeypatch: pytest.MonkeyPatch,
                                   level: int) -> None:
    """Plain windows (one ACK per json frame from timbersnake: each a partial ACK) and compressed ones."""
    ts = Timbersnake(monkeypatch)
    try:
        _, dups = run_through(tmp_path, run_container, lambda: list(ts.received), "",
                              hosts=[f"127.0.0.1:{ts.port}"], compression_level=level)
        assert dups == 0
        doc = ts.received[0]
        assert doc["@metadata"] == {"beat": "filebeat", "type": "_doc", "version": "8.15.0"}
        assert doc["ecs"]["version"] and doc["host"]["name"] and doc["agent"]["type"] == "shipper"
        assert doc["container"]["image"]["name"] == "shipper-test:busybox"
    finally:
        ts.close()


# --- beats: faults, against the test server -----------------------------------------------------------


@pytest.fixture
def lumberjack() -> Iterator[Callable[..., LumberjackServer]]:
    started: list[LumberjackServer] = []

    def start(**kw: Any) -> LumberjackServer:
        s = LumberjackServer(**kw).start_thread()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop_thread()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require("openssl", have_openssl())
    return make_certs(tmp_path_factory.mktemp("certs"))


def server_tls(certs: Certs, client_certs: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    if client_certs:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)
    return ctx


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_beats_over_tls(tmp_path: Path, run_container: RunContainer, lumberjack: Callable[..., LumberjackServer],
                        certs: Certs, mutual: bool) -> None:
    server = lumberjack(tls=server_tls(certs, mutual))
    keys: dict[str, Any] = {"tls": True, "tls_ca": str(certs.ca), "hosts": [f"localhost:{server.port}"]}
    if mutual:
        keys |= {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)}
    _, dups = run_through(tmp_path, run_container, lambda: server.events, "", n=500, **keys)
    assert dups == 0


def test_beats_tls_without_the_client_certificate_delivers_nothing_and_says_why(
        tmp_path: Path, run_container: RunContainer, lumberjack: Callable[..., LumberjackServer],
        certs: Certs) -> None:
    server = lumberjack(tls=server_tls(certs, True))
    d = daemon(tmp_path, "", tls=True, tls_ca=str(certs.ca), hosts=[f"localhost:{server.port}"])
    d.start()
    run_container(counting_loop(10), labels=d.labels)
    wait_until(lambda: "logstash host failed" in d.log_text(), 30, "the refusal logged", alive=d)
    time.sleep(1)
    assert server.events == []
    assert d.stop() == 0


def test_half_a_window_acked_then_the_connection_dropped(tmp_path: Path, run_container: RunContainer,
                                                          lumberjack: Callable[..., LumberjackServer]) -> None:
    """Logstash took a whole window, acknowledged half of it and died: the other half is sent again (the only
    duplicates: at most one window, each with its first copy's event.id), nothing is lost."""
    window = 200
    server = lumberjack(plan=["ack", ("partial_drop", window // 2)])
    d, dups = run_through(tmp_path, run_container, lambda: server.events, "", n=3000,
                          hosts=[server.address], window_max_events=window, pipelining=0)
    assert 0 < dups <= window, f"{dups} duplicates for one window of {window} half acknowledged"
    assert server.connections >= 2
    assert "logstash host failed" in d.log_text()


@pytest.mark.timeout(180)
def test_keepalives_for_45_seconds_cause_no_timeout_and_no_resend(
        tmp_path: Path, run_container: RunContainer, lumberjack: Callable[..., LumberjackServer]) -> None:
    """Logstash busy for 45 s with the first window, saying so every 5 s, with timeout_secs = 10."""
    server = lumberjack(plan=[("keepalive", 45, 5)])
    started = time.monotonic()
    d, dups = run_through(tmp_path, run_container, lambda: server.events, "", n=1000, timeout=120,
                          hosts=[server.address], timeout_secs=10)
    assert time.monotonic() - started >= 45
    # the health check's probe, then one connection (each worker's, with several)
    assert dups == 0 and server.connections <= 2 * env_workers()
    log = d.log_text()
    assert "keep-alive ACKs" in log and "logstash host failed" not in log


@pytest.mark.timeout(180)
def test_two_hosts_one_killed_mid_stream(tmp_path: Path, run_container: RunContainer,
                                         lumberjack: Callable[..., LumberjackServer]) -> None:
    a, b = lumberjack(), lumberjack()
    n = 20_000
    d = daemon(tmp_path, "", hosts=[a.address, b.address], loadbalance=True, window_max_events=256,
               batch_max_events=512)
    d.start()
    cs = [run_container(counting_loop(n, "payload", burst=2000, pause=0.3), labels=d.labels) for _ in range(2)]
    wait_until(lambda: len(a.events) >= 2000 and len(b.events) >= 2000, 60, "both hosts in use", alive=d)
    a.call(a.stop)
    at_kill = len(b.events)
    wait_until(complete(lambda: a.events + b.events, cs, n), 120, "every line after the kill", alive=d)
    dups = check_delivery(a.events + b.events, cs, n)
    assert len(b.events) > at_kill + 5000, "the surviving host did not take over"
    assert dups <= 2 * 256 * 2, f"{dups} duplicates: more than the windows in flight on the killed host"
    assert d.stop() == 0
    assert "logstash host failed" in d.log_text()


@pytest.mark.timeout(120)
def test_a_host_that_accepts_and_never_answers_times_out_and_the_other_takes_over(
        tmp_path: Path, run_container: RunContainer, lumberjack: Callable[..., LumberjackServer]) -> None:
    silent = lumberjack(plan=["stall"] * 10_000)
    good = lumberjack()
    d, dups = run_through(tmp_path, run_container, lambda: silent.events + good.events, "", n=2000, timeout=90,
                          hosts=[silent.address, good.address], loadbalance=True, timeout_secs=2,
                          backoff_init_secs=30, backoff_max_secs=60)
    assert len(good.events) >= 4000
    assert dups <= len(silent.events), "a duplicate the silent host never received"
    log = d.log_text()
    assert "what=window" in log and "no ACK for 2s" in log


# --- json_lines: rsyslog's imptcp as the receiver -------------------------------------------------------


class RawTcp(Rsyslog):
    """rsyslogd with one imptcp input writing every line exactly as it arrived (%rawmsg%): what Logstash's tcp
    input with the json_lines codec is given."""

    def __init__(self) -> None:
        super().__init__(inputs=("ptcp",))

    def _config(self) -> str:
        return (f'global(workDirectory="{self.dir}" maxMessageSize="256k")\n'
                'module(load="imptcp")\n'
                'template(name="raw" type="string" string="%rawmsg%\\n")\n'
                f'ruleset(name="raw") {{ action(type="omfile" file="{self.out}" template="raw") }}\n'
                f'input(type="imptcp" address="127.0.0.1" port="{self.ports["ptcp"]}" ruleset="raw")\n')


@pytest.mark.rsyslog
def test_json_lines_to_rsyslog_imptcp(tmp_path: Path, run_container: RunContainer) -> None:
    require("rsyslogd", rsyslog_available(), "apt-get install rsyslog")
    r = RawTcp()
    r.start()
    try:
        _, dups = run_through(tmp_path, run_container, r.records, 'protocol = "json_lines"',
                              hosts=[f"127.0.0.1:{r.ports['ptcp']}"])
        assert dups == 0
        doc = r.records()[0]
        assert doc["@metadata"]["beat"] == "filebeat" and doc["input"] == {"type": "container"}
    finally:
        r.close()


# --- http: an aiohttp.web server as Logstash's http input -----------------------------------------------


class HttpInput:
    """Answers each POST with the next planned (status, headers, body), then 200 "ok" (keeping the events)."""

    def __init__(self, plan: list[tuple[int, dict[str, str], str]]) -> None:
        self.plan = list(plan)
        self.events: list[dict[str, Any]] = []
        self.answers: list[tuple[float, int]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers, text = self.plan.pop(0) if self.plan else (200, {}, "ok")
        self.answers.append((time.monotonic(), status))
        if status == 200:
            self.events.extend(json.loads(line) for line in body.splitlines())
        return web.Response(status=status, headers=headers, text=text)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def http_input() -> Iterator[Callable[..., HttpInput]]:
    made: list[HttpInput] = []

    def make(plan: list[tuple[int, dict[str, str], str]]) -> HttpInput:
        h = HttpInput(plan)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_http_503_then_200_and_429_with_retry_after(tmp_path: Path, run_container: RunContainer,
                                                    http_input: Callable[..., HttpInput]) -> None:
    """One client's retries (one container: with several workers, one worker posts, so the plan's answers go
    to one client in order; the others only probe with HEAD)."""
    h = http_input([(503, {}, "busy"), (429, {"Retry-After": "2"}, "slow down")])
    _, dups = run_through(tmp_path, run_container, lambda: h.events, 'protocol = "http"', containers=1,
                          hosts=[f"http://127.0.0.1:{h.port}/"], gzip=True)
    assert dups == 0
    (_, s1), (t429, s2), (t_ok, s3) = h.answers[:3]
    assert (s1, s2, s3) == (503, 429, 200)
    assert t_ok - t429 >= 1.9, "Retry-After: 2 was not honoured"


def test_http_400_is_refused_counted_and_reported(tmp_path: Path, run_container: RunContainer,
                                                  http_input: Callable[..., HttpInput]) -> None:
    h = http_input([(400, {}, "could not parse the body: unexpected token")])
    d = daemon(tmp_path, 'protocol = "http"', hosts=[f"http://127.0.0.1:{h.port}/"], user="shipper",
               password="never-in-a-log")
    d.start()
    c = run_container("sh -c 'echo n=0 first; sleep 2; echo n=1 second'", labels=d.labels)
    wait_until(lambda: any(e["message"] == "n=1 second" for e in h.events), 30, "the second line", alive=d)
    assert d.stop() == 0
    log = d.log_text()
    assert "HTTP 400 'could not parse the body: unexpected token'" in log
    assert "sink refused events for good count=1" in log
    assert "never-in-a-log" not in log
    assert [e["message"] for e in h.events if e["container"]["name"] == c.name] == ["n=1 second"]
