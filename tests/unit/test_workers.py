"""The supervisor's bookkeeping: which worker reads which container, where each keeps its state, offsets moved
when the number of workers changes, spools no worker owns found for draining."""

from __future__ import annotations

import collections
import hashlib
import os
import time
from pathlib import Path

import pytest

from shipper.config import load_dict
from shipper.errors import ConfigError
from shipper.event import Checkpoint
from shipper.sources.offsets import OffsetStore
from shipper.workers import (
    DRAINED_MARK,
    Shard,
    make_worker_dirs,
    orphan_spools,
    redistribute_offsets,
    shard_of,
    worker_config,
    worker_dir,
)


def ids(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def test_containers_split_evenly_and_always_alike() -> None:
    counts = collections.Counter(shard_of(cid, 4) for cid in ids(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(900 < n < 1100 for n in counts.values()), counts
    assert [shard_of(c, 3) for c in ids(50)] == [shard_of(c, 3) for c in ids(50)]
    assert shard_of("not-hex-name", 2) in (0, 1)  # a folder not named by Docker still goes somewhere


def test_each_container_has_exactly_one_worker() -> None:
    shards = [Shard(k, 3) for k in range(3)]
    for cid in ids(300):
        assert sum(s.owns(cid) for s in shards) == 1
    assert Shard(0, 1).owns(ids(1)[0])


def test_one_worker_keeps_the_state_dir_itself(tmp_path: Path) -> None:
    assert worker_dir(tmp_path, 0, 1) == tmp_path
    assert worker_dir(tmp_path, 1, 2) == tmp_path / "workers" / "1"
    make_worker_dirs(tmp_path, 2)
    for d in (tmp_path / "workers", tmp_path / "workers" / "0", tmp_path / "workers" / "1"):
        assert d.stat().st_mode & 0o777 == 0o700, d


def save(d: Path, cps: dict[str, int]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    store = OffsetStore(d)
    store.replace_all({cid: Checkpoint(cid, pos, "1:2") for cid, pos in cps.items()})
    assert store.flush()


def load(d: Path) -> dict[str, int | str]:
    store = OffsetStore(d)
    store.load()
    return {cid: cp.position for cid, cp in store.all().items()}


def test_offsets_follow_their_containers_when_the_count_changes(tmp_path: Path) -> None:
    cs = ids(40)
    save(tmp_path, {c: 100 for c in cs})  # a single process ran before
    assert redistribute_offsets(tmp_path, 2) == 40
    assert not (tmp_path / "offsets.json").exists(), "the single process's file would be read again later"
    for k in range(2):
        got = load(tmp_path / "workers" / str(k))
        assert set(got) == {c for c in cs if shard_of(c, 2) == k}
    # worker 1 read further; then three workers: every offset goes where its container goes, none lost
    time.sleep(0.01)
    w1 = tmp_path / "workers" / "1"
    save(w1, {c: 500 for c in load(w1)})
    assert redistribute_offsets(tmp_path, 3) == 40
    merged: dict[str, int | str] = {}
    for k in range(3):
        got = load(tmp_path / "workers" / str(k))
        assert all(shard_of(c, 3) == k for c in got)
        merged.update(got)
    assert merged == {c: 500 if shard_of(c, 2) == 1 else 100 for c in cs}
    # back to one process: everything in the state dir itself, the workers' files gone
    assert redistribute_offsets(tmp_path, 1) == 40
    assert load(tmp_path) == merged
    assert not any((tmp_path / "workers" / str(k) / "offsets.json").exists() for k in range(3))


def test_the_newest_copy_of_an_offset_wins(tmp_path: Path) -> None:
    c = ids(1)[0]
    save(tmp_path / "workers" / "0", {c: 10})
    old = time.time() - 60
    os.utime(tmp_path / "workers" / "0" / "offsets.json", (old, old))
    save(tmp_path / "workers" / "1", {c: 20})
    redistribute_offsets(tmp_path, 2)
    assert load(worker_dir(tmp_path, shard_of(c, 2), 2)) == {c: 20}


def test_nothing_saved_writes_nothing(tmp_path: Path) -> None:
    assert redistribute_offsets(tmp_path, 2) == 0
    assert not (tmp_path / "workers").exists()


def spool(d: Path) -> None:
    (d / "spool" / "segments").mkdir(parents=True)


def test_spools_no_worker_owns_are_found_until_drained(tmp_path: Path) -> None:
    spool(tmp_path)
    for k in range(3):
        spool(tmp_path / "workers" / str(k))
    assert orphan_spools(tmp_path, 3) == [tmp_path]
    assert orphan_spools(tmp_path, 2) == [tmp_path, tmp_path / "workers" / "2"]
    assert orphan_spools(tmp_path, 1) == [tmp_path / "workers" / str(k) for k in range(3)]
    (tmp_path / "workers" / "2" / DRAINED_MARK).touch()
    assert orphan_spools(tmp_path, 2) == [tmp_path]
    (tmp_path / "workers" / "1" / "spool" / "segments").rmdir()
    assert orphan_spools(tmp_path, 1) == [tmp_path / "workers" / "0"], "an empty spool folder needs no drain"


def test_a_worker_keeps_its_state_apart_and_serves_its_supervisor_only(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T", "secret")
    cfg = load_dict({"state": {"dir": str(tmp_path)}, "admin": {"address": "127.0.0.1:9999", "token_env": "T"}},
                    env={})
    w = worker_config(cfg, tmp_path / "workers" / "1", "/run/x/1.sock")
    assert w.state.path == tmp_path / "workers" / "1"
    assert w.admin.address == "unix:/run/x/1.sock"
    assert not w.admin.token_env
    assert worker_config(cfg, tmp_path, "").admin.address == ""


def test_workers_zero_means_one_per_core() -> None:
    cfg = load_dict({"pipeline": {"workers": 0}}, env={})
    assert 1 <= cfg.pipeline.resolved_workers() <= 8
    assert load_dict({"pipeline": {"workers": 3}}, env={}).pipeline.resolved_workers() == 3
    with pytest.raises(ConfigError) as e:
        load_dict({"pipeline": {"workers": -1}}, env={})
    assert e.value.key == "pipeline.workers"
