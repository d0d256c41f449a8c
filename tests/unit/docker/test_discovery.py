"""Discovery logic on canned inspect answers, events and config files (no daemon).

ApiDiscovery runs against an in-memory stand-in for DockerClient: it lets a test hold an inspect answer
back, cut the event stream or refuse connections at exact moments, which is the ordering under test. The
same behaviours are checked against the real dockerd in tests/integration/test_discovery.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from shipper.config import Config, DockerConfig, HostConfig, SelectConfig
from shipper.docker import discovery
from shipper.docker.client import DockerClient, since_from_ns
from shipper.docker.discovery import ApiDiscovery, Change, FileDiscovery
from shipper.errors import ContainerGone, DockerError, DockerUnavailable
from shipper.telemetry.metrics import Metrics
from tests.unit.docker.helpers import Collector

IMAGE = "app:1"


def cid(n: int) -> str:
    return f"{n:064x}"


def inspect_doc(n: int, name: str, *, running: bool = True, started: bool = True, tty: bool = False,
                env: list[str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    log_path = f"/var/lib/docker/containers/{cid(n)}/{cid(n)}-json.log"
    return {"Id": cid(n), "Name": "/" + name, "Created": "2026-11-26T21:00:00.000000000Z",
            "Image": "sha256:" + "f" * 64, "LogPath": log_path,
            "State": {"Running": running,
                      "StartedAt": "2026-11-26T21:00:01.000000000Z" if started else "0001-01-01T00:00:00Z"},
            "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}}},
            "Config": {"Image": IMAGE, "Tty": tty, "Env": env or [], "Labels": labels or {}}}


def event(action: str, n: int, name: str, ns: int = 0, **attrs: str) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "status": action, "id": cid(n), "from": IMAGE,
            "Actor": {"ID": cid(n), "Attributes": {"name": name, "image": IMAGE, **attrs}},
            "time": ns // 1_000_000_000, "timeNano": ns}


class FakeStream:
    def __init__(self, server_time: float) -> None:
        self.server_time: float | None = server_time
        self.queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        self.closed = False

    def push(self, *evs: dict[str, Any]) -> None:
        for ev in evs:
            self.queue.put_nowait(ev)

    def end(self, error: BaseException | None = None) -> None:
        self.queue.put_nowait(error)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.streams: list[FakeStream] = []
        self.since: list[str | None] = []
        self.refuse = 0  # connections to refuse before accepting
        self.list_errors = 0
        self.held: set[str] = set()  # ids whose inspect waits for `release`
        self.release = asyncio.Event()
        self.inspected: list[str] = []
        self.server_time = 1000.0
        self.opened = asyncio.Event()

    def add(self, doc: dict[str, Any]) -> None:
        self.containers[doc["Id"]] = doc

    @property
    def stream(self) -> FakeStream:
        return self.streams[-1]

    async def open_events(self, since: Any = None, until: Any = None, filters: Any = None) -> FakeStream:
        self.since.append(since)
        if self.refuse:
            self.refuse -= 1
            raise DockerUnavailable("connection refused")
        s = FakeStream(self.server_time)
        self.streams.append(s)
        self.opened.set()
        return s

    async def list_containers(self, all: bool = True) -> list[dict[str, Any]]:
        if self.list_errors:
            self.list_errors -= 1
            raise DockerError("GET /containers/json: HTTP 500: busy")
        out = []
        for d in self.containers.values():
            state = "running" if d["State"]["Running"] else (
                "exited" if d["State"]["StartedAt"].startswith("2") else "created")
            out.append({"Id": d["Id"], "Names": [d["Name"]], "State": state})
        return out

    async def inspect(self, container_id: str) -> dict[str, Any]:
        self.inspected.append(container_id)
        if container_id in self.held:
            await self.release.wait()
        if container_id not in self.containers:
            raise ContainerGone(f"No such container: {container_id}")
        return copy.deepcopy(self.containers[container_id])

    async def ping(self) -> bool:
        return True


def config(**docker: Any) -> Config:
    select = SelectConfig(env_allowlist=docker.pop("env_allowlist", []))
    return Config(docker=DockerConfig(**docker), host=HostConfig(name="h1"), select=select)


def kinds(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.kind, c.info.meta.name if c.info else "") for c in changes]


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


def api(fake: FakeClient, metrics: Metrics | None = None, **docker: Any) -> ApiDiscovery:
    docker.setdefault("reconnect_max_secs", 0.5)
    return ApiDiscovery(cast(DockerClient, fake), config(**docker), metrics or Metrics())


async def test_listing_reports_running_and_stopped_but_not_never_started(fake: FakeClient) -> None:
    fake.add(inspect_doc(1, "web", labels={"tier": "front"}))
    fake.add(inspect_doc(2, "job", running=False))
    fake.add(inspect_doc(3, "fresh", running=False, started=False))
    disc = api(fake)
    col = Collector(disc)
    got = await col.take(2)
    await col.nothing()
    assert sorted(kinds(got)) == [("start", "job"), ("start", "web")]
    by_name = {c.info.meta.name: c.info for c in got if c.info}
    assert by_name["web"].running and not by_name["job"].running
    assert by_name["web"].meta.labels == {"tier": "front"} and by_name["web"].meta.host == "h1"
    assert disc.synced.is_set()
    await col.stop()


async def test_start_is_yielded_before_inspect_answers_then_refined(fake: FakeClient) -> None:
    disc = api(fake, env_allowlist=["APP_*"])
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.add(inspect_doc(4, "short", tty=True, env=["APP_MODE=x", "PASSWORD=y"], labels={"l": "v"}))
    fake.held.add(cid(4))
    fake.stream.push(event("start", 4, "short", 2_000_000_000_000_000_000, l="v"))
    (start,) = await col.take()  # while inspect is held back
    assert start.kind == "start" and start.id == cid(4)
    assert start.info is not None
    meta = start.info.meta
    assert (meta.name, meta.image, meta.labels) == ("short", IMAGE, {"l": "v"})
    assert start.info.running and start.info.meta.env == {} and start.info.tty is False
    assert start.info.guessed  # driver, path and TTY are assumed: no reader may be built on it
    await col.nothing(0.1)
    fake.release.set()
    (update,) = await col.take()
    assert update.kind == "update" and update.info is not None
    assert update.info.tty is True and update.info.meta.env == {"APP_MODE": "x"} and not update.info.guessed
    assert update.info.meta.name == "short" and update.info.running
    await col.stop()


async def test_inspect_that_confirms_a_guess_still_says_so_once(fake: FakeClient) -> None:
    """The start from the event alone is a guess (json-file, no TTY); the inspect that confirms it comes as
    one update, so a consumer waiting for it to build a reader is not left waiting."""
    disc = api(fake)
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.add(inspect_doc(5, "plain", labels={"l": "v"}))
    fake.stream.push(event("start", 5, "plain", 1, l="v"))
    (start,) = await col.take()
    assert kinds([start]) == [("start", "plain")] and start.info is not None and start.info.guessed
    (update,) = await col.take()
    assert update.kind == "update" and update.info is not None and not update.info.guessed
    assert (update.info.log_driver, update.info.tty) == ("json-file", False)
    await col.nothing()
    assert cid(5) in fake.inspected
    fake.stream.push(event("die", 5, "plain", 2, exitCode="0"))
    (stop,) = await col.take()
    assert stop.kind == "stop" and stop.info is not None and not stop.info.running
    await col.stop()


async def test_lifecycle_and_duplicates_from_the_overlap(fake: FakeClient) -> None:
    fake.add(inspect_doc(1, "web"))
    disc = api(fake)
    col = Collector(disc)
    assert kinds(await col.take()) == [("start", "web")]
    s = fake.stream
    s.push(event("start", 1, "web", 1))  # seen by the listing already
    s.push(event("rename", 1, "web2", 2, oldName="/web"))
    s.push(event("rename", 1, "web2", 3, oldName="/web2"))  # no change of name: nothing
    s.push(event("die", 1, "web2", 4, exitCode="1"))
    s.push(event("die", 1, "web2", 5, exitCode="1"))
    s.push(event("destroy", 1, "web2", 6))
    s.push(event("start", 1, "web2", 7))  # a replay after the removal: ids are never reused
    s.push(event("start", 9, "next", 8))
    got = await col.take(4)
    assert kinds(got) == [("rename", "web2"), ("stop", "web2"), ("remove", "web2"), ("start", "next")]
    await col.nothing()
    await col.stop()


async def test_reconnect_resumes_from_the_last_event_and_resyncs(fake: FakeClient,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    fake.add(inspect_doc(1, "a"))
    fake.add(inspect_doc(2, "b"))
    disc = api(fake, metrics)
    col = Collector(disc)
    assert sorted(kinds(await col.take(2))) == [("start", "a"), ("start", "b")]
    t = 2_000_000_000_123_456_789
    fake.add(inspect_doc(3, "c"))
    fake.stream.push(event("start", 3, "c", t))
    assert kinds(await col.take(2)) == [("start", "c"), ("update", "c")]  # the guess, then its inspect
    # dockerd goes away; meanwhile b is removed, f is started and g lives and dies entirely
    del fake.containers[cid(2)]
    fake.add(inspect_doc(6, "f"))
    fake.refuse = 1
    fake.stream.end(DockerUnavailable("connection reset"))
    got = await col.take(2)
    assert kinds(got) == [("remove", "b"), ("start", "f")]
    assert metrics.get("shipper_docker_reconnects_total") == 1
    assert fake.since == [None, since_from_ns(t), since_from_ns(t)]
    # the replay: already known ones are dropped, one that lived in the gap is reported, then removed
    fake.stream.push(event("start", 6, "f", t + 1), event("start", 7, "g", t + 2),
                     event("die", 7, "g", t + 3), event("destroy", 7, "g", t + 4),
                     event("destroy", 2, "b", t + 5))
    assert kinds(await col.take(3)) == [("start", "g"), ("stop", "g"), ("remove", "g")]
    await col.nothing()
    assert any("reconnected" in r.message for r in caplog.records)
    await col.stop()


async def test_unreachable_daemon_is_retried_without_raising(fake: FakeClient,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "shipper.docker")
    metrics = Metrics()
    fake.refuse = 3
    fake.list_errors = 1
    fake.add(inspect_doc(1, "web"))
    disc = api(fake, metrics, reconnect_max_secs=0.5)
    col = Collector(disc)
    assert kinds(await col.take(timeout=10)) == [("start", "web")]
    assert len(fake.since) == 5  # three refused, one failed listing, then success
    assert metrics.get("shipper_docker_reconnects_total") == 1
    # never connected before: "unreachable", not "lost"
    lost = [r for r in caplog.records if "Docker API unreachable, will retry" in r.message]
    assert len(lost) == 4 and lost[0].levelno == logging.WARNING and lost[1].levelno == logging.DEBUG
    assert not [r for r in caplog.records if "Docker API lost" in r.message]
    assert disc.state == "connected" and metrics.get("shipper_docker_api_state") == 0
    await col.stop()


async def test_the_stream_ending_is_a_reconnect(fake: FakeClient) -> None:
    metrics = Metrics()
    disc = api(fake, metrics)
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.opened.clear()
    fake.stream.end()  # dockerd shut down cleanly
    await asyncio.wait_for(fake.opened.wait(), 5)
    await asyncio.wait_for(disc.synced.wait(), 5)
    assert metrics.get("shipper_docker_reconnects_total") == 1
    assert fake.since[1] == since_from_ns(1000 * 1_000_000_000)  # subscription time: no event came
    await col.stop()


async def test_create_time_inspect_fills_the_start(fake: FakeClient) -> None:
    disc = api(fake)
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.add(inspect_doc(8, "tty", running=False, started=False, tty=True))
    fake.stream.push(event("create", 8, "tty", 1))
    for _ in range(100):
        if cid(8) in fake.inspected:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    fake.held.add(cid(8))  # the inspect after start is held: the start must already know the tty
    fake.containers[cid(8)]["State"]["Running"] = True
    fake.stream.push(event("rename", 8, "tty2", 2), event("start", 8, "tty2", 3))
    (start,) = await col.take()
    assert start.kind == "start" and start.info is not None
    assert start.info.tty is True and start.info.meta.name == "tty2"
    await col.stop()


async def test_events_of_unexpected_shape_are_skipped(fake: FakeClient,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    disc = api(fake, metrics)
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.stream.push({"Action": "start"}, {"Type": "network", "Action": "connect", "Actor": {"ID": "n"}},
                     {"Action": "start", "Actor": "oops"},
                     {"Action": "start", "Actor": {"ID": "x", "Attributes": 5}},
                     event("start", 1, "ok", 1))
    assert kinds(await col.take()) == [("start", "ok")]
    assert metrics.get("shipper_docker_events_invalid_total") == 2
    assert sum("unexpected shape" in r.message for r in caplog.records) == 1
    assert len(fake.streams) == 1  # no reconnect for a bad event
    await col.stop()


async def test_event_queue_is_bounded_and_a_full_one_resyncs(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """While the consumer is busy the reader of /events fills a bounded queue, then waits (it stops reading
    the stream); having waited, it ends the session so that a new subscription and listing catch up with
    whatever dockerd dropped meanwhile. Nothing is lost and nothing grows."""
    monkeypatch.setattr(discovery, "EVENT_QUEUE_MAX", 4, raising=False)
    metrics = Metrics()
    disc = api(fake, metrics)
    changes = disc.changes()
    first = asyncio.create_task(anext(changes))  # runs the session until it waits for an event
    await asyncio.wait_for(disc.synced.wait(), 5)
    stream = fake.stream
    for n in range(1, 21):
        fake.add(inspect_doc(n, f"c{n}"))
        stream.push(event("start", n, f"c{n}", n))
    got = [await asyncio.wait_for(first, 5)]  # the consumer takes one change, then is busy elsewhere
    await asyncio.sleep(0.3)
    assert stream.queue.qsize() > 0, "the reader of /events did not wait: the queue is not bounded"
    assert disc.backlog <= 4
    assert metrics.get("shipper_docker_event_queue_full_total") == 1
    while not {cid(n) for n in range(1, 21)} <= {c.id for c in got if c.kind == "start"}:
        got.append(await asyncio.wait_for(anext(changes), 5))
    more = asyncio.create_task(anext(changes))  # lets the session finish its resync
    await asyncio.wait_for(disc.synced.wait(), 5)
    more.cancel()
    await asyncio.gather(more, return_exceptions=True)
    assert len(fake.streams) == 2  # resubscribed once
    assert not [c for c in got if c.kind == "remove"]
    assert metrics.get("shipper_docker_reconnects_total") == 1
    assert sum("Docker event queue full" in r.message for r in caplog.records) == 1
    await changes.aclose()


# --- FileDiscovery ----------------------------------------------------------------------------------------


def write_config(root: Path, doc: dict[str, Any], raw: bytes | None = None) -> None:
    """Writes as dockerd does (temp file + rename), or `raw` bytes in place (a torn write)."""
    d = root / "containers" / doc["Id"]
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"ID": doc["Id"], "Name": doc["Name"], "Created": doc["Created"], "State": doc["State"],
           "Config": doc["Config"], "Image": doc["Image"], "LogPath": doc["LogPath"]}
    tmp = d / ".tmp-config"
    tmp.write_bytes(raw if raw is not None else json.dumps(cfg).encode())
    os.replace(tmp, d / "config.v2.json")
    (d / "hostconfig.json").write_text(json.dumps(doc["HostConfig"]))


def files(tmp_path: Path, metrics: Metrics | None = None) -> FileDiscovery:
    cfg = config(data_root=str(tmp_path), scan_interval_secs=0.05, host="unix:///nonexistent/docker.sock")
    return FileDiscovery(cfg, metrics or Metrics())


async def test_file_discovery_lifecycle(tmp_path: Path) -> None:
    a = inspect_doc(1, "web", labels={"k": "v"})
    write_config(tmp_path, a)
    write_config(tmp_path, inspect_doc(2, "later", running=False, started=False))
    disc = files(tmp_path)
    col = Collector(disc)
    (start,) = await col.take()
    assert kinds([start]) == [("start", "web")]
    assert start.info is not None and start.info.meta.labels == {"k": "v"} and start.info.running
    await col.nothing(0.2)
    a["State"]["Running"] = False
    a["Name"] = "/web-old"
    write_config(tmp_path, a)
    assert kinds(await col.take(2)) == [("rename", "web-old"), ("stop", "web-old")]
    write_config(tmp_path, inspect_doc(2, "later"))
    assert kinds(await col.take()) == [("start", "later")]
    a["State"] = {"Running": True, "StartedAt": "2026-11-26T22:00:00.000000000Z"}
    write_config(tmp_path, a)
    assert kinds(await col.take()) == [("start", "web-old")]
    for p in (tmp_path / "containers" / cid(1)).iterdir():
        p.unlink()
    (tmp_path / "containers" / cid(1)).rmdir()
    (remove,) = await col.take()
    assert remove.kind == "remove" and remove.id == cid(1)
    await col.nothing(0.2)
    await col.stop()


async def test_torn_config_is_skipped_counted_and_logged_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    a = inspect_doc(1, "web")
    write_config(tmp_path, a)
    disc = files(tmp_path, metrics)
    col = Collector(disc)
    assert kinds(await col.take()) == [("start", "web")]
    write_config(tmp_path, a, raw=b'{"ID": "' + cid(1).encode() + b'", "Name": "/we')  # half written
    b = inspect_doc(2, "new")
    write_config(tmp_path, b, raw=b"{")
    scans = disc.scans
    await col.nothing(0.4)  # not removed, not started
    assert disc.scans >= scans + 3
    assert metrics.get("shipper_docker_config_invalid_total") == 2  # once per bad file, not per scan
    warned = [r for r in caplog.records if "unreadable container config" in r.message]
    assert len(warned) == 2
    a["Name"] = "/web2"
    write_config(tmp_path, a)
    write_config(tmp_path, b)
    assert sorted(kinds(await col.take(2))) == [("rename", "web2"), ("start", "new")]
    await col.stop()


async def test_missing_data_root_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "later"
    cfg = config(data_root=str(root), scan_interval_secs=0.05)
    disc = FileDiscovery(cfg, Metrics())
    col = Collector(disc)
    await col.nothing(0.3)
    assert disc.scans >= 3
    assert sum("cannot scan Docker data root" in r.message for r in caplog.records) == 1
    write_config(root, inspect_doc(1, "web"))
    assert kinds(await col.take()) == [("start", "web")]
    await col.stop()
