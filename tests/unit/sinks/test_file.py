from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import orjson
import pytest

from shipper.config import load_dict
from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch, ContainerMeta, Event
from shipper.sinks import file as file_sink
from shipper.sinks.base import SinkContext
from shipper.sinks.file import FileSink
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics

META = ContainerMeta(id="c" * 64, name="web", image="img:1", host="h")


async def test_writes_one_ecs_event_a_line_and_rotates(tmp_path: Path) -> None:
    cfg = load_dict({"sinks": {"f": {"type": "file", "path": str(tmp_path / "out.jsonl"), "max_bytes": 2000,
                                     "max_files": 2}}}, env={}).sinks["f"]
    sink = FileSink(cfg, SinkContext("f", tmp_path, "h", Metrics()))  # type: ignore[arg-type]
    await sink.start()
    for i in range(30):
        await sink.send(sink.encode([Batch(META, [Event("2026-11-26T00:00:00Z", f"line {i} é")])]))
    await sink.close()
    files = [tmp_path / "out.jsonl.2", tmp_path / "out.jsonl.1", tmp_path / "out.jsonl"]
    assert all(f.exists() for f in files)
    assert not (tmp_path / "out.jsonl.3").exists()
    assert all(f.stat().st_size <= 2000 for f in files)
    lines = [orjson.loads(x) for f in files for x in f.read_bytes().splitlines()]
    got = [d["message"] for d in lines]
    assert got == [f"line {i} é" for i in range(30 - len(got), 30)]
    assert lines[0]["container"]["name"] == "web"


async def test_default_path_is_in_state_dir(tmp_path: Path) -> None:
    cfg = load_dict({}, env={}).sinks["file"]
    sink = FileSink(cfg, SinkContext("file", tmp_path, "h", Metrics()))  # type: ignore[arg-type]
    await sink.start()
    await sink.send(sink.encode([Batch(META, [Event("t", "x")])]))
    await sink.close()
    assert orjson.loads((tmp_path / "events.jsonl").read_bytes())["message"] == "x"


async def test_torn_last_line_is_cut_at_start(tmp_path: Path) -> None:
    """A kill mid-write leaves half a line; the next run must not glue its first event onto it."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"message":"whole"}\n{"message":"to')
    m = Metrics()
    cfg = load_dict({"sinks": {"f": {"type": "file", "path": str(out)}}}, env={}).sinks["f"]
    sink = FileSink(cfg, SinkContext("f", tmp_path, "h", m))  # type: ignore[arg-type]
    await sink.start()
    await sink.send(sink.encode([Batch(META, [Event("t", "next")])]))
    await sink.close()
    lines = out.read_bytes().splitlines()
    assert orjson.loads(lines[0]) == {"message": "whole"}
    assert orjson.loads(lines[1])["message"] == "next"
    assert len(lines) == 2
    assert m.get("shipper_sink_torn_bytes_total") == len(b'{"message":"to')


# --- the path changes under the sink (logrotate, people) ----------------------------------------------------


def make_sink(tmp_path: Path, m: Metrics | None = None, **keys: object) -> FileSink:
    table = {"type": "file", "path": str(tmp_path / "out.jsonl"), **keys}
    cfg = load_dict({"sinks": {"f": table}}, env={}).sinks["f"]
    return FileSink(cfg, SinkContext("f", tmp_path, "h", m or Metrics()))  # type: ignore[arg-type]


async def send_lines(sink: FileSink, *messages: str) -> None:
    for msg in messages:
        await sink.send(sink.encode([Batch(META, [Event("2026-11-26T00:00:00Z", msg)])]))


def messages(path: Path) -> list[str]:
    return [orjson.loads(x)["message"] for x in path.read_bytes().splitlines()]


def descriptor_of(path: Path) -> int:
    """The number of this process's descriptor open on `path`."""
    (fd,) = [int(n) for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == str(path)]
    return fd


def numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def test_rm_of_the_file_writes_a_new_file_at_the_path(tmp_path: Path) -> None:
    """`rm events.jsonl` while the sink runs: the events after it land in a new file at the path, not in the
    deleted inode (where they were lost while the sink stayed up and offsets advanced)."""
    m = Metrics()
    sink = make_sink(tmp_path, m)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, "before")
    out.unlink()
    await send_lines(sink, *numbered("after", 3))
    await sink.close()
    assert messages(out) == numbered("after", 3)
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="removed") == 1


async def test_rm_between_the_check_and_the_write_writes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """The file removed after the path was checked but before the write: the request went into a deleted
    inode, so it is written again to a new file at the path."""
    m = Metrics()
    sink = make_sink(tmp_path, m)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, "before")
    real_write = os.write
    removed = []

    def write_after_rm(fd: int, data: bytes | memoryview) -> int:
        if not removed:
            removed.append(True)
            out.unlink()
        return real_write(fd, data)

    monkeypatch.setattr(file_sink.os, "write", write_after_rm)
    await send_lines(sink, "raced")
    monkeypatch.undo()
    await send_lines(sink, "next")
    await sink.close()
    assert messages(out) == ["raced", "next"]
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="removed") == 1


async def test_mv_keeps_what_was_written_and_new_events_go_to_the_path(tmp_path: Path) -> None:
    """`mv events.jsonl moved.jsonl` (logrotate's default): the old name keeps what was written, new
    events go to a new file at the path, and size rotation goes on working there (it used to fail at the
    next rotation, then every write failed with EBADF)."""
    m = Metrics()
    sink = make_sink(tmp_path, m, max_bytes=2000, max_files=3)
    out, moved = tmp_path / "out.jsonl", tmp_path / "moved.jsonl"
    await sink.start()
    await send_lines(sink, *numbered("old", 5))
    out.rename(moved)
    await send_lines(sink, *numbered("new", 40))  # lines of about 273 bytes: rotates several times
    await sink.close()
    assert messages(moved) == numbered("old", 5)
    assert (tmp_path / "out.jsonl.1").exists() and (tmp_path / "out.jsonl.3").exists()
    rotated = [tmp_path / "out.jsonl.3", tmp_path / "out.jsonl.2", tmp_path / "out.jsonl.1", out]
    got = [msg for f in rotated for msg in messages(f)]
    assert got == numbered("new", 40)[-len(got):]  # the newest, in order; older ones rotated out by max_files
    assert all(f.stat().st_size <= 2000 for f in rotated)
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="moved") == 1


async def test_mv_and_create_writes_to_the_file_now_at_the_path(tmp_path: Path) -> None:
    """logrotate's `create`: the file is moved away and a new empty one made at the path before our next
    write. New events go into that new file, the moved one keeps the old events."""
    m = Metrics()
    sink = make_sink(tmp_path, m)
    out, moved = tmp_path / "out.jsonl", tmp_path / "out.jsonl-20261126"
    await sink.start()
    await send_lines(sink, *numbered("old", 3))
    out.rename(moved)
    out.touch(mode=0o600)
    await send_lines(sink, *numbered("new", 3))
    await sink.close()
    assert messages(moved) == numbered("old", 3)
    assert messages(out) == numbered("new", 3)
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="replaced") == 1


async def test_mv_then_rotation_never_closes_a_descriptor_number_twice(tmp_path: Path) -> None:
    """The reported failure: after mv, the rotation closed the sink's descriptor and failed; the number went
    to another part of the process (a json-file reader opening a log), and the sink closed it again, so
    the reader failed with `Bad file descriptor`. Here the reader's descriptor must outlive every send."""
    sink = make_sink(tmp_path, max_bytes=600)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, *numbered("a", 3))
    out.rename(tmp_path / "moved.jsonl")
    await send_lines(sink, *numbered("b", 6))  # rotates at least once after the mv
    (tmp_path / "docker.log").write_bytes(b"a json-file log\n")
    reader = os.open(tmp_path / "docker.log", os.O_RDONLY)  # may get a number the sink once held
    try:
        await send_lines(sink, *numbered("c", 6))
        await sink.close()
        await sink.close()  # idempotent
        assert os.pread(reader, 100, 0) == b"a json-file log\n"
    finally:
        os.close(reader)
    everything = [msg for f in sorted(tmp_path.glob("out.jsonl*"), reverse=True) for msg in messages(f)]
    assert everything[-6:] == numbered("c", 6)


async def test_a_failed_rotation_leaves_no_descriptor_to_close_twice(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation whose rename fails has closed the descriptor already: the number the kernel hands out next
    (here to a 'reader') must never be written to or closed by the sink; the retry reopens and rotates."""
    sink = make_sink(tmp_path, max_bytes=600)  # two lines of about 273 bytes fit, a third rotates
    out = tmp_path / "out.jsonl"
    await sink.start()
    held = descriptor_of(out)
    await send_lines(sink, *numbered("a", 2))
    real_replace = os.replace

    def replace_fails(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(file_sink.os, "replace", replace_fails)
    with pytest.raises(RetryableSinkError, match="Permission denied"):
        await send_lines(sink, "rotates")
    monkeypatch.setattr(file_sink.os, "replace", real_replace)
    (tmp_path / "docker.log").write_bytes(b"reader's\n")
    fillers: list[int] = []  # lower numbers freed meanwhile (the folder's, locked while the file was opened)
    reader = os.open(tmp_path / "docker.log", os.O_RDONLY)
    while reader < held:
        fillers.append(reader)
        reader = os.open(tmp_path / "docker.log", os.O_RDONLY)
    try:
        assert reader == held  # the kernel reuses the lowest free number: the scenario is real
        await send_lines(sink, "rotates", "after")  # the runner's retry, then the next request
        await sink.close()
        assert os.pread(reader, 100, 0) == b"reader's\n"
    finally:
        for fd in [reader, *fillers]:
            os.close(fd)
    assert messages(tmp_path / "out.jsonl.1") == numbered("a", 2)
    assert messages(out) == ["rotates", "after"]


async def test_copytruncate_resets_the_size_and_loses_nothing_written_after(tmp_path: Path) -> None:
    """logrotate's copytruncate empties the file under us: writes after it start at offset 0 (O_APPEND, no
    hole of zeros), and rotation counts from the new size instead of rotating early."""
    m = Metrics()
    sink = make_sink(tmp_path, m, max_bytes=3000)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, *numbered("before", 8))  # about 2200 bytes
    assert 2000 < out.stat().st_size < 3000
    copy = out.read_bytes()
    os.truncate(out, 0)  # what copytruncate does after copying
    await send_lines(sink, *numbered("after", 8))  # fits in max_bytes from 0, not from 2200
    await sink.close()
    assert messages(out) == numbered("after", 8)
    assert not (tmp_path / "out.jsonl.1").exists(), "rotated on a size the file no longer had"
    assert b"\0" not in out.read_bytes()
    assert [orjson.loads(x)["message"] for x in copy.splitlines()] == numbered("before", 8)
    assert m.get("shipper_sink_file_followed_total", sink="f", reason="truncated") == 1


async def test_a_fifo_is_written_not_rotated_or_followed(tmp_path: Path) -> None:
    """`path` may be a FIFO (or a device): it has no size, so there is nothing to rotate or to follow; it
    used to be renamed away by the size rotation."""
    m = Metrics()
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = make_sink(tmp_path, m, max_bytes=300)
        await sink.start()
        await send_lines(sink, *numbered("p", 5))
        await sink.close()
        got = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert [orjson.loads(x)["message"] for x in got.splitlines()] == numbered("p", 5)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not (tmp_path / "out.jsonl.1").exists()
    assert m.get("shipper_sink_file_followed_total") == 0


# --- where the write happens: the event loop, or a thread when it may block -------------------------------


def record_threads(sink: FileSink) -> list[bool]:
    """Per `_append` call, whether it ran in the event loop's thread."""
    import threading
    loop_thread = threading.get_ident()
    on_loop: list[bool] = []
    real = sink._append

    def append(data: bytes, wait: bool = True) -> bool:
        on_loop.append(threading.get_ident() == loop_thread)
        return real(data, wait)

    sink._append = append  # type: ignore[method-assign]
    return on_loop


def test_filesystem_of_reads_the_type_after_the_optional_fields(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    info = tmp_path / "mountinfo"
    info.write_text(f"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw\n"
                    f"37 35 {dev} / /srv rw,relatime shared:7 master:2 - nfs4 server:/export rw,vers=4.2\n")
    assert file_sink.filesystem_of(str(tmp_path), str(info)) == "nfs4"
    info.write_text("36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw\n")
    assert file_sink.filesystem_of(str(tmp_path), str(info)) == ""  # not found: unknown, so a thread
    assert file_sink.filesystem_of(str(tmp_path / "missing")) == ""
    assert file_sink.filesystem_of(str(tmp_path)) != ""  # this machine's real mountinfo


async def test_a_local_file_is_written_on_the_loop_and_a_rotation_in_a_thread(tmp_path: Path) -> None:
    assert file_sink.filesystem_of(str(tmp_path)) in file_sink.LOCAL_FILESYSTEMS, "tmp_path not on a local fs"
    sink = make_sink(tmp_path, max_bytes=1000, max_files=3)
    await sink.start()
    on_loop = record_threads(sink)
    await send_lines(sink, *numbered("r", 6))
    await sink.close()
    assert sink.on_loop
    lines = [orjson.loads(x)["message"] for f in ("out.jsonl.1", "out.jsonl")
             for x in (tmp_path / f).read_bytes().splitlines()]
    assert lines == numbered("r", 6)
    assert on_loop.count(False) == 1 and on_loop[0]  # the one write that rotated went through the thread


async def test_a_rotation_due_by_another_workers_writes_goes_through_the_thread(tmp_path: Path) -> None:
    """A worker's size is stale once another has written: its write looks small enough for the loop, and only
    under the lock does it find the file full. The rotation then goes to the thread all the same."""
    sink, other = make_sink(tmp_path, max_bytes=1000, max_files=3), make_sink(tmp_path, max_bytes=1000, max_files=3)
    await sink.start()
    await other.start()
    await send_lines(sink, "r0")
    await send_lines(other, *numbered("o", 2))  # the file is now near max_bytes; `sink` still thinks it small
    on_loop = record_threads(sink)
    await send_lines(sink, "r1")
    await sink.close()
    await other.close()
    assert on_loop == [True, False]  # tried on the loop, found the rotation due under the lock, then the thread
    assert messages(tmp_path / "out.jsonl.1") == ["r0", *numbered("o", 2)]
    assert messages(tmp_path / "out.jsonl") == ["r1"]


@pytest.mark.parametrize("keys", [{"fsync": True}, {"path": "fifo"}])
async def test_fsync_or_a_fifo_writes_in_a_thread(tmp_path: Path, keys: dict[str, object]) -> None:
    reader = -1
    if keys.get("path") == "fifo":
        os.mkfifo(tmp_path / "fifo")
        reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        keys = {"path": str(tmp_path / "fifo")}
    try:
        sink = make_sink(tmp_path, **keys)
        await sink.start()
        on_loop = record_threads(sink)
        await send_lines(sink, *numbered("t", 3))
        await sink.close()
    finally:
        if reader >= 0:
            os.close(reader)
    assert not sink.on_loop and on_loop == [False] * 3


async def test_while_another_worker_holds_the_folder_the_write_waits_in_a_thread(tmp_path: Path) -> None:
    """Workers share the file under an flock of its folder; one that holds it (rotating, say) must not stall
    another's event loop: the loop does not wait for the lock, the thread does."""
    import fcntl
    sink = make_sink(tmp_path)
    await sink.start()
    on_loop = record_threads(sink)
    other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # another open file description: a real rival
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        task = asyncio.create_task(send_lines(sink, "waited"))
        await asyncio.sleep(0.2)
        assert not task.done() and (tmp_path / "out.jsonl").read_bytes() == b""
        assert on_loop == [True, False]  # tried on the loop without waiting, then waiting in the thread
    finally:
        os.close(other)  # releases the lock
    await task
    await sink.close()
    assert [orjson.loads(x)["message"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines()] == ["waited"]


async def test_a_worker_starting_never_cuts_what_another_appends(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers restart together after a kill, one may have left half a line. A worker that writes between
    another's look at the file's end and its cut of that half line would lose its whole write: the other
    cuts to the newline it found. Opening and cutting hold the folder's lock, so the write waits."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"message":"whole"}\n{"message":"to')  # the killed worker's half line
    writer, starter = make_sink(tmp_path), make_sink(tmp_path)
    writer._open_locked()  # its file open; its start's own cut comes later, not from start()
    writer._size = out.stat().st_size
    got_in: list[bool] = []
    cut = starter._cut_torn_line

    def write_then_cut(f: file_sink._OpenFile) -> None:  # the other worker's write, at the worst moment
        got_in.append(writer._append(writer.encode([Batch(META, [Event("t", "raced")])]).payload, wait=False))
        cut(f)

    monkeypatch.setattr(starter, "_cut_torn_line", write_then_cut)
    await starter.start()
    monkeypatch.setattr(starter, "_cut_torn_line", cut)
    if not got_in[0]:  # it waited for the lock, as it must: it writes now
        await send_lines(writer, "raced")
    await send_lines(starter, "after")
    await writer.close()
    await starter.close()
    assert got_in == [False], "a write went in between a worker's look at the file's end and its cut"
    assert messages(out) == ["whole", "raced", "after"]


async def test_a_half_line_left_by_a_killed_worker_is_cut_by_the_next_writer(tmp_path: Path) -> None:
    """One worker dies mid-write and the supervisor restarts it while the others go on: whichever writes next
    finds the file's end moved, sees the half line, and cuts it before appending."""
    out = tmp_path / "out.jsonl"
    m = Metrics()
    sink = make_sink(tmp_path, m)
    await sink.start()
    await send_lines(sink, "first")
    with open(out, "ab") as f:
        f.write(b'{"message":"second"}\n{"message":"ha')  # another worker's whole line, then its torn one
    await send_lines(sink, "third")
    await sink.close()
    assert messages(out) == ["first", "second", "third"]
    assert m.get("shipper_sink_torn_bytes_total") == len(b'{"message":"ha')


async def test_a_slow_write_sends_the_next_ones_to_a_thread_for_a_while(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow disk cannot be made on demand here: a threshold of 0 makes every write on the loop "slow"."""
    m = Metrics()
    sink = make_sink(tmp_path, m)
    await sink.start()
    on_loop = record_threads(sink)
    monkeypatch.setattr(file_sink, "SLOW_WRITE_SECS", 0.0)
    await send_lines(sink, *numbered("s", 3))
    assert on_loop == [True, False, False]
    assert m.get("shipper_sink_file_slow_writes_total", sink="f") == 1
    monkeypatch.setattr(file_sink, "SLOW_WRITES_APART", 0.0)
    sink._threaded_until = 0.0  # the minute has passed: back on the loop, slow again, counted again
    await send_lines(sink, "s3")
    await sink.close()
    assert on_loop == [True, False, False, True]
    assert m.get("shipper_sink_file_slow_writes_total", sink="f") == 2
    assert [orjson.loads(x)["message"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines()] == \
        numbered("s", 4)


# --- a full disk --------------------------------------------------------------------------------------------


class FullDisk:
    """Stands in for a full disk (the real one is in tests/integration/test_file_sink_faults.py, on a small
    tmpfs): while `full`, os.write writes `room` bytes of what it is given, then raises ENOSPC."""

    def __init__(self, room: int) -> None:
        self.full = True
        self.room = room
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if not self.full:
            return self.real(fd, data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.real(fd, bytes(data)[:self.room])
        self.room -= n
        return n


async def test_full_disk_is_retried_without_a_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC part way through a request: the runner retries it (nothing acked, the retry counted and
    logged), and the part that made it to disk is cut back, so the file never holds half a line and every
    event arrives once."""
    m = Metrics()
    sink = make_sink(tmp_path, m, retry_initial_secs=0.01, retry_max_secs=0.02)
    out = tmp_path / "out.jsonl"
    runner = SinkRunner("f", sink, None, m)
    await runner.start()
    await send_lines(sink, "first")
    disk = FullDisk(room=30)
    monkeypatch.setattr(file_sink.os, "write", disk)
    batch = Batch(META, [Event("2026-11-26T00:00:00Z", f"event {i}") for i in range(5)])
    delivery = asyncio.ensure_future(runner.deliver(sink.encode([batch])))
    while not m.get("shipper_sink_retries_total"):
        await asyncio.sleep(0.005)
    assert out.read_bytes().endswith(b"\n") and messages(out) == ["first"], "a torn line was left"
    assert runner.state in ("retrying", "failing")
    disk.full = False
    done = await asyncio.wait_for(delivery, 5)
    await sink.close()
    assert (done.delivered, done.failed) == (5, 0)
    assert messages(out) == ["first", *[f"event {i}" for i in range(5)]]


async def test_full_disk_raises_retryable_and_cuts_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink's side of it (ENOSPC stood in by os.write raising it after 30 bytes): RetryableSinkError
    naming the cause, the file as it was before the request."""
    sink = make_sink(tmp_path)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, "first")
    size = out.stat().st_size
    monkeypatch.setattr(file_sink.os, "write", FullDisk(room=30))
    with pytest.raises(RetryableSinkError, match="No space left on device"):
        await send_lines(sink, "x" * 200)
    assert out.stat().st_size == size
    monkeypatch.undo()
    await send_lines(sink, "x" * 200)
    await sink.close()
    assert messages(out) == ["first", "x" * 200]


async def test_a_failed_fsync_takes_the_request_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync = true a request is delivered only once it is on disk: an fsync that fails (EIO, ENOSPC
    on a thin-provisioned disk) cuts the request back out, so the runner's retry does not write it twice."""
    sink = make_sink(tmp_path, fsync=True)
    out = tmp_path / "out.jsonl"
    await sink.start()
    await send_lines(sink, "first")

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(file_sink.os, "fsync", fsync_fails)
    with pytest.raises(RetryableSinkError, match="Input/output error"):
        await send_lines(sink, "second")
    monkeypatch.undo()
    assert messages(out) == ["first"]
    await send_lines(sink, "second")  # the retry
    await sink.close()
    assert messages(out) == ["first", "second"]


# --- permissions --------------------------------------------------------------------------------------------


async def test_files_are_created_owner_only(tmp_path: Path) -> None:
    """Events hold whatever applications log (tokens, e-mail addresses): the file, the one opened after a
    rotation and the one opened after an rm are 0600 unless `mode` says otherwise."""
    old = os.umask(0o022)
    try:
        sink = make_sink(tmp_path, max_bytes=300, max_files=2)
        out = tmp_path / "out.jsonl"
        await sink.start()
        await send_lines(sink, *numbered("a", 4))  # rotates
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "out.jsonl.1").stat().st_mode) == 0o600
        out.unlink()
        await send_lines(sink, "b")
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        await sink.close()
        other = make_sink(tmp_path, path=str(tmp_path / "group.jsonl"), mode="0640")
        await other.start()
        await other.close()
        assert stat.S_IMODE((tmp_path / "group.jsonl").stat().st_mode) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mode", "says"), [("0666", "world-writable"), ("0602", "world-writable"),
                                            ("0400", "read and write"), ("rw-r--r--", "octal"),
                                            ("4600", "octal"), ("0x180", "octal")])
def test_mode_is_validated(mode: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as e:
        load_dict({"sinks": {"f": {"type": "file", "mode": mode}}}, env={})
    assert e.value.key == "sinks.f.mode"


@pytest.mark.parametrize(("mode", "value"), [("0600", 0o600), ("640", 0o640), ("0o644", 0o644)])
def test_mode_forms(mode: str, value: int) -> None:
    cfg = load_dict({"sinks": {"f": {"type": "file", "mode": mode}}}, env={}).sinks["f"]
    assert file_sink.parse_mode(cfg.mode) == value  # type: ignore[attr-defined]
