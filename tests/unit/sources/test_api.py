"""The Engine API reader's parsing and resume rule, fed bytes in dockerd's formats (no daemon needed)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shipper.config import Config, DockerConfig, MultilineConfig, MultilineMode
from shipper.docker.client import DockerClient, Endpoint
from shipper.docker.metadata import ContainerInfo
from shipper.event import Batch, Checkpoint, ContainerMeta
from shipper.sources.api import (
    PARTIAL_BYTES,
    ApiSource,
    BrokenStream,
    FrameDecoder,
    TtyDecoder,
    format_position,
    parse_position,
    ts_to_ns,
)
from shipper.sources.base import SourceContext
from shipper.telemetry.metrics import Metrics

T0 = "2024-05-01T12:00:00.000000001Z"
T1 = "2024-05-01T12:00:00.000000002Z"
T2 = "2024-05-01T12:00:01.500000000Z"


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


def test_frames_split_at_every_byte_boundary() -> None:
    frames = [(1, f"{T0} out one\n".encode()), (2, f"{T1} err two\n".encode()),
              (1, f"{T2} {'x' * 300}".encode())]
    stream = b"".join(frame(k, p) for k, p in frames)
    for cut in range(1, len(stream)):
        d = FrameDecoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == frames, cut
    d = FrameDecoder()  # one byte at a time
    assert [f for i in range(len(stream)) for f in d.feed(stream[i:i + 1])] == frames


def test_several_frames_in_one_chunk_and_a_frame_across_three() -> None:
    a, b, c = frame(1, b"a\n"), frame(2, b"b\n"), frame(1, b"c" * 1000 + b"\n")
    d = FrameDecoder()
    assert d.feed(a + b + c[:5]) == [(1, b"a\n"), (2, b"b\n")]
    assert d.feed(c[5:500]) == []
    assert d.feed(c[500:]) == [(1, b"c" * 1000 + b"\n")]


def test_a_broken_header_is_refused_not_buffered_forever() -> None:
    with pytest.raises(BrokenStream):
        FrameDecoder().feed(b"\x01\x00\x07\x00\x00\x00\x00\x02hi")
    with pytest.raises(BrokenStream):
        FrameDecoder().feed(struct.pack(">BxxxL", 1, 1 << 30))


def test_tty_lines_and_a_16k_partial_without_frames() -> None:
    long = "y" * (PARTIAL_BYTES + 10)
    # dockerd logs 16 KiB of a long line as a partial message, then the rest with its own timestamp
    raw = (f"{T0} one\r\n{T1} {long[:PARTIAL_BYTES]}{T2} {long[PARTIAL_BYTES:]}\r\n{T2} tail").encode()
    d = TtyDecoder()
    got = d.feed(raw[:7]) + d.feed(raw[7:20000]) + d.feed(raw[20000:])
    assert got == [(1, f"{T0} one\r\n".encode()),
                   (1, f"{T1} {long[:PARTIAL_BYTES]}".encode()),
                   (1, f"{T2} {long[PARTIAL_BYTES:]}\r\n".encode())]
    assert d.finish() == [(1, f"{T2} tail".encode())]


def test_timestamps_and_positions() -> None:
    assert ts_to_ns("1970-01-01T00:00:01.000000005Z") == 1_000_000_005
    assert ts_to_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert ts_to_ns("1970-01-01T01:00:01+01:00") == 1_000_000_000
    assert parse_position(T0) == (T0, 0)
    assert parse_position(format_position(T0, 3)) == (T0, 3)
    # string order is stream order: the assembler may take the smallest
    assert sorted([T1, format_position(T0, 2), T0, format_position(T0, 10)]) == [
        T0, format_position(T0, 2), format_position(T0, 10), T1]


def make_source(resume: Checkpoint | None = None, *, client: DockerClient | None = None,
                info: ContainerInfo | None = None, docker: DockerConfig | None = None,
                ) -> tuple[ApiSource, list[Batch], Metrics]:
    cfg = Config(multiline=MultilineConfig(mode=MultilineMode.OFF), docker=docker or DockerConfig())
    batches: list[Batch] = []
    m = Metrics()

    async def emit(b: Batch) -> None:
        batches.append(b)

    # by default never called: nothing listens on that socket
    client = client or DockerClient(Endpoint("http://docker", unix_path="/nonexistent.sock"))
    info = info or ContainerInfo(ContainerMeta("c" * 64, "web"))
    return ApiSource(info, SourceContext(cfg, m, emit), resume, client), batches, m


def messages(batches: list[Batch]) -> list[tuple[str, str, Any]]:
    return [(e.timestamp, e.message, e.stream) for b in batches for e in b.events]


async def test_entries_streams_and_checkpoints() -> None:
    src, batches, m = make_source()
    src._feed([(1, f"{T0} a\n".encode()), (2, f"{T0} b\n".encode()), (1, f"{T1} c\n".encode()),
               (3, b"Error grabbing logs: boom\n"), (1, b"no timestamp here\n")])
    await src._emit()
    assert messages(batches) == [(T0, "a", "stdout"), (T0, "b", "stderr"), (T1, "c", "stdout")]
    assert batches[-1].checkpoint == Checkpoint("c" * 64, format_position(T1, 1))
    assert m.get("shipper_lines_invalid_total", container="web", reason="daemon_error") == 1
    assert m.get("shipper_lines_invalid_total", container="web", reason="no_timestamp") == 1
    assert m.get("shipper_entries_read_total") == 5


async def test_an_open_partial_holds_the_checkpoint_at_its_first_entry() -> None:
    src, batches, _ = make_source()
    src._feed([(1, f"{T0} done\n".encode()), (1, f"{T1} part-".encode())])
    await src._emit()
    assert batches[-1].checkpoint.position == T1  # type: ignore[union-attr]
    src._feed([(1, f"{T2} end\n".encode())])
    await src._emit()
    assert messages(batches)[-1] == (T1, "part-end", "stdout")
    assert batches[-1].checkpoint.position == format_position(T2, 1)  # type: ignore[union-attr]


async def test_resume_drops_what_was_emitted_at_the_resume_timestamp() -> None:
    """dockerd answers since=T with every entry stamped T or later; those already emitted are dropped."""
    first, b1, _ = make_source()
    entries = [(1, f"{T0} a\n".encode()), (1, f"{T1} b\n".encode()), (2, f"{T1} c\n".encode())]
    first._feed(entries[:2])  # the connection broke after "b": "c" shares b's timestamp
    await first._emit()
    cp = b1[-1].checkpoint
    assert cp is not None and cp.position == format_position(T1, 1)

    second, b2, _ = make_source(cp)
    assert second._since() == "1714564800.000000002"
    second._start_connection()
    replay = [(1, f"{T0} a\n".encode()), *entries[1:], (1, f"{T2} d\n".encode())]  # T0 as a stray
    second._feed(replay)
    await second._emit()
    assert messages(b2) == [(T1, "c", "stderr"), (T2, "d", "stdout")]
    assert b2[-1].checkpoint.position == format_position(T2, 1)  # type: ignore[union-attr]


async def test_reconnect_mid_stream_continues_without_duplicates() -> None:
    src, batches, _ = make_source()
    src._start_connection()
    src._feed([(1, f"{T0} a\n".encode()), (1, f"{T1} b\n".encode())])
    src._start_connection()  # the stream was cut; the next one starts at since=T1
    src._feed([(1, f"{T1} b\n".encode()), (1, f"{T2} c\n".encode())])
    await src._emit()
    assert [msg for _, msg, _ in messages(batches)] == ["a", "b", "c"]


async def test_invalid_utf8_in_a_frame_is_counted_and_skipped() -> None:
    src, batches, m = make_source()
    src._feed([(1, f"{T0} ok\n".encode()), (1, T1.encode() + b" \xff\xfe\n"), (1, f"{T2} ok2\n".encode())])
    await src._emit()
    assert [msg for _, msg, _ in messages(batches)] == ["ok", "ok2"]
    assert m.get("shipper_lines_invalid_total", container="web", reason="invalid_utf8") == 1


async def test_a_reader_that_keeps_failing_says_so_at_every_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Every failure is counted per container and logged with its backoff, not only attempts 1, 10, 20."""
    caplog.set_level(logging.DEBUG)
    src, _, m = make_source(docker=DockerConfig(reconnect_max_secs=0.1, poll_interval_secs=0.05))
    task = asyncio.create_task(src.run())
    for _ in range(200):
        if m.get("shipper_reader_failures_total", container="web") >= 5:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    failures = m.get("shipper_reader_failures_total", container="web")
    said = [r for r in caplog.records if "log reader failed" in r.getMessage()]
    assert failures >= 5 and len(said) == failures
    assert all(r.levelno == logging.WARNING and "retry_in=" in r.getMessage() for r in said)


TTY_LOG = f"{T0} one\r\n{T1} two\r\n".encode()


@pytest.fixture
async def tty_daemon(tmp_path: Path) -> AsyncIterator[DockerClient]:
    """A stand-in dockerd for one exited TTY container, whose logs endpoint sends raw terminal output with no
    Content-Type naming it (as dockerd 20.10 does): only Config.Tty from inspect says it is raw."""

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "MinAPIVersion": "1.12"})

    async def inspect(_: web.Request) -> web.Response:
        return web.json_response({"Id": "c" * 64, "Config": {"Tty": True},
                                  "State": {"Running": False, "Restarting": False}})

    async def logs(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(req)
        await resp.write(TTY_LOG)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/containers/{id}/json", inspect)
    app.router.add_get("/v1.41/containers/{id}/logs", logs)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "d.sock")).start()
    client = DockerClient(Endpoint("http://docker", unix_path=str(tmp_path / "d.sock")))
    yield client
    await client.close()
    await runner.cleanup()


@pytest.mark.parametrize("guessed", [True, False], ids=["guessed", "wrong"])
async def test_tty_is_taken_from_the_containers_config(tty_daemon: DockerClient, guessed: bool) -> None:
    """A reader built from a guess asks inspect before connecting; one built on a wrong TTY flag finds out
    from the broken stream and asks then. Either way every line arrives, once."""
    info = ContainerInfo(ContainerMeta("c" * 64, "web"), tty=False, guessed=guessed)
    src, batches, m = make_source(client=tty_daemon, info=info,
                                  docker=DockerConfig(reconnect_max_secs=0.1, poll_interval_secs=0.05))
    task = asyncio.create_task(src.run())
    try:
        for _ in range(300):
            if len(messages(batches)) >= 2:
                break
            await asyncio.sleep(0.01)
        assert [msg for _, msg, _ in messages(batches)] == ["one", "two"]
        assert m.get("shipper_reader_failures_total") == (0 if guessed else 1)
        assert src.info.tty and not src.info.guessed
    finally:
        src.removed()
        await asyncio.wait_for(task, 5)


async def test_a_start_seen_while_stopped_streams_again_even_if_it_stopped_already(
        tty_daemon: DockerClient) -> None:
    """A container that ran again so briefly that it had exited before the reader asked whether it runs: the
    start event alone must make the reader stream again (its logs since the last position are there)."""
    global TTY_LOG
    info = ContainerInfo(ContainerMeta("c" * 64, "web"), tty=True)
    src, batches, _ = make_source(client=tty_daemon, info=info,
                                  docker=DockerConfig(reconnect_max_secs=5.0, poll_interval_secs=2.0))
    task = asyncio.create_task(src.run())
    first = TTY_LOG
    try:
        for _ in range(300):
            if len(messages(batches)) >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # waiting for a restart now
        TTY_LOG = first + f"{T2} three\r\n".encode()  # the second run, over before anyone looked
        src.started()
        for _ in range(100):
            if len(messages(batches)) >= 3:
                break
            await asyncio.sleep(0.01)
        assert [msg for _, msg, _ in messages(batches)] == ["one", "two", "three"]
    finally:
        TTY_LOG = first
        src.removed()
        await asyncio.wait_for(task, 5)
