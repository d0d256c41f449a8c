"""Faults of the Docker side hit for real, each against the real dockerd (and the real `shipper run`).

- containers created and started back to back through the Engine API: the `start` event can come before the
  inspect that `create` triggered has answered; no reader may be built on the guess the event allows;
- the Engine API over TLS with Docker's environment variables: it fails closed as the docker CLI does, and
  a daemon that refuses shipper's client certificate is said to do so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shipper.app import App
from shipper.config import Config, DockerConfig, HostConfig, load_dict
from shipper.docker.client import DockerClient
from shipper.docker.discovery import ApiDiscovery
from shipper.sources.api import ApiSource
from shipper.telemetry.metrics import Metrics
from tests.conftest import SESSION, SESSION_LABEL, TEST_IMAGE, TEST_LABEL, require
from tests.integration.harness import ROOT, Shipper, messages_of
from tests.tlsutil import Certs, have_openssl, make_certs
from tests.unit.docker.helpers import Collector

pytestmark = pytest.mark.docker

LINES = 30
DOCKER_SOCK = "/var/run/docker.sock"
INSPECT = re.compile(rb"GET /v[0-9.]+/containers/[^/ ]+/json[ ?]")


class Forwarder:
    """Forwards connections to the real dockerd's socket: from a unix socket or from TCP, optionally
    terminating TLS first (a blocking handshake, so a refused client certificate is answered with its TLS
    alert, as dockerd itself does), and optionally holding every inspect request (`GET /containers/ID/json`)
    back `inspect_delay` seconds, as a busy daemon answers on a loaded host: the `start` event then always
    comes before the inspect that `create` asked for. Not a fake daemon: every answer is the real one's.

    Threads, not asyncio: it serves `shipper run` children while the test's own code blocks."""

    def __init__(self, *, tcp: bool = False, tls: ssl.SSLContext | None = None, inspect_delay: float = 0.0) -> None:
        self.tls = tls
        self.inspect_delay = inspect_delay
        self.path = ""
        self.port = 0
        self.connections = 0
        self.handshakes_refused: list[str] = []
        self.first_bytes = b""  # what the first connection sent first (before any TLS: the raw bytes)
        self._dir = ""
        if tcp:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.port = self._listener.getsockname()[1]
        else:
            self._dir = tempfile.mkdtemp(prefix="shp-", dir="/tmp")  # short: unix socket paths are limited
            self.path = os.path.join(self._dir, "docker.sock")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(self.path)
            self._listener.listen(64)
        self._socks: list[socket.socket] = []

    def start(self) -> Forwarder:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        if self._dir:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.rmdir(self._dir)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._socks.append(client)
        if not self.first_bytes:
            with contextlib.suppress(OSError):
                client.settimeout(5)
                self.first_bytes = client.recv(4096, socket.MSG_PEEK) or b"(closed)"
                client.settimeout(None)
        if self.tls is not None:
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.handshakes_refused.append(str(e))
                client.close()
                return
            self._socks.append(client)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(DOCKER_SOCK)
        self._socks.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self.inspect_delay and INSPECT.match(data):  # requests are not pipelined
                    time.sleep(self.inspect_delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def slow_inspect() -> Iterator[Forwarder]:
    proxy = Forwarder(inspect_delay=0.5).start()
    yield proxy
    proxy.stop()


def tls_server_context(certs: Certs, max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
    """What `dockerd --tlsverify` does: its certificate, and client certificates signed by its CA only."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.maximum_version = max_version
    return ctx


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`shipper run` children import this checkout, whatever `pip install -e` points at on a shared machine."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


@pytest.fixture
def shipper_factory(tmp_path: Path, docker_client: Any):  # type: ignore[no-untyped-def]
    made: list[Shipper] = []

    def make(docker_toml: str = "") -> Shipper:
        s = Shipper(tmp_path, docker_toml=docker_toml)
        made.append(s)
        return s

    yield make
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            s.stop()


def _wait_live(shipper: Shipper, docker_client: Any, timeout: float = 60) -> None:
    """A container from before the start is found by the listing, which comes after the subscription to
    /events: once its line is shipped, every later container is seen through events."""
    api = docker_client.api
    c = api.create_container(TEST_IMAGE, "echo ready", name=f"shipper-test-ready-{uuid.uuid4().hex[:8]}",
                             labels={TEST_LABEL: "1", SESSION_LABEL: SESSION, **shipper.labels})
    api.start(c["Id"])
    api.wait(c["Id"], timeout=30)
    shipper.start()
    shipper.wait_for(lambda evs: any(e["message"] == "ready" for e in evs), timeout=timeout, what="the ready line")


def _create_and_start(docker_client: Any, shipper: Shipper, n: int, tag: str, *, tty: bool = False,
                      log_driver: str = "json-file") -> list[str]:
    """`n` containers, each created then started at once through the Engine API (as `docker run -d` does),
    from `n` threads so that the daemon is busy while their events come."""
    api = docker_client.api
    names = [f"shipper-test-{tag}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]

    def one(i: int) -> None:
        cmd = f"sh -c 'for k in $(seq 1 {LINES}); do echo {tag}{i}-n=$k; done'"
        c = api.create_container(TEST_IMAGE, cmd, name=names[i], tty=tty,
                                 labels={TEST_LABEL: "1", SESSION_LABEL: SESSION, **shipper.labels},
                                 host_config=api.create_host_config(log_config={"Type": log_driver}))
        api.start(c["Id"])

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    return names


def _every_line(shipper: Shipper, names: list[str], tag: str, timeout: float = 60) -> None:
    def complete(evs: list[dict[str, Any]]) -> bool:
        return all(len(messages_of(evs, name)) >= LINES for name in names)

    try:
        evs = shipper.wait_for(complete, timeout=timeout, what=f"{LINES} lines from each of {len(names)}")
    except AssertionError:
        evs = shipper.events()
        got = {name: len(messages_of(evs, name)) for name in names}
        raise AssertionError(f"lines per container: {got}\n{shipper.log_text()[-4000:]}") from None
    for i, name in enumerate(names):
        assert messages_of(evs, name) == [f"{tag}{i}-n={k}" for k in range(1, LINES + 1)], name


@pytest.mark.parametrize("via", ["direct", "slow_inspect"])
def test_back_to_back_local_driver_containers_are_all_read(shipper_factory, docker_client, request,  # type: ignore[no-untyped-def]
                                                           via: str) -> None:
    """read = "auto", `--log-driver local`: there is no json-file to read, ever; the reader must be built from
    the inspect (the API stream), not from the start event's json-file guess. `slow_inspect` makes the race
    certain; `direct` is the daemon as it is (lost 1 container in 5 before the fix, most runs)."""
    host = ""
    if via == "slow_inspect":
        host = f'host = "unix://{request.getfixturevalue("slow_inspect").path}"'
    shipper = shipper_factory(host)
    _wait_live(shipper, docker_client)
    names = _create_and_start(docker_client, shipper, 5, "local", log_driver="local")
    _every_line(shipper, names, "local")
    assert shipper.stop() == 0
    assert "waiting for inspect before reading container" in shipper.log_text() or via == "direct"


@pytest.mark.parametrize("via", ["direct", "slow_inspect"])
def test_back_to_back_tty_containers_are_all_read_over_the_api(shipper_factory, docker_client, request,  # type: ignore[no-untyped-def]
                                                               via: str) -> None:
    """read = "api", `--tty`: the stream is raw terminal output (dockerd 20.10 sends no Content-Type to say
    so); decoding it as multiplexed frames fails on the first timestamp (`not a log frame header`)."""
    host = ""
    if via == "slow_inspect":
        host = f'host = "unix://{request.getfixturevalue("slow_inspect").path}"\n'
    shipper = shipper_factory(host + 'read = "api"')
    _wait_live(shipper, docker_client)
    names = _create_and_start(docker_client, shipper, 5, "tty", tty=True)
    _every_line(shipper, names, "tty")
    assert shipper.stop() == 0
    assert "not a log frame header" not in shipper.log_text()


# --- fault 1: TLS fails closed, and a refused client certificate is said for what it is ----------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require("openssl", have_openssl())
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Another CA: its client certificate is one the daemon does not trust."""
    require("openssl", have_openssl())
    return make_certs(tmp_path_factory.mktemp("stranger"))


@pytest.fixture
def docker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean Docker environment for `shipper run` children, with a HOME of its own; returns that HOME."""
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "DOCKER_TLS"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_tls_verify_without_cert_path_fails_closed(tmp_path: Path, docker_env: Path, docker_client: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_TLS_VERIFY=1 and no DOCKER_CERT_PATH: the docker CLI looks in ~/.docker and refuses to go on
    without ca.pem (`open ~/.docker/ca.pem: no such file`). Shipper used to talk plain HTTP without a word;
    here a plain way to the real daemon is listening on that port, and nothing may reach it."""
    plain = Forwarder(tcp=True).start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{plain.port}")
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        shipper = Shipper(tmp_path).start()
        assert shipper.proc is not None
        try:
            rc: int | None = shipper.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        shipper.stop()
        log = shipper.log_text()
        assert rc not in (None, 0), (f"shipper kept running; the plain port got {plain.first_bytes[:80]!r}\n"
                                     f"{log[-2000:]}")
        assert plain.connections == 0, plain.first_bytes[:80]
        assert f"open {docker_env}/.docker/ca.pem: no such file" in log, log[-2000:]
        assert "DOCKER_TLS_VERIFY" in log and "DOCKER_CERT_PATH is unset" in log
    finally:
        plain.stop()


def test_tls_verify_takes_the_files_from_home_docker(tmp_path: Path, docker_env: Path, docker_client: Any,
                                                     certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same variables with the files where the docker CLI looks for them (~/.docker): shipper reaches the
    real daemon over TLS (a terminator that demands a client certificate signed by its CA) and ships."""
    tls = Forwarder(tcp=True, tls=tls_server_context(certs)).start()
    try:
        d = docker_env / ".docker"
        d.mkdir()
        for src, name in ((certs.ca, "ca.pem"), (certs.client_cert, "cert.pem"), (certs.client_key, "key.pem")):
            (d / name).write_bytes(src.read_bytes())
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{tls.port}")
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        shipper = Shipper(tmp_path)
        _wait_live(shipper, docker_client, timeout=30)
        assert shipper.stop() == 0
        assert tls.first_bytes[:1] == b"\x16", tls.first_bytes[:80]  # a TLS handshake record, not "GET /"
        assert tls.handshakes_refused == []
    finally:
        tls.stop()


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
async def test_refused_client_certificate_is_said_once_with_the_state(certs: Certs, stranger: Certs,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      tls_max: ssl.TLSVersion) -> None:
    """A daemon that does not trust shipper's client certificate answers the handshake with a TLS alert
    (unknown CA here; dockerd sends bad certificate / certificate required). Shipper never connected, so
    not "Docker API lost": it says the daemon refused its certificate, once, with the state in a metric."""
    tls = Forwarder(tcp=True, tls=tls_server_context(certs, tls_max)).start()
    cfg = Config(docker=DockerConfig(host=f"tcp://127.0.0.1:{tls.port}", tls_ca=str(certs.ca),
                                     tls_cert=str(stranger.client_cert), tls_key=str(stranger.client_key),
                                     reconnect_max_secs=0.2), host=HostConfig(name="it-host"))
    metrics = Metrics()
    disc = ApiDiscovery(DockerClient.from_config(cfg.docker, metrics), cfg, metrics, own_client=True)
    col = Collector(disc)
    try:
        for _ in range(300):
            if metrics.get("shipper_docker_client_cert_refused_total") >= 3:
                break
            await asyncio.sleep(0.05)
        messages = [r.getMessage() for r in caplog.records]
        said = [m for m in messages if "the Docker daemon refused shipper's client certificate" in m]
        assert len(said) == 1, messages[-10:]
        assert f"(docker.tls_cert={stranger.client_cert})" in said[0]
        assert metrics.get("shipper_docker_client_cert_refused_total") >= 3
        assert not [m for m in messages if "Docker API lost" in m]
        assert disc.state == "client_cert_refused" and metrics.get("shipper_docker_api_state") == 2
        assert not disc.synced.is_set() and not col.task.done()
        assert len(tls.handshakes_refused) >= 3
    finally:
        await col.stop()
        await disc.close()
        tls.stop()


# --- fault 3: one Docker client, owned by the app, replaced and closed when discovery restarts -------------


async def test_discovery_restart_replaces_the_client_and_api_readers_follow(
        docker_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery fails once, as a bug would (an exception out of its loop), and is restarted. The app makes a
    new client for it and closes the old one; the API reader reading meanwhile moves to the new client and
    loses nothing."""
    from shipper import app as app_module

    monkeypatch.setattr(app_module, "tune_gc", lambda: None)  # not in the test process
    made: list[DockerClient] = []
    init = DockerClient.__init__

    def recording_init(self: DockerClient, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(DockerClient, "__init__", recording_init)
    synced = ApiDiscovery._on_synced
    bugs = [RuntimeError("a bug in discovery (injected)")]

    def failing_once(self: ApiDiscovery, stream: Any) -> None:
        synced(self, stream)
        if bugs:
            raise bugs.pop()

    monkeypatch.setattr(ApiDiscovery, "_on_synced", failing_once)

    run, out = uuid.uuid4().hex[:12], tmp_path / "out.jsonl"
    n = 60
    api = docker_client.api
    c = await asyncio.to_thread(
        api.create_container, TEST_IMAGE,
        f"sh -c 'i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo n=$i; sleep 0.05; done; sleep 60'",
        name=f"shipper-test-restart-{run}",
        labels={TEST_LABEL: "1", SESSION_LABEL: SESSION, "shipper.test.run": run})
    await asyncio.to_thread(api.start, c["Id"])
    cfg = load_dict({"docker": {"host": f"unix://{DOCKER_SOCK}", "read": "api", "poll_interval_secs": 0.05,
                                "reconnect_max_secs": 0.5},
                     "state": {"dir": str(tmp_path / "state"), "flush_interval_secs": 0.2},
                     "select": {"include_labels": [f"shipper.test.run={run}"]},
                     "telemetry": {"stats_interval_secs": 0},
                     "sinks": {"out": {"type": "file", "path": str(out), "max_bytes": 0}}}, env={})
    app = App(cfg)
    task = asyncio.create_task(app.run())
    try:
        for _ in range(600):
            got = [json.loads(line)["message"] for line in out.read_text().splitlines()] if out.exists() else []
            if len(got) >= n or task.done():
                break
            await asyncio.sleep(0.05)
        assert got == [f"n={i}" for i in range(1, n + 1)]
        assert app.metrics.get("shipper_task_restarts_total", task="discovery") == 1
        assert len(made) == 2, made
        old, new = made
        assert old._session is None or old._session.closed, "the replaced client was left open"
        assert app.docker is new
        reader = app.readers[c["Id"]]
        assert isinstance(reader.source, ApiSource) and reader.source.client is new
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(api.remove_container, c["Id"], force=True)
    assert all(cl._session is None for cl in made)  # the app closed what it made
