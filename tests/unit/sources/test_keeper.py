"""The log keeper holds each new container's json-file log open from its creation: a log deleted (with its
container, `--rm`) before any reader opened it can still be read whole from what the keeper hands over."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipper.sources.jsonfile.keeper import LogKeeper

CID = "ab" * 32


def wait(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[LogKeeper]:
    (tmp_path / "containers").mkdir()
    k = LogKeeper(str(tmp_path), hold_secs=60)
    assert k.start()
    yield k
    k.close()


def create(root: Path, cid: str, lines: list[bytes]) -> Path:
    """As dockerd does: the container's folder, then its log, written."""
    folder = root / "containers" / cid
    folder.mkdir()
    log = folder / f"{cid}-json.log"
    log.write_bytes(b"".join(lines))
    return log


def read_all(fds: list[int]) -> bytes:
    try:
        return b"".join(os.pread(fd, 1 << 20, 0) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_log_deleted_with_its_container_is_still_read_whole(keeper: LogKeeper, tmp_path: Path) -> None:
    lines = [b'{"log":"%d\\n","stream":"stdout","time":"2026-01-01T00:00:00Z"}\n' % i for i in range(5)]
    log = create(tmp_path, CID, lines)
    wait(lambda: keeper.has(str(log)))
    with log.open("ab") as f:  # written after it was opened: still seen
        f.write(b'{"log":"late\\n","stream":"stdout","time":"2026-01-01T00:00:01Z"}\n')
    shutil.rmtree(log.parent)  # --rm: dockerd removes the folder, log and all
    assert not log.exists()
    assert read_all(keeper.take(str(log))) == b"".join(lines) + (
        b'{"log":"late\\n","stream":"stdout","time":"2026-01-01T00:00:01Z"}\n')
    assert keeper.take(str(log)) == []  # handed over once


def test_a_rotation_keeps_every_live_file_in_order(keeper: LogKeeper, tmp_path: Path) -> None:
    log = create(tmp_path, CID, [b"first\n"])
    wait(lambda: keeper.has(str(log)))
    os.rename(log, f"{log}.1")  # dockerd's rotation: the live file renamed, a new one created
    log.write_bytes(b"second\n")
    wait(lambda: keeper.opened == 2)
    shutil.rmtree(log.parent)
    assert read_all(keeper.take(str(log))) == b"first\nsecond\n"


def test_a_log_a_reader_opened_itself_is_released_and_not_held_again(keeper: LogKeeper, tmp_path: Path) -> None:
    log = create(tmp_path, CID, [b"x\n"])
    wait(lambda: keeper.has(str(log)))
    keeper.release(str(log))
    assert not keeper.has(str(log))
    os.rename(log, f"{log}.1")
    log.write_bytes(b"y\n")
    other = create(tmp_path, "cd" * 32, [b"z\n"])  # a later event, so the rotation's has been read
    wait(lambda: keeper.has(str(other)))
    assert not keeper.has(str(log)) and keeper.take(str(log)) == []


def test_what_nobody_asked_for_is_closed_after_hold_secs(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    k = LogKeeper(str(tmp_path), hold_secs=0.2)
    assert k.start()
    try:
        log = create(tmp_path, CID, [b"x\n"])
        wait(lambda: k.has(str(log)))
        wait(lambda: not k.has(str(log)), timeout=5)  # the thread's poll wakes at least once a second
    finally:
        k.close()


def test_at_most_max_held_the_oldest_closed_first(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    k = LogKeeper(str(tmp_path), max_held=2)
    assert k.start()
    try:
        logs = []
        for i in range(3):
            logs.append(create(tmp_path, f"{i:02d}" * 32, [b"x\n"]))
            wait(lambda n=i + 1: k.opened == n)
        assert [k.has(str(p)) for p in logs] == [False, True, True]
    finally:
        k.close()


def test_no_containers_folder_is_no_keeper(tmp_path: Path) -> None:
    assert not LogKeeper(str(tmp_path / "nowhere")).start()
