from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from shipper.event import Checkpoint
from shipper.sources.offsets import FILE_NAME, OffsetStore


def test_save_and_load_round_trip(state_dir: Path) -> None:
    s = OffsetStore(state_dir)
    s.load()
    s.commit(Checkpoint("a", 1234, "64769:12"))
    s.commit(Checkpoint("b", "2024-05-01T12:00:00.123456789Z+000002"))
    assert s.flush()
    t = OffsetStore(state_dir)
    t.load()
    assert t.get("a") == Checkpoint("a", 1234, "64769:12")
    assert t.get("b") == Checkpoint("b", "2024-05-01T12:00:00.123456789Z+000002", "")
    assert t.get("c") is None
    assert [p.name for p in state_dir.iterdir()] == [FILE_NAME]  # no temporary file left behind


def test_commit_only_moves_forward_within_a_file(state_dir: Path) -> None:
    s = OffsetStore(state_dir)
    s.commit(Checkpoint("a", 500, "1:1"))
    s.commit(Checkpoint("a", 300, "1:1"))  # a late, older ack
    assert s.get("a") == Checkpoint("a", 500, "1:1")
    s.commit(Checkpoint("a", 10, "1:2"))  # the next file after a rotation starts low
    assert s.get("a") == Checkpoint("a", 10, "1:2")
    s.commit(Checkpoint("b", "2024-05-01T12:00:01.000000000Z"))
    s.commit(Checkpoint("b", "2024-05-01T12:00:00.000000000Z+000003"))
    assert s.get("b").position == "2024-05-01T12:00:01.000000000Z"  # type: ignore[union-attr]


def test_flush_writes_only_when_something_changed(state_dir: Path) -> None:
    s = OffsetStore(state_dir)
    assert s.flush()
    assert not (state_dir / FILE_NAME).exists()  # nothing committed: nothing written
    s.commit(Checkpoint("a", 1, "1:1"))
    s.flush()
    before = os.stat(state_dir / FILE_NAME).st_ino
    s.commit(Checkpoint("a", 1, "1:1"))  # the same position again
    assert not s.dirty
    s.flush()
    assert os.stat(state_dir / FILE_NAME).st_ino == before
    s.commit(Checkpoint("a", 2, "1:1"))
    s.flush()
    assert os.stat(state_dir / FILE_NAME).st_ino != before  # replaced by rename, never rewritten in place


def test_forget_drops_the_position_and_ignores_late_commits(state_dir: Path) -> None:
    s = OffsetStore(state_dir)
    s.commit(Checkpoint("a", 1, "1:1"))
    s.flush()
    s.forget("a")
    s.commit(Checkpoint("a", 2, "1:1"))  # the last batch of the removed container became safe late
    assert s.get("a") is None
    s.flush()
    t = OffsetStore(state_dir)
    t.load()
    assert t.get("a") is None


@pytest.mark.parametrize("content", [
    b"{not json",
    b"",
    b"[1, 2]",
    b'{"version": 1, "containers": []}',
    b'{"version": 1, "containers": {"a": {"position": null}}}',
    b'{"version": 1, "containers": {"a": {"position": true, "file_id": "1:1"}}}',
    b'{"version": 1, "containers": {"a": 5}}',
])
def test_a_corrupt_file_is_logged_and_treated_as_empty(state_dir: Path, content: bytes,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    (state_dir / FILE_NAME).write_bytes(content)
    s = OffsetStore(state_dir)
    with caplog.at_level(logging.ERROR, logger="shipper.offsets"):
        s.load()
    assert s.all() == {}
    assert "corrupt" in caplog.text
    s.commit(Checkpoint("a", 7, "1:1"))  # and it goes on working, replacing the bad file
    assert s.flush()
    assert orjson.loads((state_dir / FILE_NAME).read_bytes())["containers"]["a"]["position"] == 7


def test_a_failed_save_keeps_the_old_file(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake fault: rename failing (a full or read-only disk) cannot be caused for root on a tmpfs."""
    s = OffsetStore(state_dir)
    s.commit(Checkpoint("a", 1, "1:1"))
    s.flush()
    s.commit(Checkpoint("a", 2, "1:1"))

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", refuse)
        assert not s.flush()
    assert s.dirty
    t = OffsetStore(state_dir)
    t.load()
    assert t.get("a").position == 1  # type: ignore[union-attr]
    assert s.flush()
    t.load()
    assert t.get("a").position == 2  # type: ignore[union-attr]
