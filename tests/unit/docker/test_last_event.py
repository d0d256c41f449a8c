"""The /events stream's last sign of life: discovery stamps every event it receives, before anything is made of
it, and the Docker watcher (status, /metrics) reports the seconds since then, not since the last container
change. Runs on the in-memory Engine API stand-in of test_discovery.py (events at exact moments); the real
dockerd's events are checked in tests/integration/test_reload.py."""

from __future__ import annotations

import asyncio
import time

from shipper.docker.discovery import ContainerDiscovery, FileDiscovery
from shipper.docker.watch import DockerWatch
from shipper.telemetry.metrics import Metrics
from tests.unit.docker.helpers import Collector
from tests.unit.docker.test_discovery import FakeClient, api, config, event


def watch_of(disc: ContainerDiscovery | None, metrics: Metrics) -> DockerWatch:
    return DockerWatch(lambda: None, metrics, "/nonexistent", 60.0, lambda: disc)


async def test_an_event_that_changes_nothing_still_counts_as_the_last_event() -> None:
    fake = FakeClient()
    metrics = Metrics()
    disc = api(fake, metrics)
    w = watch_of(disc, metrics)
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    assert disc.events_connected and disc.last_event == 0.0
    assert w.snapshot()["secs_since_last_event"] is None, "no event yet: no age to report"
    before = time.monotonic()
    # a `die` for a container never seen and an event of another type: no change comes of either
    fake.stream.push(event("die", 7, "unknown", 5), {"Type": "network", "Action": "connect", "Actor": {"ID": "n"}})
    await col.nothing(0.2)
    stamped = disc.last_event
    assert before <= stamped <= time.monotonic()
    snap = w.snapshot()
    assert snap["events_connected"] is True and snap["secs_since_last_event"] is not None
    assert snap["secs_since_last_event"] < 1.0
    assert 0 <= metrics.get("shipper_docker_last_event_age_seconds") < 1.0
    await asyncio.sleep(0.3)
    assert disc.last_event == stamped, "only an event moves it"
    assert w.snapshot()["secs_since_last_event"] >= 0.3
    fake.stream.push(event("start", 8, "later", 6))
    await col.take()
    assert disc.last_event > stamped
    await col.stop()


async def test_the_stream_cut_says_disconnected_and_keeps_the_last_event_time() -> None:
    fake = FakeClient()
    disc = api(fake)
    w = watch_of(disc, Metrics())
    col = Collector(disc)
    await asyncio.wait_for(disc.synced.wait(), 5)
    fake.stream.push(event("die", 9, "x", 1))
    await col.nothing(0.1)
    stamped = disc.last_event
    assert stamped > 0
    fake.refuse = 1_000  # the daemon stays away
    fake.stream.end()
    await asyncio.sleep(0.3)
    snap = w.snapshot()
    assert snap["events_connected"] is False and snap["secs_since_last_event"] >= 0.3
    assert disc.last_event == stamped
    await col.stop()


def test_no_events_stream_no_age() -> None:
    """FileDiscovery has no stream; before discovery exists there is none either."""
    files = FileDiscovery(config(data_root="/nonexistent"), Metrics())
    assert files.events_connected is False and files.last_event == 0.0
    snap = watch_of(files, Metrics()).snapshot()
    assert snap["events_connected"] is False and snap["secs_since_last_event"] is None
    snap = watch_of(None, Metrics()).snapshot()
    assert snap["events_connected"] is False and snap["secs_since_last_event"] is None
    assert DockerWatch(lambda: None, Metrics(), "/nonexistent", 60.0).snapshot()["events_connected"] is None
