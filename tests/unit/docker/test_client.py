"""The Engine API client without a daemon: addressing, TLS, version choice, stream parsing, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shipper.config import DockerConfig
from shipper.docker.client import (
    ClientCertRefused,
    DockerClient,
    build_ssl_context,
    cert_refused_alert,
    endpoint_from_config,
    format_since,
    negotiate_version,
    since_from_ns,
    split_json_lines,
)
from shipper.errors import ConfigError, ContainerGone, DockerError, DockerUnavailable
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.tlsutil import Certs, have_openssl, make_certs

Canned = tuple[DockerClient, Metrics, dict[str, int]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require("openssl", have_openssl())
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def _no_docker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "DOCKER_TLS"):
        monkeypatch.delenv(name, raising=False)


def test_unix_socket_address() -> None:
    ep = endpoint_from_config(DockerConfig(host="unix:///run/x/docker.sock"))
    assert ep.unix_path == "/run/x/docker.sock"
    assert ep.base_url == "http://docker"
    assert ep.ssl is None
    assert endpoint_from_config(DockerConfig()).unix_path == "/var/run/docker.sock"


def test_docker_host_env_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2375")
    ep = endpoint_from_config(DockerConfig())
    assert (ep.base_url, ep.unix_path, ep.ssl) == ("http://10.0.0.5:2375", "", None)


def test_tcp_plain_and_default_ports() -> None:
    assert endpoint_from_config(DockerConfig(host="tcp://dockerhost")).base_url == "http://dockerhost:2375"
    assert endpoint_from_config(DockerConfig(host="tcp://[::1]:4000")).base_url == "http://[::1]:4000"


def test_tls_context_built_from_cert_files(certs: Certs) -> None:
    cfg = DockerConfig(host="tcp://localhost", tls_ca=str(certs.ca), tls_cert=str(certs.client_cert),
                       tls_key=str(certs.client_key))
    ep = endpoint_from_config(cfg)
    assert ep.base_url == "https://localhost:2376"
    assert isinstance(ep.ssl, ssl.SSLContext)
    assert ep.ssl.verify_mode is ssl.CERT_REQUIRED and ep.ssl.check_hostname
    assert [c["subject"] for c in ep.ssl.get_ca_certs()] == [((("commonName", "shipper test CA"),),)]


def test_tls_from_docker_environment_variables(monkeypatch: pytest.MonkeyPatch, certs: Certs) -> None:
    d = Path(tempfile.mkdtemp())
    for src, name in ((certs.ca, "ca.pem"), (certs.client_cert, "cert.pem"), (certs.client_key, "key.pem")):
        (d / name).write_bytes(src.read_bytes())
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(d))
    ep = endpoint_from_config(DockerConfig(host="tcp://localhost:2376"))
    assert ep.base_url.startswith("https://") and ep.ssl is not None
    assert len(ep.ssl.get_ca_certs()) == 1


def copy_docker_files(certs: Certs, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for src, name in ((certs.ca, "ca.pem"), (certs.client_cert, "cert.pem"), (certs.client_key, "key.pem")):
        (d / name).write_bytes(src.read_bytes())
    return d


def test_tls_verify_without_cert_path_looks_in_home_docker_and_fails_closed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: Certs) -> None:
    """As the docker CLI: DOCKER_TLS_VERIFY with DOCKER_CERT_PATH unset means ~/.docker/{ca,cert,key}.pem,
    and a missing one stops there (`open ~/.docker/ca.pem: no such file`), never plain HTTP."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    cfg = DockerConfig(host="tcp://127.0.0.1:2376")
    assert cfg.resolved_tls() == tuple(f"{tmp_path}/.docker/{n}.pem" for n in ("ca", "cert", "key"))
    with pytest.raises(ConfigError) as e:
        endpoint_from_config(cfg)
    assert e.value.key == "DOCKER_TLS_VERIFY"
    assert f"open {tmp_path}/.docker/ca.pem: no such file" in e.value.message
    assert "DOCKER_CERT_PATH is unset" in e.value.message
    copy_docker_files(certs, tmp_path / ".docker")
    ep = endpoint_from_config(cfg)
    assert ep.base_url == "https://127.0.0.1:2376" and ep.ssl is not None
    assert ep.ssl.verify_mode is ssl.CERT_REQUIRED and ep.client_cert == f"{tmp_path}/.docker/cert.pem"
    (tmp_path / ".docker" / "key.pem").unlink()  # all three, as the CLI
    with pytest.raises(ConfigError, match=r"key\.pem: no such file"):
        endpoint_from_config(cfg)
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError) as e:
        endpoint_from_config(cfg)
    assert e.value.key == "DOCKER_CERT_PATH" and f"open {tmp_path}/elsewhere/ca.pem" in e.value.message


def test_tls_settings_that_cannot_be_honoured_are_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         certs: Certs) -> None:
    with pytest.raises(ConfigError) as e:  # the keys, over a unix socket: it would be plain
        endpoint_from_config(DockerConfig(host="unix:///var/run/docker.sock", tls_ca=str(certs.ca)))
    assert e.value.key == "docker.tls_ca" and "unix socket" in e.value.message
    with pytest.raises(ConfigError) as e:
        endpoint_from_config(DockerConfig(host="tcp://127.0.0.1:2376", tls_ca=str(tmp_path / "no-ca.pem")))
    assert e.value.key == "docker.tls_ca" and "no such file" in e.value.message
    with pytest.raises(ConfigError) as e:
        endpoint_from_config(DockerConfig(host="tcp://127.0.0.1:2376", tls_cert=str(tmp_path / "c.pem"),
                                          tls_key=str(certs.client_key)))
    assert e.value.key == "docker.tls_cert"
    with pytest.raises(ConfigError) as e:  # "don't check the daemon's certificate" of a connection with none
        endpoint_from_config(DockerConfig(host="tcp://127.0.0.1:2375", tls_verify=False))
    assert e.value.key == "docker.tls_verify"
    assert endpoint_from_config(DockerConfig(host="https://127.0.0.1", tls_verify=False)).ssl is not None
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(copy_docker_files(certs, tmp_path / "d")))
    with pytest.raises(ConfigError) as e:
        endpoint_from_config(DockerConfig(host="unix:///var/run/docker.sock"))
    assert e.value.key == "DOCKER_TLS_VERIFY"


def test_docker_tls_is_tls_without_checking_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       certs: Certs) -> None:
    """The docker CLI's DOCKER_TLS (--tls): encrypted, the daemon unchecked, a client certificate if any."""
    monkeypatch.setenv("DOCKER_TLS", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "none"))
    ep = endpoint_from_config(DockerConfig(host="tcp://127.0.0.1"))
    assert ep.base_url == "https://127.0.0.1:2376" and ep.ssl is not None
    assert ep.ssl.verify_mode is ssl.CERT_NONE and ep.client_cert == ""
    monkeypatch.setenv("DOCKER_CERT_PATH", str(copy_docker_files(certs, tmp_path / "d")))
    assert endpoint_from_config(DockerConfig(host="tcp://127.0.0.1")).client_cert == f"{tmp_path}/d/cert.pem"


def test_alerts_refusing_our_certificate_are_recognised_through_aiohttp() -> None:
    """What dockerd (Go) answers a client certificate it does not accept, as aiohttp raises it; a daemon
    certificate that *we* refuse is not among them."""
    for text in ("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)",
                 "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)",
                 "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)"):
        wrapped = aiohttp.ClientOSError(1, text)
        wrapped.__cause__ = ssl.SSLError(1, text)
        assert cert_refused_alert(wrapped), text
    assert not cert_refused_alert(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] x"))
    assert not cert_refused_alert(aiohttp.ClientOSError(104, "Connection reset by peer"))
    assert issubclass(ClientCertRefused, DockerUnavailable)  # still retried


def test_tls_verify_off_disables_checks(certs: Certs) -> None:
    ctx = build_ssl_context(str(certs.ca), "", "", verify=False)
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname


def test_bad_tls_files_name_the_key(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(ConfigError) as e:
        build_ssl_context(str(tmp_path / "missing-ca.pem"), "", "", verify=True)
    assert e.value.key == "docker.tls_ca"
    with pytest.raises(ConfigError) as e:
        wrong_key = str(certs.server_key)
        build_ssl_context(str(certs.ca), str(certs.client_cert), wrong_key, verify=True)
    assert e.value.key == "docker.tls_cert"


def test_version_negotiation() -> None:
    assert negotiate_version("1.41", "1.12") == "1.41"
    assert negotiate_version("1.51", "1.24") == "1.47"  # newer daemon: ours
    assert negotiate_version("1.52", "1.49") == "1.49"  # a daemon that no longer speaks ours
    with pytest.raises(DockerError, match="too old"):
        negotiate_version("1.23")
    with pytest.raises(DockerError):
        negotiate_version("v-unknown")


def test_since_formats() -> None:
    assert since_from_ns(1795730082051774009) == "1795730082.051774009"
    assert since_from_ns(5) == "0.000000005"
    assert format_since(None) is None
    assert format_since(12) == "12"
    assert format_since(1.5) == "1.500000000"
    assert format_since("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"


def test_json_lines_split_across_chunks() -> None:
    lines, rest = split_json_lines(b"", b'{"a":1}\n{"b"')
    assert (lines, rest) == ([b'{"a":1}'], b'{"b"')
    lines, rest = split_json_lines(rest, b":2")
    assert (lines, rest) == ([], b'{"b":2')
    lines, rest = split_json_lines(rest, b'}\n\n{"c":3}\n')
    assert (lines, rest) == ([b'{"b":2}', b'{"c":3}'], b"")


async def test_unreachable_socket_is_docker_unavailable(tmp_path: Path) -> None:
    async with DockerClient.from_config(DockerConfig(host=f"unix://{tmp_path}/none.sock")) as c:
        with pytest.raises(DockerUnavailable, match="unreachable"):
            await c.ping()
        with pytest.raises(DockerUnavailable):
            await c.list_containers()
        with pytest.raises(DockerUnavailable):
            async for _ in c.events():
                pass


# --- against a canned HTTP server ---------------------------------------------------------------------------


@pytest.fixture
async def canned(tmp_path: Path) -> AsyncIterator[Canned]:
    """A stand-in daemon on a unix socket. A fake because dockerd never sends a malformed event, a 500, or
    an event stream cut in the middle of a line, and those are the paths under test here."""
    hits: dict[str, int] = {"version": 0}

    async def version(_: web.Request) -> web.Response:
        hits["version"] += 1
        return web.json_response({"ApiVersion": "1.43", "MinAPIVersion": "1.12"})

    async def events(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        for part in (b'{"Action":"start","id":"a1","timeNano":1}\n{"Action":', b'"die","id":"a1"}\n',
                     b"not json\n", b"[1]\n", b'{"Action":"destroy","id":"a1"}\n'):
            await resp.write(part)
        if req.query.get("until") == "cut":
            req.transport.close()  # type: ignore[union-attr]
            return resp
        await resp.write_eof()
        return resp

    async def inspect(req: web.Request) -> web.Response:
        if req.match_info["id"] == "gone":
            return web.json_response({"message": "No such container: gone"}, status=404)
        return web.json_response({"message": "driver failed: disk full"}, status=500)

    async def logs(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        if req.match_info["id"] == "endless":  # a quiet running container: a frame now and then
            with contextlib.suppress(ConnectionError):  # until the client goes away
                for _ in range(400):
                    await resp.write(b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n")
                    await asyncio.sleep(0.05)
            return resp
        await resp.write(b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n" * 1000)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.43/events", events)
    app.router.add_get("/v1.43/containers/{id}/json", inspect)
    app.router.add_get("/v1.43/containers/{id}/logs", logs)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = tmp_path / "d.sock"
    site = web.UnixSite(runner, str(sock))
    await site.start()
    metrics = Metrics()
    client = DockerClient.from_config(DockerConfig(host=f"unix://{sock}"), metrics)
    yield client, metrics, hits
    await client.close()
    await runner.cleanup()


async def test_events_parsed_across_chunks_and_bad_lines_counted(canned: Canned,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client, metrics, hits = canned
    got = [ev async for ev in client.events(filters={"type": "container"})]
    assert [e["Action"] for e in got] == ["start", "die", "destroy"]
    assert metrics.get("shipper_docker_events_invalid_total") == 2
    assert sum("unreadable Docker event" in r.message for r in caplog.records) == 1  # logged once
    assert client.api_version == "1.43" and hits["version"] == 1


async def test_cut_event_stream_is_unavailable(canned: Canned) -> None:
    client, _, _ = canned
    got = []
    with pytest.raises(DockerUnavailable):
        async for ev in client.events(since=1, until="cut"):  # the fake cuts the stream on this
            got.append(ev)
    assert [e["Action"] for e in got] == ["start", "die", "destroy"]


async def test_http_errors_carry_the_daemon_message(canned: Canned) -> None:
    client, _, _ = canned
    with pytest.raises(ContainerGone, match="No such container: gone"):
        await client.inspect("gone")
    with pytest.raises(DockerError, match="HTTP 500: driver failed: disk full") as e:
        await client.inspect("broken")
    assert not isinstance(e.value, ContainerGone | DockerUnavailable)


async def test_logs_are_raw_chunks(canned: Canned) -> None:
    client, _, _ = canned
    chunks = [c async for c in client.logs("x", follow=False, chunk_bytes=4096)]
    assert b"".join(chunks) == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n" * 1000
    assert max(len(c) for c in chunks) <= 4096


async def test_closing_the_client_ends_its_open_streams(canned: Canned) -> None:
    """Closing an aiohttp session does not wake a reader waiting on a streaming response: it would wait
    forever. The client ends its open streams itself, so an API reader reconnects (with the app's new
    client) instead of hanging on the old one."""
    client, _, _ = canned
    stream = await client.open_logs("endless", follow=True)
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in stream:
            got.append(chunk)

    reader = asyncio.create_task(read())
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    await client.close()
    with pytest.raises(DockerUnavailable, match="client was closed"):
        await asyncio.wait_for(reader, 5)


async def test_more_followed_streams_than_a_connection_pool_holds(canned: Canned) -> None:
    """Each followed log stream holds one connection for as long as its container runs: a pooled client
    (aiohttp keeps 100 by default) left the 101st container's stream, and every plain request after it,
    waiting for a connection until its connect timeout, over and over."""
    client, _, _ = canned
    streams = [await asyncio.wait_for(client.open_logs("endless", follow=True), 5) for _ in range(120)]
    try:
        assert (await asyncio.wait_for(client.version(), 5))["ApiVersion"] == "1.43"
    finally:
        for s in streams:
            s.close()
