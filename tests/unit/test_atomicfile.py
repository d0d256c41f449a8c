from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.atomicfile import fsync_dir, write_atomic
from shipper.buffer import ledger
from shipper.buffer.ledger import LEDGER_NAME, Ledger
from shipper.event import Checkpoint
from shipper.sources.offsets import FILE_NAME, OffsetStore


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The laxest umask: the modes asserted below must come from shipper, not from the environment."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("fsync", [True, False])
def test_creates_the_file_owner_only(tmp_path: Path, open_umask: None, fsync: bool) -> None:
    p = tmp_path / "state.json"
    write_atomic(p, b'{"a": 1}', fsync=fsync)
    assert p.read_bytes() == b'{"a": 1}'
    assert mode(p) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left


def test_replaces_content_and_mode_of_an_existing_file(tmp_path: Path, open_umask: None) -> None:
    p = tmp_path / "state.json"
    p.write_bytes(b"old content, longer than the new one")
    p.chmod(0o644)
    write_atomic(str(p), b"new", fsync=True)
    assert p.read_bytes() == b"new"
    assert mode(p) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_temporary_file_left_by_a_crash_is_reused_with_the_right_mode(tmp_path: Path,
                                                                         open_umask: None) -> None:
    stale = tmp_path / ".state.json.tmp"
    stale.write_bytes(b"half a write from before the crash" * 100)
    stale.chmod(0o666)
    write_atomic(tmp_path / "state.json", b"whole", fsync=False)
    assert (tmp_path / "state.json").read_bytes() == b"whole"
    assert mode(tmp_path / "state.json") == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_an_explicit_mode_is_exact(tmp_path: Path, open_umask: None) -> None:
    p = tmp_path / "shared"
    write_atomic(p, b"x", fsync=False, mode=0o640)
    assert mode(p) == 0o640


def test_large_data_is_written_whole(tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    write_atomic(tmp_path / "big", data, fsync=True)
    assert (tmp_path / "big").read_bytes() == data


def test_a_failed_replace_keeps_the_old_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_atomic(target, b"data", fsync=True)  # a rename cannot replace a non-empty directory
    assert (target / "inside").read_bytes() == b"kept"
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "such", b"x", fsync=False)


def test_fsync_dir_and_its_old_home() -> None:
    fsync_dir(Path.cwd())
    assert ledger.fsync_dir is fsync_dir  # the spool still imports it from the ledger
    with pytest.raises(NotADirectoryError):
        fsync_dir(Path(__file__))


def test_ledger_and_offsets_are_written_owner_only(tmp_path: Path, open_umask: None) -> None:
    led = Ledger(tmp_path / LEDGER_NAME, next_seq=7, cursors={"a": 3})
    led.save(fsync=True)
    assert mode(tmp_path / LEDGER_NAME) == 0o600
    assert Ledger.load(tmp_path).cursors == {"a": 3}
    store = OffsetStore(tmp_path)
    store.commit(Checkpoint("c1", 42, "1:2"))
    assert store.flush()
    assert mode(tmp_path / FILE_NAME) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted([LEDGER_NAME, FILE_NAME])
