"""Coalesced wake-ups: a json-file log being written wakes its reader at most every `read_coalesce_secs`,
while a rotation wakes it at once. Real inotify on files written here in dockerd's format.

Not timed: the reader's own polls are pushed out of the way (poll_interval_secs and its first idle wait of
30 s), so every pass it makes is one an inotify event asked for, and the order in which the event loop runs
the writer, inotify and the reader decides what is read when. The only clock is "long before 30 s".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipper.config import Config, DockerConfig, MultilineConfig, MultilineMode, load_dict
from shipper.errors import ConfigError
from shipper.sources.jsonfile.inotify import _Inotify
from tests.unit.sources.test_jsonfile import DockerLog, Reader, nums

NEVER = 30.0  # seconds: a poll or a floor that never comes within a test


def config(coalesce: float) -> Config:
    return Config(docker=DockerConfig(poll_interval_secs=NEVER, read_coalesce_secs=coalesce),
                  multiline=MultilineConfig(mode=MultilineMode.OFF))


@pytest.fixture
def dlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockerLog:
    monkeypatch.setattr("shipper.sources.jsonfile.follow._MIN_IDLE", NEVER)  # no poll: passes are wake-ups
    return DockerLog(tmp_path)


def watch_of(r: Reader) -> _Inotify:
    assert r.source._watch is not None, "inotify is needed here"
    return r.source._watch[0]


async def burst(dlog: DockerLog, first: int, n: int) -> None:
    """n writes, one line each as dockerd writes them, the event loop turning between two."""
    for i in range(first, first + n):
        dlog.write(str(i))
        await asyncio.sleep(0)


async def test_a_burst_of_writes_wakes_the_reader_once_and_a_rotation_at_once(dlog: DockerLog) -> None:
    dlog.write("0")
    r = Reader(dlog, cfg=config(NEVER)).start()
    await r.has(1)
    inotify = watch_of(r)
    await burst(dlog, 1, 200)
    await r.settle()
    # the first write woke the reader at once (a quiet log), the 199 after it wait for the floor
    assert inotify.write_wakes == 1
    assert 1 < len(r.messages) < 201
    passes = len(r.batches)
    dlog.rotate()  # within the floor: acted on at once, and the rest of the old file is read with it
    dlog.write("201")
    await r.has(202)
    assert r.messages == nums(0, 202)
    assert inotify.write_wakes == 1
    assert len(r.batches) <= passes + 2  # one pass for the rotation (two if it lands between two reads)
    await r.finish()
    assert r.gaps() == 0 and r.possible() == 0


async def test_without_a_floor_every_write_wakes_the_reader(dlog: DockerLog) -> None:
    """What the floor saves: with read_coalesce_secs = 0 the same burst wakes the reader write by write."""
    dlog.write("0")
    r = Reader(dlog, cfg=config(0)).start()
    await r.has(1)
    await burst(dlog, 1, 200)
    await r.has(201)
    assert watch_of(r).write_wakes >= 100
    assert r.messages == nums(0, 201)
    await r.finish()


async def test_a_write_within_the_floor_is_read_when_it_ends_not_at_the_next_poll(dlog: DockerLog) -> None:
    dlog.write("0")
    r = Reader(dlog, cfg=config(0.2)).start()
    await r.has(1)
    dlog.write("1")  # a quiet log: read at once; the floor starts
    await r.has(2)
    dlog.write("2")  # within the floor: read when it ends (0.2 s), long before a poll (30 s)
    await r.has(3)
    assert watch_of(r).write_wakes == 2
    await r.finish()
    assert r.messages == nums(0, 3)


async def test_readers_of_two_folders_share_the_floor_and_each_is_woken(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shipper.sources.jsonfile.follow._MIN_IDLE", NEVER)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    logs = [DockerLog(tmp_path / "a"), DockerLog(tmp_path / "b")]
    readers = []
    for d in logs:
        d.write("0")
        readers.append(Reader(d, cfg=config(0.2)).start())
    for r in readers:
        await r.has(1)
    assert watch_of(readers[0]) is watch_of(readers[1])
    for d in logs:
        d.write("1")
    for r in readers:
        await r.has(2)
    for r in readers:
        await r.finish()
        assert r.messages == ["0", "1"]


@pytest.mark.parametrize("value", [-0.001, 1.5, "nan"])
def test_read_coalesce_secs_out_of_range_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict({"docker": {"read_coalesce_secs": float(value) if isinstance(value, str) else value}}, env={})
    assert e.value.key == "docker.read_coalesce_secs"


def test_read_coalesce_secs_default_and_zero() -> None:
    assert load_dict({}, env={}).docker.read_coalesce_secs == 0.005
    assert load_dict({"docker": {"read_coalesce_secs": 0}}, env={}).docker.read_coalesce_secs == 0
