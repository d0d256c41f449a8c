"""The admin server on a real loopback port: routes, the token (everything but /health), TLS pinned by
`shipper status`, and the config rules that keep it off the network by accident."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import shipper
from shipper.app import App
from shipper.config import load_dict
from shipper.errors import ConfigError
from shipper.telemetry import top
from shipper.telemetry.admin import AdminServer
from shipper.telemetry.config import AdminConfig
from tests.tlsutil import have_openssl, make_certs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_app(tmp_path: Path, **admin: object) -> App:
    cfg = load_dict({"state": {"dir": str(tmp_path / "state")}, "admin": admin,
                     "sinks": {"out": {"type": "null"}}})
    return App(cfg)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[App, str]]:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    address = f"127.0.0.1:{free_port()}"
    app = make_app(tmp_path, address=address, token_file=str(token))
    server = AdminServer(app.config.admin, app.ops, app.metrics, "testhost")
    await server.start()
    try:
        yield app, f"http://{address}"
    finally:
        await server.close()


async def get(url: str, token: str = "") -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_token_guards_everything_but_health(served: tuple[App, str]) -> None:
    _, base = served
    for path in ("/", "/metrics", "/status", "/ready"):
        assert (await get(base + path))[0] == 401, path
        assert (await get(base + path, "wrong"))[0] == 401, path
        assert (await get(base + path, "s3cret"))[0] in (200, 503), path
    status, body = await get(base + "/health")  # no token needed; the app never ran, so discovery is missing
    assert status == 503 and "discovery: not started" in body
    status, body = await get(base + "/?access_token=s3cret")
    assert status == 200 and "<svg" not in body.split("<script>")[0] and 'id="containers"' in body


async def test_metrics_parse_and_status_document(served: tuple[App, str]) -> None:
    app, base = served
    app.metrics.inc("shipper_events_read_total", 2_000_001, container="c1")
    status, text = await get(base + "/metrics", "s3cret")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("shipper_events_read_total", (("container", "c1"),))] == 2_000_001
    compiled = str(shipper.compiled()).lower()
    assert samples[("shipper_build_info", (("compiled", compiled), ("version", "0.1.0")))] == 1
    assert ("process_resident_memory_bytes", ()) in samples
    status, text = await get(base + "/status", "s3cret")
    assert status == 200 and "\"healthy\": false" in text and "\"buffer\"" in text


async def test_ready_is_503_before_start(served: tuple[App, str]) -> None:
    _, base = served
    status, body = await get(base + "/ready", "s3cret")
    assert status == 503 and "starting" in body


@pytest.mark.skipif(not have_openssl(), reason="openssl is needed to make a throwaway CA")
async def test_tls_and_status_command_pins_the_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    address = f"0.0.0.0:{free_port()}"  # every interface: allowed because it is TLS
    app = make_app(tmp_path, address=address, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key))
    server = AdminServer(app.config.admin, app.ops, app.metrics)
    await server.start()
    try:
        doc = await asyncio.to_thread(top.fetch, app.config.admin)
        assert doc["healthy"] is False and "discovery: not started" in doc["problems"]
        plain = AdminConfig(address=address.replace("0.0.0.0", "127.0.0.1"), allow_insecure=True)
        with pytest.raises(top.NotRunning):  # plain HTTP to a TLS port gets no answer it can read
            await asyncio.to_thread(top.fetch, plain)
        other = make_certs(tmp_path / "other")
        wrong = AdminConfig(address=address, tls_cert=str(other.server_cert), tls_key=str(other.server_key))
        with pytest.raises(top.NotRunning, match="CERTIFICATE_VERIFY_FAILED"):  # another certificate: refused
            await asyncio.to_thread(top.fetch, wrong)
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        async with aiohttp.ClientSession() as s, s.get(f"https://127.0.0.1:{address.rsplit(':')[1]}/health",
                                                       ssl=ctx) as r:
            assert r.status == 503
    finally:
        await server.close()


def test_not_running_is_said_and_exit_3(tmp_path: Path) -> None:
    cfg = AdminConfig(address=f"127.0.0.1:{free_port()}")
    out: list[str] = []

    class W:
        def write(self, s: str) -> None:
            out.append(s)

        def flush(self) -> None:
            pass

    assert top.run(cfg, False, 1.0, W(), color=False) == top.NOT_RUNNING
    assert "not running" in "".join(out)


@pytest.mark.parametrize(("admin", "key"), [
    ({"address": "0.0.0.0:9125"}, "admin.address"),
    ({"address": "10.1.2.3:9125"}, "admin.address"),
    ({"address": "9125"}, "admin.address"),
    ({"address": ":9125"}, "admin.address"),
    ({"address": "127.0.0.1:9125", "tls_cert": "/x"}, "admin.tls_key"),
    ({"address": "127.0.0.1:9125", "token_file": "/nonexistent/token"}, "admin.token_file"),
    ({"address": "127.0.0.1:9125", "token_env": "SHIPPER_TEST_NO_SUCH_VAR"}, "admin.token_env"),
])
def test_config_refuses_exposure_by_accident(admin: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict({"admin": admin})
    assert e.value.key == key


def test_config_allows_what_is_asked_for() -> None:
    assert load_dict({"admin": {"address": "0.0.0.0:9125", "allow_insecure": True}}).admin.allow_insecure
    assert load_dict({"admin": {"address": "[::1]:9125"}}).admin.address == "[::1]:9125"
    assert load_dict({"admin": {"address": ""}}).admin.address == ""


def test_empty_token_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        AdminConfig(token_file=str(tmp_path / "t")).token()


async def test_address_in_use_is_said_and_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import shipper.app

    monkeypatch.setattr(shipper.app, "ADMIN_RETRY_SECS", 0.1)
    port = free_port()
    app = make_app(tmp_path, address=f"127.0.0.1:{port}")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    async with asyncio.TaskGroup() as tg:
        app._tasks = tg
        retry = await app._start_admin()
        assert retry is not None and app.admin is None
        assert any("admin server cannot listen" in r.getMessage() for r in caplog.records)
        await asyncio.sleep(0.3)
        assert app.admin is None  # still in use
        holder.close()
        for _ in range(50):
            if app.admin is not None:
                break
            await asyncio.sleep(0.1)
        assert app.admin is not None
        assert (await get(f"http://127.0.0.1:{port}/health"))[0] == 503  # listening now
        await retry  # done once it listens
        await app.admin.close()


async def test_reload_needs_the_token_and_a_running_app(served: tuple[App, str]) -> None:
    _, base = served
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/-/reload") as r:
            assert r.status == 401
        async with s.post(base + "/-/reload", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 409 and not (await r.json())["reloaded"]  # not running: nothing to reload
        async with s.get(base + "/-/reload", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 405  # a change of state is a POST
