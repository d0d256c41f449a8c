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

from shipper.buffer.sizing import batch_bytes
from shipper.config import Config, DockerConfig, InputConfig, MultilineConfig, MultilineMode, StartAt
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta, Flag
from shipper.sources.base import SourceContext
from shipper.sources.jsonfile import JsonFileSource
from shipper.sources.jsonfile.inotify import _Inotify
from shipper.sources.jsonfile.rotation import MIN_ENTRY_BYTES, log_limits, open_chain, parse_size
from shipper.telemetry.metrics import Metrics

CID = "c" * 64
NAME = "web"


class DockerLog:
    """Writes `<id>-json.log` as dockerd does, and rotates it the same way (rename down, create new)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{CID}-json.log"
        self.n = 0
        self.files: list[list[bytes]] = [[]]  # what `dockerd` wrote, file by file (oldest first)

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

    def limits(self, max_file: int, max_size: str) -> None:
        """The container's log options, where dockerd keeps them (hostconfig.json beside the log)."""
        (self.path.parent / "hostconfig.json").write_bytes(orjson.dumps(
            {"LogConfig": {"Type": "json-file", "Config": {"max-file": str(max_file), "max-size": max_size}}}))

    def dockerd(self, max_file: int, max_size: int, *lines: str) -> None:
        """Write as dockerd does with max-size/max-file: before each entry, a live file that holds max-size
        bytes or more is rotated (so every rotated file holds max-size bytes or more, less than one entry
        more)."""
        for x in lines:
            if self.path.exists() and self.path.stat().st_size >= max_size:
                self.rotate(max_file)
                self.files.append([])
            e = self.entry(x + "\n")
            with open(self.path, "ab") as f:
                f.write(e)
            self.files[-1].append(e)

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

    def gaps(self, reason: str = "", metric: str = "shipper_log_gap_total") -> float:
        """Gaps: data lost. metric: shipper_log_gap_bytes_total / _lines_total for their size (exact, or the
        least the files prove), shipper_log_gap_possible_total for the losses the reader cannot tell."""
        if reason:
            return self.metrics.get(metric, container=NAME, reason=reason)
        return self.metrics.get(metric)

    def lost(self, reason: str = "") -> tuple[float, float]:
        """(bytes, lines) counted as lost."""
        return (self.gaps(reason, "shipper_log_gap_bytes_total"), self.gaps(reason, "shipper_log_gap_lines_total"))

    def possible(self, reason: str = "") -> float:
        return self.gaps(reason, "shipper_log_gap_possible_total")

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


async def test_batches_carry_what_their_events_hold(dlog: DockerLog) -> None:
    """The buffer takes a batch's size from the reader, which counted it as the events were built; a take
    split into several batches shares the count by events, the pieces adding up to it exactly."""
    dlog.write("plain", "wide 字 😀", '{"level": "info"}', *nums(0, 40))
    r = Reader(dlog, cfg=config(batch_max_events=16)).start()
    await r.has(43)
    await r.finish()
    assert [len(b) for b in r.batches] == [16, 16, 11]  # one chunk, one take, split
    events = [e for b in r.batches for e in b.events]
    assert sum(b.size for b in r.batches) == batch_bytes(Batch(r.batches[0].container, events))
    assert all(b.size > 0 for b in r.batches)
    dlog.path.unlink()
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    await r.finish()
    assert [b.size for b in r.batches] == [batch_bytes(b) for b in r.batches] and r.batches[0].size > 0


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
    # max-file rotations between two looks: on disk like max-file + 1 (a whole file lost), but inotify
    # counted two live files created and both were found: nothing lost, no gap, not even a possible one
    assert r.gaps() == 0
    assert r.possible() == 0


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
    # one file (inotify counted three created, two found); max-size unknown (no hostconfig.json): at
    # least one entry of the shortest kind
    assert r.lost("rotation_overrun") == (MIN_ENTRY_BYTES, 1)
    assert r.possible() == 0


async def test_a_burst_rotating_max_file_times_between_two_looks_is_no_gap(dlog: DockerLog) -> None:
    """dockerd fills and rotates max-file (3) files while the reader cannot look: the file it holds is
    deleted, the two after it are still there. The file system cannot tell this from one rotation more
    (which deletes a file unread); inotify's count of live files created can: nothing lost, no gap."""
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    i = 5
    while len(dlog.files) < 4:  # no await: three rotations between two looks
        dlog.dockerd(3, 1000, str(i))
        i += 1
    dlog.dockerd(3, 1000, *nums(i, i + 3))
    await r.has(i + 3)
    await r.settle()
    await r.finish()
    assert r.messages == nums(0, i + 3)
    assert not (dlog.path.parent / f"{dlog.path.name}.3").exists()  # the first file was deleted
    assert r.gaps() == 0
    assert r.possible() == 0


async def test_a_file_deleted_before_it_was_read_is_one_gap_of_its_size(dlog: DockerLog) -> None:
    """One rotation more than max-file between two looks: the second file was created and deleted unseen.
    One gap, with inotify's exact count of files (one) and what dockerd's rotation proves of its size: it
    was rotated at max-size bytes or more (less than one entry more), so lost_bytes>=max-size."""
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    i = 5
    while len(dlog.files) < 5:  # no await: four rotations between two looks
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i - len(dlog.files[1]))
    await r.settle()
    await r.finish()
    lost = [orjson.loads(e)["log"].strip() for e in dlog.files[1]]
    assert r.messages == [m for m in nums(0, i) if m not in lost]
    assert r.gaps() == r.gaps("rotation_overrun") == 1
    lost_bytes = sum(map(len, dlog.files[1]))
    assert 1000 <= lost_bytes < 1000 + max(map(len, dlog.files[1]))
    assert r.lost("rotation_overrun") == (1000, 1)  # at least: max-size, one entry
    assert r.possible() == 0


async def test_two_files_deleted_unread_are_counted_as_two(dlog: DockerLog) -> None:
    dlog.limits(2, "500")
    dlog.dockerd(2, 500, *nums(0, 3))
    r = Reader(dlog).start()
    await r.has(3)
    await r.settle()
    i = 3
    while len(dlog.files) < 5:  # four rotations, max-file 2: files 2 and 3 deleted unseen
        dlog.dockerd(2, 500, str(i))
        i += 1
    await r.has(i - len(dlog.files[1]) - len(dlog.files[2]))
    await r.settle()
    await r.finish()
    assert r.gaps("rotation_overrun") == 1
    assert r.lost("rotation_overrun") == (2 * 500, 2)


async def test_without_inotify_max_file_rotations_are_a_possible_gap(dlog: DockerLog,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Polling, nothing counts the files dockerd created: max-file rotations between two looks may or may
    not have deleted a file. Logged and counted as possible, never as data lost."""
    monkeypatch.setattr(_Inotify, "_unavailable", True)
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    i = 5
    while len(dlog.files) < 4:
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i)
    await r.finish()
    assert r.messages == nums(0, i)
    assert r.gaps() == 0
    assert r.possible("rotation_overrun") == 1


async def test_a_count_lost_to_an_inotify_overflow_is_a_possible_gap(dlog: DockerLog) -> None:
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    assert r.source._watch is not None and r.source._anchor is not None
    r.source._watch[0].overflows += 1  # what an IN_Q_OVERFLOW does: the counts before it are worthless
    i = 5
    while len(dlog.files) < 4:
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i)
    await r.settle()
    await r.finish()
    assert r.gaps() == 0
    assert r.possible("rotation_overrun") == 1


def _answer_short(r: Reader, calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify's count answers one creation short for `calls` calls (an event still on its way)."""
    assert r.source._watch is not None
    inst = r.source._watch[0]
    real = inst.creates
    left = [calls]

    def creates(wd: int, name: str) -> tuple[int, int]:
        o, c = real(wd, name)
        if left[0]:
            left[0] -= 1
            return o, c - 1
        return o, c

    monkeypatch.setattr(inst, "creates", creates)


async def test_a_count_short_of_the_files_found_is_waited_for(dlog: DockerLog,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    _answer_short(r, 6, monkeypatch)  # three quiet looks
    i = 5
    while len(dlog.files) < 4:
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i)
    await r.settle()
    await r.finish()
    assert r.gaps() == 0
    assert r.possible() == 0


async def test_a_count_that_does_not_add_up_is_a_possible_gap(dlog: DockerLog,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shipper.sources.jsonfile.follow._COUNT_WAIT", 0.05)
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    _answer_short(r, 10**9, monkeypatch)
    i = 5
    while len(dlog.files) < 4:
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i)
    await r.settle()
    dlog.dockerd(3, 1000, "more")  # a write wakes the reader: another quiet look, past the wait
    await r.has(i + 1)
    await r.settle()
    await r.finish()
    assert r.gaps() == 0
    assert r.possible("rotation_overrun") == 1


async def test_gap_lines_say_exact_or_at_least(dlog: DockerLog, caplog: pytest.LogCaptureFixture) -> None:
    dlog.limits(3, "1k")
    dlog.dockerd(3, 1000, *nums(0, 5))
    r = Reader(dlog).start()
    await r.has(5)
    await r.settle()
    i = 5
    while len(dlog.files) < 5:
        dlog.dockerd(3, 1000, str(i))
        i += 1
    await r.has(i - len(dlog.files[1]))
    await r.settle()
    await r.finish()
    lines = [x.getMessage() for x in caplog.records if "lost before it was read" in x.getMessage()]
    assert len(lines) == 1
    assert "reason=rotation_overrun lost_bytes>=1000 lost_lines>=1" in lines[0]
    first_lost = orjson.loads(dlog.files[1][0])["time"]
    before, after = orjson.loads(dlog.files[0][-1])["time"], orjson.loads(dlog.files[2][0])["time"]
    assert f"since={before} until={after}" in lines[0] and before < first_lost < after


async def test_a_truncation_not_dockerds_is_a_possible_gap_and_reading_restarts_at_zero(dlog: DockerLog) -> None:
    """Something else cut the file (max-file is not 1, so dockerd never truncates): what was past the
    reader cannot be known. A possible gap, not data lost."""
    dlog.write(*nums(0, 20))
    r = Reader(dlog).start()
    await r.has(20)
    with open(dlog.path, "r+b") as f:
        f.truncate(0)
    dlog.write("after")
    await r.has(21)
    await r.finish()
    assert r.messages == [*nums(0, 20), "after"]
    assert r.gaps() == 0
    assert r.possible("truncated") == 1
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


@pytest.mark.parametrize("chunk", [256 * 1024, 2 * 1024 * 1024])  # the fast loop; the careful one (long line)
async def test_fields_that_are_not_strings_are_counted_never_shipped(dlog: DockerLog, chunk: int) -> None:
    """`log`, `stream` or `time` of another JSON type: counted as wrong_type, never an event (an int time or
    stream would be the event's, a falsy log an empty entry dropped uncounted); a NUL-padded one too."""
    t = '"time":"2024-05-01T12:00:00.000000001Z"'
    bad = [f'{{"log":"x\\n","stream":"stdout","time":{v}}}' for v in ("5", "1.5", "true", "null", "[]", "{}")]
    bad += [f'{{"log":"x\\n","stream":{v},{t}}}' for v in ("5", "false", "null", '["stdout"]', "{}")]
    bad += [f'{{"log":{v},"stream":"stdout",{t}}}' for v in ("0", "7", "false", "true", "null", "[]",
                                                            '["x\\n"]', "{}", '{"-1":"\\n"}')]
    lines = [x.encode() + b"\n" for x in bad]
    long = dlog.entry("q" * (1024 * 1024))
    dlog.write("0", raw=b"".join(lines) + b"\x00" * 8 + lines[0] + long + dlog.entry("1\n"))
    r = Reader(dlog, cfg=config(read_chunk_bytes=chunk)).start()
    await r.has(2)
    await r.settle()
    await r.finish()
    assert r.messages == ["0", "1"]
    assert {e.stream for b in r.batches for e in b.events} == {"stdout"}
    assert r.invalid("wrong_type") == len(bad) + 1
    assert r.invalid("nul_bytes") == r.invalid("line_too_long") == 1
    assert r.metrics.get("shipper_lines_invalid_total") == len(bad) + 3


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


async def test_a_checkpoint_whose_file_is_gone_is_a_gap_of_at_least_its_unread_rest(dlog: DockerLog) -> None:
    """dockerd deleted the file only after it reached max-size: from the checkpoint to max-size at least
    was never read (files deleted whole after it cannot be seen: at least)."""
    dlog.limits(2, "1k")
    dlog.write(*nums(0, 5))
    at = len(dlog.entry("0\n")) * 2
    gone = Checkpoint(CID, at, dlog.file_id())
    dlog.rotate(max_file=1)  # that file was deleted
    dlog.write(*nums(5, 10))
    r = Reader(dlog, resume=gone).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(5, 10)
    assert r.gaps() == r.gaps("rotated_before_read") == 1
    assert r.lost("rotated_before_read") == (1000 - at, 1)


async def test_a_checkpoint_at_max_size_whose_file_is_gone_is_a_possible_gap(dlog: DockerLog) -> None:
    """The checkpoint's file was read to max-size, so to its end: whether files were deleted whole after it
    cannot be told."""
    dlog.limits(2, "100")
    dlog.write(*nums(0, 5))
    gone = Checkpoint(CID, dlog.path.stat().st_size, dlog.file_id())
    dlog.rotate(max_file=1)
    dlog.write(*nums(5, 10))
    r = Reader(dlog, resume=gone).start()
    await r.has(5)
    await r.finish()
    assert r.gaps() == 0
    assert r.possible("rotated_before_read") == 1


async def test_a_checkpoint_whose_file_dockerd_compressed_is_its_exact_rest(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    at = sum(len(dlog.entry(f"{i}\n")) for i in range(4))
    cp = Checkpoint(CID, at, dlog.file_id())
    rest = dlog.path.read_bytes()[at:]
    dlog.rotate(max_file=3, compress=True)
    dlog.write(*nums(10, 20))
    r = Reader(dlog, resume=cp).start()
    await r.has(10)
    await r.finish()
    assert r.messages == nums(10, 20)
    assert r.gaps() == r.gaps("compressed_before_read") == 1
    assert r.lost("compressed_before_read") == (len(rest), 6)  # lines 4..9, measured


async def test_a_checkpoint_past_the_end_of_its_file_is_a_possible_truncation_gap(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 5))
    cp = Checkpoint(CID, dlog.path.stat().st_size + 1000, dlog.file_id())
    r = Reader(dlog, resume=cp).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(0, 5)
    assert r.gaps() == 0
    assert r.possible("truncated") == 1


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
    assert r.possible("rotated_before_read") == 1  # gone; whether any of it was unread: max-size unknown


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
    """With max-file=1 dockerd (20.10) truncates the live file once it holds max-size bytes, and writes on;
    by the next look it may be longer than where the reader was. The changed first line gives it away. The
    reader had read past max-size, so all dockerd wrote before truncating: no gap."""
    dlog.limits(1, "100")
    dlog.write(*nums(0, 3))
    r = Reader(dlog).start()
    await r.has(3)
    await r.settle()
    assert dlog.path.stat().st_size >= 100
    with open(dlog.path, "r+b") as f:
        f.truncate(0)
    dlog.write(*nums(10, 20))  # no await in between: the reader never saw the file shorter
    await r.has(13)
    await r.finish()
    assert r.messages == nums(0, 3) + nums(10, 20)
    assert r.gaps() == 0
    assert r.possible() == 0


async def test_max_file_1_truncation_before_the_reader_got_to_max_size(dlog: DockerLog) -> None:
    """dockerd wrote on to max-size and truncated between two reads: at least max-size minus what was read
    is lost."""
    dlog.limits(1, "1k")
    dlog.write(*nums(0, 3))
    r = Reader(dlog).start()
    await r.has(3)
    await r.settle()
    read = dlog.path.stat().st_size
    while dlog.path.stat().st_size < 1000:  # no await: unread
        dlog.write("unread")
    with open(dlog.path, "r+b") as f:
        f.truncate(0)
    dlog.write(*nums(10, 20))
    await r.has(13)
    await r.finish()
    assert r.messages == nums(0, 3) + nums(10, 20)
    assert r.gaps("truncated") == 1
    assert r.lost("truncated") == (1000 - read, 1)


def _full_rotation(dlog: DockerLog) -> None:
    (dlog.path.parent / "hostconfig.json").write_bytes(orjson.dumps(
        {"LogConfig": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "64k"}}}))
    dlog.write(*nums(0, 5))
    dlog.rotate(max_file=3)
    dlog.write(*nums(5, 10))
    dlog.rotate(max_file=3)
    dlog.write(*nums(10, 15))


async def test_a_new_container_found_with_all_its_files_may_have_lost_the_oldest(dlog: DockerLog) -> None:
    """Whether the oldest file is the container's first cannot be told (dockerd writes whole files before
    it sets StartedAt, so neither the first entry's time nor anything else tells): a possible gap."""
    _full_rotation(dlog)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    r = Reader(dlog, started_at=now).start()
    await r.has(15)
    await r.finish()
    assert r.messages == nums(0, 15)
    assert r.gaps() == 0
    assert r.possible("rotated_before_start") == 1


async def test_a_container_older_than_shipper_is_not_blamed_for_its_old_rotations(dlog: DockerLog) -> None:
    _full_rotation(dlog)
    r = Reader(dlog, started_at="2020-01-01T00:00:00.000000000Z").start()
    await r.has(15)
    await r.finish()
    assert r.messages == nums(0, 15)
    assert r.gaps() == 0
    assert r.possible() == 0


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


async def test_compress_true_files_gzipped_unseen_are_a_gap_of_their_exact_size(
        dlog: DockerLog, caplog: pytest.LogCaptureFixture) -> None:
    """A file never read but still there, compressed: measured, so the gap is exact (bytes and lines), and
    its time window is the first and last lost entry's."""
    dlog.write(*nums(0, 10))
    r = Reader(dlog).start()
    await r.has(10)
    dlog.rotate(max_file=5, compress=True)
    dlog.write(*nums(10, 20))  # rotated and compressed before the reader looks: not read
    unread = dlog.path.read_bytes()
    dlog.rotate(max_file=5, compress=True)
    dlog.write(*nums(20, 30))
    await r.has(20)
    await r.settle()
    await r.finish()
    assert r.messages == nums(0, 10) + nums(20, 30)
    assert r.gaps() == r.gaps("compressed_before_read") == 1
    assert r.lost("compressed_before_read") == (len(unread), 10)
    assert r.possible() == 0  # and none was deleted: inotify's count agrees
    first, last = (orjson.loads(x)["time"] for x in unread.splitlines()[::9])
    assert [x.getMessage() for x in caplog.records if "lost before it was read" in x.getMessage()] == [
        f"log data lost before it was read container={NAME} reason=compressed_before_read lost_bytes={len(unread)} "
        f"lost_lines=10 since={first} until={last}"]


async def test_compressed_files_of_a_new_container_are_measured(dlog: DockerLog) -> None:
    dlog.write(*nums(0, 10))
    dlog.rotate(max_file=5, compress=True)
    dlog.write(*nums(10, 15))
    first = (dlog.path.parent / f"{dlog.path.name}.1.gz")
    size = len(gzip.decompress(first.read_bytes()))
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    r = Reader(dlog, started_at=now).start()
    await r.has(5)
    await r.finish()
    assert r.messages == nums(10, 15)
    assert r.lost("compressed_before_read") == (size, 10)


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


def test_a_listing_during_a_rotation_finds_the_file_past_the_hole(dlog: DockerLog) -> None:
    """dockerd renames `.1` -> `.2` before live -> `.1`: a listing in between sees no `.1`. The files past
    the hole are found (they would otherwise be missed, and deleted unread by the next rotations)."""
    dlog.write("a")
    dlog.rotate()
    dlog.write("b")
    dlog.rotate()
    dlog.write("c")
    Path(f"{dlog.path}.1").rename(f"{dlog.path}.hidden")  # a hole at `.1`
    chain = open_chain(str(dlog.path))
    try:
        assert len(chain) == 2  # `.2` and the live file
    finally:
        for f in chain:
            os.close(f.fd)


def test_max_size_is_read_as_dockerd_reads_it(dlog: DockerLog) -> None:
    assert [parse_size(x) for x in ("64k", "10m", "1g", "100", "1.5m", "64kb", "", "x")] == [
        64_000, 10_000_000, 1_000_000_000, 100, 1_500_000, 64_000, 0, 0]
    assert log_limits(str(dlog.path)) == (0, 0)  # no hostconfig.json
    dlog.limits(3, "64k")
    assert log_limits(str(dlog.path)) == (3, 64_000)


async def test_a_container_removed_before_its_log_was_opened_is_counted(dlog: DockerLog) -> None:
    """`--rm` deletes the log as the container exits: when the start event is handled after that (a busy host),
    the reader finds no file. Whatever it logged is gone: counted and said, never silently."""
    r = Reader(dlog).start()  # dlog's folder holds no log: the container went with it
    await r.finish()
    assert r.messages == []
    assert r.metrics.get("shipper_containers_unreadable_total", reason="gone_before_read") == 1
