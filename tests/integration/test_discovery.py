"""Discovery and the Engine API client against the real dockerd.

The daemon is shared with other tests, so every wait matches this test's own containers and skips the rest.
Docker SDK calls block, so they run in threads: the event loop must keep consuming events meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from shipper.config import Config, DockerConfig, HostConfig
from shipper.docker.client import DockerClient
from shipper.docker.discovery import ApiDiscovery, Change, FileDiscovery
from shipper.errors import ContainerGone, DockerUnavailable
from shipper.telemetry.metrics import Metrics
from tests.conftest import TEST_IMAGE, require
from tests.tlsutil import have_openssl, make_certs
from tests.unit.docker.helpers import Collector

pytestmark = pytest.mark.docker
DOCKER_SOCK = "/var/run/docker.sock"
DATA_ROOT = "/var/lib/docker"
OWN_LABEL = "shipper.test.discovery"


def config(host: str = f"unix://{DOCKER_SOCK}", **docker: Any) -> Config:
    docker.setdefault("reconnect_max_secs", 0.5)
    docker.setdefault("scan_interval_secs", 0.1)
    return Config(docker=DockerConfig(host=host, data_root=DATA_ROOT, **docker),
                  host=HostConfig(name="it-host"))


def name_is(name: str, *kinds: str) -> Callable[[Change], bool]:
    return lambda ch: ch.info is not None and ch.info.meta.name == name and (not kinds or ch.kind in kinds)


def id_is(cid: str, *kinds: str) -> Callable[[Change], bool]:
    return lambda ch: ch.id == cid and (not kinds or ch.kind in kinds)


def unique(prefix: str) -> str:
    return f"shipper-test-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def docker_api(docker_client) -> AsyncIterator[DockerClient]:
    client = DockerClient.from_config(DockerConfig(host=f"unix://{DOCKER_SOCK}"))
    yield client
    await client.close()


@pytest.fixture
async def start(docker_client) -> AsyncIterator[Callable[..., Any]]:
    """conftest's run_container, off the event loop, under a label of this module's own: a pytest session
    ending elsewhere on the shared daemon sweeps every `shipper.test` container, and would pull these out
    from under a running test. Removed here at teardown."""
    started: list[Any] = []

    async def run(command: str, **kwargs: Any) -> Any:
        labels = {OWN_LABEL: "1", **kwargs.pop("labels", {})}
        kwargs.setdefault("name", unique("c"))
        c = await asyncio.to_thread(docker_client.containers.run, TEST_IMAGE, command, detach=True,
                                    labels=labels, **kwargs)
        started.append(c)
        return c

    yield run
    for c in started:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(c.remove, force=True)


@pytest.fixture
def start_rm(docker_client) -> Callable[..., Any]:
    """Create and start an auto-removed container; returns its id. Not `containers.run`: it reads the
    container back after starting it, which fails for one that is already gone."""
    api = docker_client.api

    def create_and_start(command: str, name: str, labels: dict[str, str]) -> str:
        c = api.create_container(TEST_IMAGE, command, name=name, labels={OWN_LABEL: "1", **labels},
                                 host_config=api.create_host_config(auto_remove=True))
        api.start(c["Id"])
        return str(c["Id"])

    async def run(command: str, name: str, labels: dict[str, str] | None = None) -> str:
        return await asyncio.to_thread(create_and_start, command, name, labels or {})

    return run


@pytest.fixture
async def discoveries() -> AsyncIterator[Callable[[Config, Metrics | None], ApiDiscovery]]:
    """ApiDiscovery instances with their own client, closed at teardown."""
    made: list[ApiDiscovery] = []

    def make(cfg: Config, metrics: Metrics | None = None) -> ApiDiscovery:
        d = ApiDiscovery(DockerClient.from_config(cfg.docker), cfg, metrics or Metrics(), own_client=True)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.close()


class SocketProxy:
    """Forwards connections to the real dockerd socket; `stop()` drops them all and stops listening.

    A fake transport, not a fake daemon: it stands for dockerd going away and coming back, which cannot be
    done to the shared real daemon without disturbing every other test. What answers is still the real one.
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.path = ""

    async def start_unix(self, path: str) -> None:
        self.path = path
        self._server = await asyncio.start_unix_server(self._handle, path)

    async def start_tcp(self, ssl_ctx: ssl.SSLContext) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_ctx)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._conns.clear()
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCK)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            w.close()


@pytest.fixture
async def proxy() -> AsyncIterator[SocketProxy]:
    p = SocketProxy()
    d = tempfile.mkdtemp(prefix="shp-", dir="/tmp")  # short: unix socket paths are limited to 108 bytes
    p.path = os.path.join(d, "docker.sock")
    yield p
    await p.stop()
    os.rmdir(d)


# --- ApiDiscovery -----------------------------------------------------------------------------------------


async def test_containers_from_before_and_after_the_start_are_seen(start, discoveries) -> None:
    before = unique("before")
    exited = unique("exited")
    after = unique("after")
    await start("sleep 60", name=before, labels={"role": "old"})
    done = await start("echo bye", name=exited)
    await asyncio.to_thread(done.wait, timeout=30)
    disc = discoveries(config())
    col = Collector(disc)
    try:
        ch = await col.until(name_is(before))
        assert ch.kind == "start" and ch.info is not None and ch.info.running
        assert ch.info.meta.labels == {OWN_LABEL: "1", "role": "old"} and ch.info.meta.host == "it-host"
        ch = await col.until(name_is(exited))
        assert ch.kind == "start" and ch.info is not None
        assert not ch.info.running  # stopped ones have logs too
        assert os.path.exists(ch.info.log_path)
        await asyncio.wait_for(disc.synced.wait(), 15)
        c = await start("sleep 60", name=after, labels={"role": "new"})
        ch = await col.until(name_is(after))
        assert ch.kind == "start" and ch.id == c.id and ch.info is not None
        assert ch.info.meta.image == TEST_IMAGE and ch.info.meta.labels["role"] == "new"
        assert ch.info.log_path == f"{DATA_ROOT}/containers/{c.id}/{c.id}-json.log"
        assert os.path.exists(ch.info.log_path)
    finally:
        await col.stop()


async def test_rename_yields_the_new_name(start, discoveries, docker_client) -> None:
    old, new = unique("old"), unique("new")
    disc = discoveries(config())
    col = Collector(disc)
    try:
        await asyncio.wait_for(disc.synced.wait(), 15)
        c = await start("sleep 60", name=old)
        await col.until(id_is(c.id, "start"))
        await asyncio.to_thread(docker_client.api.rename, c.id, new)
        ch = await col.until(id_is(c.id, "rename"))
        assert ch.info is not None and ch.info.meta.name == new
        assert disc.known[c.id].meta.name == new
        # the inspect after the start may report its details ("update") before or after the rename: before
        # it under the old name, after it never
        mine = [x for x in col.seen if x.id == c.id]
        at = next(i for i, x in enumerate(mine) if x is ch)
        assert mine[0].kind == "start", mine
        assert all(x.kind == "update" and x.info is not None and x.info.meta.name == old for x in mine[1:at]), mine
        assert all(x.kind == "update" and x.info is not None and x.info.meta.name == new for x in mine[at + 1:]), mine
    finally:
        await col.stop()


async def test_short_lived_auto_removed_container_is_read_before_it_is_gone(start_rm, discoveries) -> None:
    """A few ms of life with --rm: the start comes early enough to open its log, which holds all 5 lines."""
    name = unique("brief")
    opened: dict[str, BinaryIO] = {}

    def open_log(ch: Change) -> None:  # runs as the change arrives, like a reader would
        if ch.kind == "start" and ch.info is not None and ch.info.meta.name == name:
            opened[ch.id] = open(ch.info.log_path, "rb")  # noqa: SIM115 - closed below

    disc = discoveries(config())
    col = Collector(disc, on_change=open_log)
    try:
        await asyncio.wait_for(disc.synced.wait(), 15)
        await start_rm("sh -c 'seq 5'", name, {"app": "brief"})
        first = await col.until(name_is(name))
        assert first.kind == "start" and first.info is not None
        assert first.info.meta.image == TEST_IMAGE
        assert first.info.meta.labels == {OWN_LABEL: "1", "app": "brief"}
        gone = await col.until(id_is(first.id, "remove"))
        assert gone.info is not None and gone.info.meta.name == name
        assert [c.kind for c in col.seen if c.id == first.id][-2:] == ["stop", "remove"]
        assert not os.path.exists(first.info.log_path)
        lines = opened[first.id].read().decode().splitlines()
        assert [line.split('"log":"')[1].split("\\n")[0] for line in lines] == ["1", "2", "3", "4", "5"]
    finally:
        for f in opened.values():
            f.close()
        await col.stop()


async def test_unreachable_daemon_is_retried_and_resynced(start, start_rm, discoveries, docker_client,
                                                          proxy: SocketProxy) -> None:
    metrics = Metrics()
    cfg = config(host=f"unix://{proxy.path}")
    disc = discoveries(cfg, metrics)
    early = await start("sleep 60", name=unique("early"))
    col = Collector(disc)
    try:
        await asyncio.sleep(1.5)  # nothing listens yet: several attempts fail
        assert not col.task.done() and col.queue.empty() and not disc.synced.is_set()
        await proxy.start_unix(proxy.path)
        await col.until(id_is(early.id, "start"))
        await asyncio.wait_for(disc.synced.wait(), 15)
        assert metrics.get("shipper_docker_reconnects_total") == 1

        await proxy.stop()  # dockerd "goes away": the event stream breaks
        born = await start("sleep 60", name=unique("born"))
        await asyncio.to_thread(docker_client.api.remove_container, early.id, force=True)
        brief = await start_rm("true", unique("gap"))
        for _ in range(200):  # until --rm has removed it
            if not await asyncio.to_thread(docker_client.containers.list, all=True, filters={"id": brief}):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert not col.task.done()

        await proxy.start_unix(proxy.path)
        await col.until(id_is(early.id, "remove"))
        await col.until(id_is(born.id, "start"))
        # a container that lived only while disconnected: found through the replay from `since`
        await col.until(id_is(brief, "remove"), timeout=15)
        brief_kinds = [c.kind for c in col.seen if c.id == brief]
        assert brief_kinds[0] == "start" and brief_kinds[-1] == "remove"
        assert metrics.get("shipper_docker_reconnects_total") == 2
    finally:
        await col.stop()


# --- FileDiscovery ----------------------------------------------------------------------------------------


async def test_file_discovery_needs_no_socket(start, docker_client) -> None:
    require("the Docker data root", os.access(f"{DATA_ROOT}/containers", os.R_OK), "run as root")
    cfg = config(host="unix:///nonexistent/docker.sock")
    disc = FileDiscovery(cfg, Metrics())
    col = Collector(disc)
    name = unique("files")
    try:
        c = await start("sh -c 'echo up; sleep 60'", name=name, labels={"via": "files"})
        # a scan between create and start reports it stopped first (its logs are read all the same)
        ch = await col.until(lambda ch: id_is(c.id, "start")(ch) and ch.info is not None and ch.info.running)
        assert ch.info is not None
        assert (ch.info.meta.name, ch.info.meta.image) == (name, TEST_IMAGE)
        assert ch.info.meta.labels == {OWN_LABEL: "1", "via": "files"}
        assert os.path.exists(ch.info.log_path)
        await asyncio.to_thread(c.kill)
        assert (await col.until(id_is(c.id, "stop", "remove"))).kind == "stop"
        await asyncio.to_thread(c.remove)
        gone = await col.until(id_is(c.id, "remove"))
        assert gone.info is not None and gone.info.meta.name == name
        assert [x.kind for x in col.seen if x.id == c.id][-2:] == ["stop", "remove"]
    finally:
        await col.stop()


# --- the client -------------------------------------------------------------------------------------------


async def test_client_calls_against_the_daemon(docker_api: DockerClient, start) -> None:
    assert await docker_api.ping()
    with pytest.raises(ContainerGone, match="No such container"):
        await docker_api.inspect("shipper-no-such-container")
    assert docker_api.api_version == "1.41"  # what this Docker 20.10 speaks
    events = await docker_api.open_events(filters={"type": ["container"], "event": ["start", "die"]})
    c = await start("sh -c 'echo out; echo err >&2'", name=unique("client"))
    await asyncio.to_thread(c.wait, timeout=30)
    seen: list[str] = []
    async with asyncio.timeout(15):
        async for ev in events:
            if ev["Actor"]["ID"] == c.id:
                seen.append(ev["Action"])
                if ev["Action"] == "die":
                    break
    events.close()
    assert seen == ["start", "die"]
    d = await docker_api.inspect(c.id)
    assert d["Id"] == c.id and d["State"]["Running"] is False
    assert c.id in {x["Id"] for x in await docker_api.list_containers(all=True)}
    assert c.id not in {x["Id"] for x in await docker_api.list_containers(all=False)}
    raw = b"".join([chunk async for chunk in docker_api.logs(c.id, follow=False)])
    frames = []
    while raw:
        kind, size = struct.unpack(">BxxxL", raw[:8])
        frames.append((kind, raw[8:8 + size].split(b" ", 1)[1]))  # after the timestamp
        raw = raw[8 + size:]
    assert sorted(frames) == [(1, b"out\n"), (2, b"err\n")]
    with pytest.raises(ContainerGone):
        await docker_api.open_logs("shipper-no-such-container", follow=False)


async def test_client_over_tls(docker_client, tmp_path: Path) -> None:
    """The real daemon behind a TLS terminator that demands a client certificate (dockerd here listens on
    its unix socket only, and reconfiguring the shared daemon would disturb other tests)."""
    require("openssl", have_openssl())
    certs = make_certs(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    server_ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    tls = SocketProxy()
    port = await tls.start_tcp(server_ctx)
    try:
        good = DockerClient.from_config(DockerConfig(host=f"tcp://localhost:{port}", tls_ca=str(certs.ca),
                                                     tls_cert=str(certs.client_cert),
                                                     tls_key=str(certs.client_key)))
        assert good.endpoint.base_url == f"https://localhost:{port}"
        assert await good.ping()
        assert isinstance(await good.list_containers(), list)
        assert good.api_version == "1.41"
        await good.close()
        no_client_cert = DockerClient.from_config(DockerConfig(host=f"tcp://127.0.0.1:{port}",
                                                               tls_ca=str(certs.ca)))
        with pytest.raises(DockerUnavailable):
            await no_client_cert.list_containers()
        await no_client_cert.close()
        wrong_name = DockerClient.from_config(DockerConfig(
            host=f"tcp://127.0.0.2:{port}", tls_ca=str(certs.ca), tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key)))
        with pytest.raises(DockerUnavailable):  # the certificate does not name 127.0.0.2
            await wrong_name.ping()
        await wrong_name.close()
    finally:
        await tls.stop()
