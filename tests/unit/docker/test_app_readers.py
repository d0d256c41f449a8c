"""How the app turns discovery's changes into readers: never on a guess, rebuilt when the truth differs.

The app's own `_apply`, with a real buffer and real readers (a json-file one on a file made here; API ones
on a client whose socket does not exist, so they only ever fail and retry). The same ordering against the
real dockerd is in tests/integration/test_docker_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from shipper.app import App
from shipper.buffer.memory import MemoryBuffer
from shipper.config import WhenFull, load_dict
from shipper.docker.client import DockerClient, Endpoint
from shipper.docker.discovery import Change
from shipper.docker.metadata import ContainerInfo, default_log_path, info_from_event
from shipper.event import ContainerMeta
from shipper.sources.api import ApiSource, FrameDecoder, TtyDecoder
from shipper.sources.jsonfile import JsonFileSource

CID = "a" * 64


def start_event(cid: str = CID, name: str = "web") -> dict[str, object]:
    return {"Type": "container", "Action": "start", "id": cid, "timeNano": 1_700_000_000_000_000_000,
            "Actor": {"ID": cid, "Attributes": {"name": name, "image": "app:1"}}}


def inspected(data_root: Path, *, driver: str = "json-file", tty: bool = False, cid: str = CID) -> ContainerInfo:
    path = default_log_path(str(data_root), cid) if driver == "json-file" else ""
    return ContainerInfo(ContainerMeta(cid, "web", "app:1"), log_driver=driver, log_path=path, tty=tty)


@contextlib.asynccontextmanager
async def running_app(tmp_path: Path, read: str = "auto") -> AsyncIterator[App]:
    cfg = load_dict({"docker": {"read": read, "data_root": str(tmp_path / "docker"), "poll_interval_secs": 0.05,
                                "reconnect_max_secs": 0.2},
                     "state": {"dir": str(tmp_path / "state")},
                     "sinks": {"out": {"type": "null"}}}, env={})
    app = App(cfg)
    app.buffer = MemoryBuffer(app._safe, app.metrics, 10_000, 10_000_000, WhenFull.BLOCK)
    app.docker = DockerClient(Endpoint("http://docker", unix_path=str(tmp_path / "no-docker.sock")))
    async with asyncio.TaskGroup() as tg:
        app._tasks = tg
        try:
            yield app
        finally:
            await app._stop_readers()
            await app.docker.close()


def guess(tmp_path: Path) -> ContainerInfo:
    return info_from_event(start_event(), "h", str(tmp_path / "docker"))


def make_json_log(tmp_path: Path, cid: str = CID) -> None:
    path = Path(default_log_path(str(tmp_path / "docker"), cid))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"log":"hi\\n","stream":"stdout","time":"2026-11-30T00:00:00.000000001Z"}\n')


async def test_a_guess_waits_for_the_inspect_when_no_json_file_proves_it(tmp_path: Path) -> None:
    """`--log-driver local` started before its inspect answered: no json-file will ever exist, so no reader
    is built on the guess; the inspect's update builds the right one (the API stream)."""
    async with running_app(tmp_path) as app:
        (tmp_path / "docker" / "containers" / CID).mkdir(parents=True)  # the folder exists for every driver
        g = guess(tmp_path)
        assert g.guessed
        app._apply(Change("start", CID, g))
        assert CID not in app.readers and CID in app.pending
        app._apply(Change("update", CID, inspected(tmp_path / "docker", driver="local")))
        reader = app.readers[CID]
        assert isinstance(reader.source, ApiSource) and isinstance(reader.source._decoder, FrameDecoder)
        assert not app.pending


async def test_a_tty_container_read_over_the_api_gets_the_raw_decoder(tmp_path: Path) -> None:
    async with running_app(tmp_path, read="api") as app:
        make_json_log(tmp_path)  # read = "api": a json-file proves nothing here
        app._apply(Change("start", CID, guess(tmp_path)))
        assert CID not in app.readers
        app._apply(Change("update", CID, inspected(tmp_path / "docker", tty=True)))
        source = app.readers[CID].source
        assert isinstance(source, ApiSource) and isinstance(source._decoder, TtyDecoder)


async def test_a_json_file_that_is_there_proves_the_guess_and_is_opened_at_once(tmp_path: Path) -> None:
    """The `--rm` case: the file is opened from the start event; the inspect that follows keeps the reader."""
    async with running_app(tmp_path) as app:
        make_json_log(tmp_path)
        app._apply(Change("start", CID, guess(tmp_path)))
        reader = app.readers[CID]
        assert isinstance(reader.source, JsonFileSource)
        truth = inspected(tmp_path / "docker", tty=True)
        app._apply(Change("update", CID, truth))
        assert app.readers[CID] is reader and reader.source.info is truth  # refreshed, not rebuilt


async def test_an_update_that_changes_what_the_reader_was_built_for_rebuilds_it(tmp_path: Path) -> None:
    async with running_app(tmp_path, read="api") as app:
        app._apply(Change("start", CID, inspected(tmp_path / "docker")))
        old = app.readers[CID]
        assert isinstance(old.source, ApiSource) and isinstance(old.source._decoder, FrameDecoder)
        app._apply(Change("update", CID, replace(inspected(tmp_path / "docker"), tty=True)))
        new = app.readers[CID]
        assert new is not old and isinstance(new.source, ApiSource)
        assert isinstance(new.source._decoder, TtyDecoder)
        for _ in range(100):
            if old.task.done():
                break
            await asyncio.sleep(0.01)
        assert old.task.done() and not new.task.done()  # the old one stopped; one reader per container


async def test_removed_while_waiting_for_the_inspect_is_counted_and_said(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    async with running_app(tmp_path, read="api") as app:
        app._apply(Change("start", CID, guess(tmp_path)))
        app._apply(Change("remove", CID, guess(tmp_path)))
        assert not app.pending and CID not in app.readers
        assert app.metrics.get("shipper_containers_unreadable_total", reason="gone_before_inspect") == 1
        assert any("removed before an inspect" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)


async def test_read_files_with_a_driver_that_writes_none_is_said_not_waited_on(tmp_path: Path) -> None:
    """read = "files" and `--log-driver local`: a json-file reader would wait forever for a file that
    never comes; the container is reported instead."""
    async with running_app(tmp_path, read="files") as app:
        app._apply(Change("start", CID, inspected(tmp_path / "docker", driver="local")))
        assert CID not in app.readers and not app.pending
        assert app.metrics.get("shipper_containers_unreadable_total", reason="no_reader") == 1
