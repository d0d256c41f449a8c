"""The json-file reader on files written here in dockerd's format, rotated and damaged the way dockerd and
crashes do it. File operations that must happen "between two looks" of the reader run without an await,
so the reader (a task on the same event loop) cannot look in between."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shipper.config import Config, DockerConfig, InputConfig, MultilineConfig, MultilineMode, StartAt
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta, Flag
from shipper.sources.base import SourceContext
from shipper.sources.jsonfile import JsonFileSource
from shipper.sources.jsonfile.inotify import _Inotify
from shipper.telemetry.metrics import Metrics

CID = "c" * 64
NAME = "web"


class DockerLog:
    """Writes `<id>-json.log` as dockerd does, and rotates it the same way (rename down, create new)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{CID}-json.log"
        self.n = 0

    def entry(self, text: str, stream: str = "stdout") -> bytes:
        self.n += 1
        t = f"2024-05-01T12:00:{self.n // 1_000_000:02d}.{self.n % 1_000_000:06d}001Z"
        return orjson.dumps({"log": text, "stream": stream, "time": t}) + b"\n"

    def write(self, *lines: str, raw: bytes = b"") -> None:
        with open(self.path, "ab") as f:
            f.write(b"".join(self.entry(x + "\n") for x in lines) + raw)

    def rotate(self, max_file: int = 0, compress: bool = False) -> None:
        """dockerd's rotation: the oldest past max-file deleted, .N-1 -> .N, ..., live -> .1; with
        compress=true the rotated files are `.N.gz` and `.1` is gzipped right after the rotation."""
        ext = ".gz" if compress else ""

        def index(p: Path) -> int:
            return int(p.name[len(self.path.name) + 1:].removesuffix(".gz"))

        for p in sorted(self.path.parent.glob(f"{self.path.name}.*{ext}"), key=index, reverse=True):
            i = index(p)
            if max_file and i + 1 >= max_file:
                p.unlink()
            else:
                p.rename(f"{self.path}.{i + 1}{ext}")
        if max_file == 1:
            self.path.unlink()
        else:
            self.path.rename(f"{self.path}.1")
            if compress:
                one = Path(f"{self.path}.1")
                with gzip.open(f"{one}.gz", "wb") as g:
                    g.write(one.read_bytes())
                one.unlink()
        self.path.touch()

    def file_id(self, p: Path | None = None) -> str:
        """dev:ino and the CRC-32 of the first line (inodes are reused right away by rotation)."""
        p = p or self.path
        st = os.stat(p)
        first = p.read_bytes().split(b"\n", 1)[0] + b"\n"
        return f"{st.st_dev}:{st.st_ino}:{zlib.crc32(first):08x}"


def config(**inp: int) -> Config:
    return Config(docker=DockerConfig(poll_interval_secs=0.02),
                  multiline=MultilineConfig(mode=MultilineMode.OFF), input=InputConfig(**inp))


class Reader:
    def __init__(self, log: DockerLog, resume: Checkpoint | None = None, cfg: Config | None = None,
                 started_at: str = "") -> None:
        self.batches: list[Batch] = []
        self.metrics = Metrics()

        async def emit(b: Batch) -> None:
            self.batches.append(b)

        info = ContainerInfo(ContainerMeta(CID, NAME), log_path=str(log.path), started_at=started_at)
        self.source = JsonFileSource(info, SourceContext(cfg or config(), self.metrics, emit), resume)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.create_task(self.source.run())
        return self

    @property
    def messages(self) -> list[str]:
        return [e.message for b in self.batches for e in b.events]

    @property
    def checkpoint(self) -> Checkpoint | None:
        cps = [b.checkpoint for b in self.batches if b.checkpoint is not None]
        return cps[-1] if cps else None

    def invalid(self, reason: str) -> float:
        return self.metrics.get("shipper_lines_invalid_total", container=NAME, reason=reason)

    def gaps(self, reason: str = "") -> float:
        if reason:
            return self.metrics.get("shipper_log_gap_total", container=NAME, reason=reason)
        return self.metrics.get("shipper_log_gap_total")

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError(f"reader ended early; read {self.messages[-5:]}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out; read {len(self.messages)}: {self.messages[-5:]}")
            await asyncio.sleep(0.01)

    async def has(self, n: int) -> None:
        await self.until(lambda: len(self.messages) >= n)

    async def settle(self) -> None:
        """Give the reader a few polls to show it would not read anything more."""
        await asyncio.sleep(0.15)

    async def finish(self) -> None:
        """removed(): read what is left, flush, return."""
        self.source.removed()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


def nums(a: int, b: int) -> list[str]:
    return [str(i) for i in range(a, b)]


@pytest.fixture
def dlog(tmp_path: Path) -> DockerLog:
    return DockerLog(tmp_path)


async def test_reads_from_the_beginning_and_checkpoints_the_offset(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 100))
    r = Reader(dlog).start()
    await r.has(100)
    assert r.messages == nums(0, 100)
    assert r.checkpoint == Checkpoint(CID, dlog.path.stat().st_size, dlog.file_id())
    dlog.write(*nums(100, 110))
    await r.has(110)
    await r.finish()
    assert r.messages == nums(0, 110)
    assert r.metrics.get("shipper_entries_read_total") == 110
    assert r.metrics.get("shipper_bytes_read_total") == dlog.path.stat().st_size


async def test_start_at_end_skips_what_is_there(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    r = Reader(dlog, cfg=Config(docker=DockerConfig(poll_interval_secs=0.02, start_at=StartAt.END),
                                multiline=MultilineConfig(mode=MultilineMode.OFF))).start()
    await r.settle()
    dlog.write("new")
    await r.has(1)
    await r.finish()
    assert r.messages == ["new"]


async def test_an_unfinished_last_line_waits_for_its_newline(dlog: DockerLog) -> None:
    whole = dlog.entry("second\n")
    dlog.write("first", raw=whole[:20])
    r = Reader(dlog).start()
    await r.has(1)
    await r.settle()
    assert r.messages == ["first"]
    assert r.checkpoint.position == len(dlog.entry("first\n"))  # type: ignore[union-attr]
    with open(dlog.path, "ab") as f:
        f.write(whole[20:])
    await r.has(2)
    await r.finish()
    assert r.messages == ["first", "second"]
    assert r.invalid("invalid_json") == 0


async def test_rotation_while_reading(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 50))
    r = Reader(dlog).start()
    await r.has(50)
    dlog.write(*nums(50, 60))  # written to the old file just before the rename: must not be lost
    dlog.rotate()
    dlog.write(*nums(60, 100))
    await r.has(100)
    await r.finish()
    assert r.messages == nums(0, 100)
    assert r.checkpoint.file_id == dlog.file_id()  # type: ignore[union-attr]
    assert r.gaps() == 0


async def test_two_rotations_between_two_looks(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    # no await from here on: the reader cannot look while dockerd rotates twice
    dlog.write(*nums(10, 15))
    dlog.rotate(max_file=3)
    dlog.write(*nums(15, 20))  # this file is `.1` by the time the reader looks
    dlog.rotate(max_file=3)
    dlog.write(*nums(20, 25))
    await r.has(25)
    await r.finish()
    assert r.messages == nums(0, 25)
    assert r.gaps() == 0


async def test_the_open_file_is_read_to_its_end_after_dockerd_deleted_it(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    dlog.write(*nums(10, 20))
    dlog.rotate(max_file=2)
    dlog.write(*nums(20, 30))
    dlog.rotate(max_file=2)  # the file being read is deleted now: its descriptor keeps it readable
    dlog.write(*nums(30, 40))
    await r.has(40)
    await r.finish()
    assert r.messages == nums(0, 40)
    # max-file rotations between two looks look the same on disk as max-file + 1, which loses a whole
    # file: reported as a possible gap (see the next test), never kept quiet
    assert r.gaps("rotation_overrun") == 1


async def test_a_file_rotated_away_unseen_is_a_gap(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    dlog.rotate(max_file=2)
    dlog.write(*nums(10, 20))  # lives and dies between two looks
    dlog.rotate(max_file=2)
    dlog.write(*nums(20, 30))
    dlog.rotate(max_file=2)
    dlog.write(*nums(30, 40))
    await r.has(30)
    await r.finish()
    assert r.messages == nums(0, 10) + nums(20, 40)
    assert r.gaps("rotation_overrun") == 1


async def test_truncation_is_a_gap_and_reading_restarts_at_zero(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 20))
    r = Reader(dlog).start()
    await r.has(20)
    with open(dlog.path, "r+b") as f:
        f.truncate(0)
    dlog.write("after")
    await r.has(21)
    await r.finish()
    assert r.messages == [*nums(0, 20), "after"]
    assert r.gaps("truncated") == 1
    assert r.checkpoint == Checkpoint(CID, dlog.path.stat().st_size, dlog.file_id())


async def test_broken_lines_are_counted_and_skipped(dlog: DockerLog) -> None:
    good = dlog.entry("ok\n")
    lines = [
        dlog.entry("0\n"),
        good[:25] + b"\n",  # truncated JSON
        dlog.entry("1\n"),
        b'{"log":"\xff\xfe\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n',  # invalid UTF-8
        dlog.entry("2\n"),
        b'{"log":"a\x00b\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n',  # NUL inside
        dlog.entry("3\n"),
        b'{"log":"' + b"z" * (1024 * 1024) + b'\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n',
        dlog.entry("4\n"),
        b'{"log":"no stream\\n","time":"2024-05-01T12:00:00Z"}\n',
        b'["log", "stream", "time"]\n',
        b'{"log":5,"stream":"stdout","time":"2024-05-01T12:00:00Z"}\n',
        b"\n",
        dlog.entry("5\n"),
    ]
    dlog.write(raw=b"".join(lines))
    r = Reader(dlog).start()
    await r.has(6)
    await r.settle()
    await r.finish()
    assert r.messages == nums(0, 6)
    for reason in ("invalid_json", "invalid_utf8", "nul_bytes", "line_too_long", "missing_field",
                   "not_an_object", "wrong_type", "empty_line"):
        assert r.invalid(reason) == 1, reason
    assert r.metrics.get("shipper_lines_invalid_total") == 8


async def test_nul_padding_left_by_a_crash_is_counted_and_the_entry_after_it_kept(dlog: DockerLog) -> None:
    dlog.write("before", raw=b"\x00" * 4096 + dlog.entry("after\n"))
    r = Reader(dlog).start()
    await r.has(2)
    await r.finish()
    assert r.messages == ["before", "after"]
    assert r.invalid("nul_bytes") == 1


async def test_a_long_line_across_many_chunks_is_skipped_without_holding_it(dlog: DockerLog) -> None:
    huge = b'{"log":"' + b"q" * (3 * 1024 * 1024) + b'\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n'
    dlog.write("a", raw=huge)
    dlog.write("b")
    r = Reader(dlog, cfg=config(read_chunk_bytes=64 * 1024)).start()
    await r.has(2)
    await r.finish()
    assert r.messages == ["a", "b"]
    assert r.invalid("line_too_long") == 1
    assert len(r.source._tail) == 0


async def test_resume_from_a_checkpoint_loses_and_repeats_nothing(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 30))
    r1 = Reader(dlog).start()
    await r1.has(30)
    await r1.source.close()
    r1.task.cancel()  # type: ignore[union-attr]
    cp = r1.checkpoint
    dlog.write(*nums(30, 40))
    dlog.rotate()  # the checkpoint's file is `.1` now
    dlog.write(*nums(40, 50))
    r2 = Reader(dlog, resume=cp).start()
    await r2.has(20)
    await r2.settle()
    await r2.finish()
    assert r2.messages == nums(30, 50)
    assert r2.gaps() == 0


async def test_resume_re_reads_an_event_left_open(dlog: DockerLog) -> None:
    """A 16 KiB partial entry open at shutdown is behind the checkpoint: the restart rebuilds it whole."""
    dlog.write("done")
    part = dlog.entry("first half ")  # no newline: a partial entry
    with open(dlog.path, "ab") as f:
        f.write(part)
    r1 = Reader(dlog).start()
    await r1.has(1)
    await r1.settle()
    r1.task.cancel()  # type: ignore[union-attr]
    await r1.source.close()
    cp = r1.checkpoint
    assert cp is not None and cp.position == len(dlog.entry("done\n"))  # the partial's first byte
    dlog.write("second half")
    r2 = Reader(dlog, resume=cp).start()
    await r2.has(1)
    await r2.finish()
    assert r2.messages == ["first half second half"]
    assert r2.batches[0].events[0].flags & Flag.PARTIAL


async def test_a_checkpoint_whose_file_is_gone_is_a_gap(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 5))
    gone = Checkpoint(CID, 100, dlog.file_id())
    dlog.rotate(max_file=1)  # that file was deleted
    dlog.write(*nums(5, 10))
    r = Reader(dlog, resume=gone).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(5, 10)
    assert r.gaps("rotated_before_read") == 1


async def test_a_checkpoint_past_the_end_of_its_file_is_a_truncation_gap(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 5))
    cp = Checkpoint(CID, dlog.path.stat().st_size + 1000, dlog.file_id())
    r = Reader(dlog, resume=cp).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(0, 5)
    assert r.gaps("truncated") == 1


async def test_stopped_flushes_then_keeps_watching(dlog: DockerLog) -> None:
    dlog.write("a")
    with open(dlog.path, "ab") as f:
        f.write(dlog.entry("exit without newline"))
    r = Reader(dlog).start()
    await r.has(1)
    r.source.stopped()
    await r.has(2)
    ev = r.batches[-1].events[-1]
    assert ev.message == "exit without newline" and ev.flags & Flag.INCOMPLETE
    dlog.write("restarted")  # the same container started again
    await r.has(3)
    await r.finish()
    assert r.messages == ["a", "exit without newline", "restarted"]


async def test_removed_reads_what_is_left_of_an_unlinked_file(dlog: DockerLog) -> None:
    dlog.write("a")
    r = Reader(dlog).start()
    await r.has(1)
    dlog.write(*nums(0, 100))
    dlog.path.unlink()  # `docker rm` deletes the folder; the open descriptor still reads
    await r.finish()
    assert r.messages == ["a", *nums(0, 100)]


async def test_batches_respect_batch_max_events(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 1000))
    r = Reader(dlog, cfg=config(batch_max_events=64)).start()
    await r.has(1000)
    await r.finish()
    assert r.messages == nums(0, 1000)
    assert max(len(b) for b in r.batches) <= 64
    assert r.batches[-1].checkpoint is not None


async def test_container_without_a_log_file_yet(dlog: DockerLog) -> None:
    r = Reader(dlog).start()
    await r.settle()
    dlog.write("late")
    await r.has(1)
    await r.finish()
    assert r.messages == ["late"]


async def test_removed_before_the_log_existed_returns(dlog: DockerLog) -> None:
    r = Reader(dlog).start()
    await r.settle()
    await r.finish()
    assert r.messages == []


async def test_a_stderr_partial_across_a_rotation(dlog: DockerLog) -> None:
    """The checkpoint of an event open across a rotation names the older file."""
    dlog.write("x")
    with open(dlog.path, "ab") as f:
        f.write(dlog.entry("part one ", stream="stderr"))
    old_id = dlog.file_id()
    r = Reader(dlog).start()
    await r.has(1)
    dlog.rotate()
    dlog.write("y")
    await r.has(2)
    cp = r.checkpoint
    assert cp is not None and (cp.position, cp.file_id) == (len(dlog.entry("x\n")), old_id)
    assert cp.streams is not None and cp.streams["stderr"] == [old_id, cp.position]
    assert cp.streams["stdout"][0] == dlog.file_id()  # stdout shipped "y" from the new file
    with open(dlog.path, "ab") as f:
        f.write(dlog.entry("part two\n", stream="stderr"))
    await r.has(3)
    await r.finish()
    assert r.messages == ["x", "y", "part one part two"]
    assert r.checkpoint.file_id == dlog.file_id()  # type: ignore[union-attr]


async def test_a_reused_inode_is_not_mistaken_for_the_checkpoint_file(dlog: DockerLog) -> None:
    """dockerd deletes the oldest file and creates the live one at once: the new file often gets the freed
    inode. A checkpoint naming that inode but another first line is the deleted file: a gap."""
    dlog.write(*nums(0, 5))
    old_first_line = dlog.file_id().rsplit(":", 1)[1]
    dlog.rotate(max_file=1)
    dlog.write(*nums(5, 10))
    st = dlog.path.stat()
    reused = Checkpoint(CID, len(dlog.entry("5\n")), f"{st.st_dev}:{st.st_ino}:{old_first_line}")
    r = Reader(dlog, resume=reused).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(5, 10)
    assert r.gaps("rotated_before_read") == 1


async def test_inotify_wakes_an_idle_reader_long_before_its_poll(dlog: DockerLog) -> None:
    dlog.write("a")
    r = Reader(dlog, cfg=Config(docker=DockerConfig(poll_interval_secs=30),
                                multiline=MultilineConfig(mode=MultilineMode.OFF))).start()
    await r.has(1)
    await asyncio.sleep(1.5)  # the reader's idle waits have grown past 1 s now (up to 30 s)
    assert r.source._watch is not None
    t = time.monotonic()
    dlog.write("b")
    await r.has(2)
    assert time.monotonic() - t < 0.5
    await asyncio.sleep(1.5)
    t = time.monotonic()
    dlog.rotate()
    dlog.write("c")
    await r.has(3)
    assert time.monotonic() - t < 0.5
    await r.finish()


async def test_without_inotify_the_reader_polls(dlog: DockerLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify switched off as on a system without it: rotation is still followed by polling."""
    monkeypatch.setattr(_Inotify, "_unavailable", True)
    dlog.write("a")
    r = Reader(dlog).start()
    await r.has(1)
    dlog.rotate()
    dlog.write("b")
    await r.has(2)
    await r.finish()
    assert r.source._watch is None
    assert r.messages == ["a", "b"]


async def test_max_file_1_truncates_in_place_and_refills_past_the_reader(dlog: DockerLog) -> None:
    """With max-file=1 dockerd truncates the live file and writes on; by the next look it may be longer
    than where the reader was. The changed first line gives it away."""
    dlog.write(*nums(0, 3))
    r = Reader(dlog).start()
    await r.has(3)
    await r.settle()
    with open(dlog.path, "r+b") as f:
        f.truncate(0)
    dlog.write(*nums(10, 20))  # no await in between: the reader never saw the file shorter
    await r.has(13)
    await r.finish()
    assert r.messages == nums(0, 3) + nums(10, 20)
    assert r.gaps("truncated") == 1


def _full_rotation(dlog: DockerLog) -> None:
    (dlog.path.parent / "hostconfig.json").write_bytes(orjson.dumps(
        {"LogConfig": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "64k"}}}))
    dlog.write(*nums(0, 5))
    dlog.rotate(max_file=3)
    dlog.write(*nums(5, 10))
    dlog.rotate(max_file=3)
    dlog.write(*nums(10, 15))


async def test_a_new_container_found_with_all_its_files_may_have_lost_the_oldest(dlog: DockerLog) -> None:
    _full_rotation(dlog)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    r = Reader(dlog, started_at=now).start()
    await r.has(15)
    await r.finish()
    assert r.messages == nums(0, 15)
    assert r.gaps("rotated_before_start") == 1


async def test_a_container_older_than_shipper_is_not_blamed_for_its_old_rotations(dlog: DockerLog) -> None:
    _full_rotation(dlog)
    r = Reader(dlog, started_at="2020-01-01T00:00:00.000000000Z").start()
    await r.has(15)
    await r.finish()
    assert r.messages == nums(0, 15)
    assert r.gaps() == 0


async def test_fewer_files_than_max_file_means_nothing_was_deleted(dlog: DockerLog) -> None:
    _full_rotation(dlog)
    (dlog.path.parent / f"{dlog.path.name}.2").unlink()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    r = Reader(dlog, started_at=now).start()
    await r.has(10)
    await r.finish()
    assert r.messages == nums(5, 15)
    assert r.gaps() == 0


async def test_compress_true_rotation_seen_in_time_loses_nothing(dlog: DockerLog) -> None:
    """The open file is gzipped and deleted after one rotation: found in `.1.gz`, not a gap."""
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    dlog.write(*nums(10, 20))
    dlog.rotate(max_file=3, compress=True)
    dlog.write(*nums(20, 30))
    await r.has(30)
    await r.finish()
    assert r.messages == nums(0, 30)
    assert r.gaps() == 0


async def test_compress_true_files_gzipped_unseen_are_a_gap(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    dlog.rotate(max_file=5, compress=True)
    dlog.write(*nums(10, 20))  # rotated and compressed before the reader looks: not read
    dlog.rotate(max_file=5, compress=True)
    dlog.write(*nums(20, 30))
    await r.has(20)
    await r.finish()
    assert r.messages == nums(0, 10) + nums(20, 30)
    assert r.gaps("compressed_before_read") == 1


async def test_a_crash_with_one_stream_open_repeats_nothing_of_the_other(dlog: DockerLog) -> None:
    """stdout holds a half-written line while stderr ships past it: the checkpoint stays before the stdout
    partial, and per-stream positions let the restart skip what stderr had shipped."""
    with open(dlog.path, "ab") as f:
        f.write(dlog.entry("first half "))  # a partial: no newline yet
        f.write(dlog.entry("e1\n", "stderr") + dlog.entry("e2\n", "stderr"))
    r1 = Reader(dlog).start()
    await r1.has(2)
    await r1.settle()
    r1.task.cancel()  # type: ignore[union-attr]  # a crash: no close(), nothing more emitted
    cp = r1.checkpoint
    assert cp is not None and cp.position == 0 and cp.streams is not None
    assert r1.messages == ["e1", "e2"]
    with open(dlog.path, "ab") as f:
        f.write(dlog.entry("second half\n") + dlog.entry("e3\n", "stderr"))
    r2 = Reader(dlog, resume=cp).start()
    await r2.has(2)
    await r2.settle()
    await r2.finish()
    assert sorted(r2.messages) == ["e3", "first half second half"]


async def test_per_stream_positions_survive_the_offsets_file(dlog: DockerLog, tmp_path: Path) -> None:
    from shipper.sources.offsets import OffsetStore

    store = OffsetStore(tmp_path / "state")
    cp = Checkpoint(CID, 10, "1:2:abcd", {"stdout": ["1:2:abcd", 10], "stderr": ["1:2:abcd", 90]})
    store.commit(cp)
    assert store.flush()
    again = OffsetStore(tmp_path / "state")
    again.load()
    assert again.get(CID) == cp
