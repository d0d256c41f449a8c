from __future__ import annotations

import asyncio
import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import cli as cli_module
from shipper.buffer.spool import DiskSpool
from shipper.config import BufferConfig, Config, FsyncPolicy, load, load_dict
from shipper.errors import ConfigError, RetryableSinkError
from shipper.event import Batch, Checkpoint, ContainerMeta, Event
from shipper.replay import Progress, ReplayError, ReplaySummary, parse_time, replay, spool_dirs
from shipper.sinks.base import SinkContext
from shipper.sinks.file import FileSink
from shipper.sinks.runner import SinkRunner
from shipper.telemetry.metrics import Metrics

NOW = 1_795_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-26T10:00:00Z", 1795687200.0),
    ("2026-11-26T10:00:00.5Z", 1795687200.5),
    ("2026-11-26T10:00:00.123456789Z", 1795687200.123456),
    ("2026-11-26T11:00:00+01:00", 1795687200.0),
    ("2026-11-26T10:00:00", 1795687200.0),  # no offset: UTC
])
def test_rfc3339_forms(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "ago"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
                                           ("1.5h", 5400)])
def test_relative_forms(text: str, ago: float) -> None:
    assert parse_time(text, now=NOW) == NOW - ago


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "2026-13-01T00:00:00Z", ""])
def test_bad_times_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


def test_replay_needs_the_disk_spool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        spool_dirs(load_dict({}, env={}))
    assert e.value.key == "buffer.type"
    cfg = load_dict({"buffer": {"type": "disk"}, "state": {"dir": str(tmp_path)}}, env={})
    assert spool_dirs(cfg) == []
    for d in ("spool", "workers/1/spool", "workers/0/spool", "workers/10/spool", "workers/x/spool"):
        (tmp_path / d).mkdir(parents=True)
    assert spool_dirs(cfg) == [tmp_path / d for d in ("spool", "workers/0/spool", "workers/1/spool",
                                                      "workers/10/spool")]


def test_progress_draws_only_on_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(10, out)
    p.update(5, force=True)
    assert out.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    p = Progress(10, tty)
    p.update(5, force=True)
    assert "5/10 events" in tty.getvalue() and "50.0%" in tty.getvalue()


# --- replay against a real spool ----------------------------------------------------------------------------


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def write_spool(state: Path, batches: list[Batch]) -> None:
    """A disk spool under `state`, as the daemon leaves it: the batches pushed, none acknowledged."""
    cfg = BufferConfig(fsync=FsyncPolicy.NEVER, segment_bytes=1 << 20, max_bytes=1 << 30)  # type: ignore[call-arg]
    sp = DiskSpool(state / "spool", cfg, Metrics(), lambda cp: None)
    await sp.open()
    sp.cursor("out")
    for b in batches:
        await sp.push(b)
    await sp.close()


def spool_batches(state: Path, batches: list[Batch]) -> None:
    asyncio.run(write_spool(state, batches))


def numbered_batches(n: int, per: int = 10, start: float = 1_790_000_000.0, names: tuple[str, ...] = ("web",),
                     size: int = 20) -> list[Batch]:
    """`n` batches of `per` events, one second apart; messages 'b<k>-e<i>-xxx'."""
    out = []
    for k in range(n):
        meta = ContainerMeta(id=f"{names[k % len(names)]}-id", name=names[k % len(names)], image="busybox")
        evs = [Event(stamp(start + k + i / 100), f"b{k}-e{i}-" + "x" * size, seq=i) for i in range(per)]
        out.append(Batch(meta, evs, Checkpoint(meta.id, k)))
    return out


def config_text(state: Path, out: Path | str, **sink: object) -> str:
    keys = {"max_bytes": 0, "retry_initial_secs": 0.01, "retry_max_secs": 0.02, **sink}
    lines = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in keys.items())
    return (f'[buffer]\ntype = "disk"\n[state]\ndir = "{state}"\n'
            f'[sinks.out]\ntype = "file"\npath = "{out}"\n{lines}\n')


def make_config(tmp_path: Path, out: Path | str | None = None, **sink: object) -> tuple[Path, Config]:
    path = tmp_path / "shipper.toml"
    path.write_text(config_text(tmp_path / "state", out or tmp_path / "out.jsonl", **sink))
    return path, load(str(path))


def sent(path: Path) -> list[str]:
    return [orjson.loads(x)["message"] for x in path.read_bytes().splitlines()]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """`shipper ARGS...` in this process: (exit status, stderr). Logging is left alone (it is global)."""
    monkeypatch.setattr(cli_module, "setup_logging", lambda *a, **k: None)

    def run(*argv: str) -> tuple[int, str]:
        try:
            code = cli_module.main(list(argv))
        except SystemExit as e:
            code = int(e.code or 0)
        return code, capsys.readouterr().err

    return run


def test_a_state_dir_without_a_spool_is_an_error_and_creates_nothing(tmp_path: Path, cli: Any) -> None:
    """It used to say events=0, exit 0, and create the state dir and the sink's file there."""
    cfg_path, _ = make_config(tmp_path, out="")  # the file sink's default path: <state dir>/events.jsonl
    for dry in ([], ["--dry-run"]):
        code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", *dry)
        assert code == 2, err
        assert f"no spool in {tmp_path / 'state'} (is buffer.type = \"disk\" and is this the daemon's " \
               "state dir?)" in err
        assert not (tmp_path / "state").exists()


async def test_no_spool_raises_before_reading(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    _, cfg = make_config(tmp_path)
    with pytest.raises(ReplayError, match="no spool in") as e:
        await replay(cfg, "out", None, None, None)
    assert e.value.code == 2
    assert os.listdir(tmp_path / "state") == []


def test_an_empty_window_starts_no_sink(tmp_path: Path, cli: Any) -> None:
    """Nothing to send: no connection, no file created."""
    spool_batches(tmp_path / "state", numbered_batches(3))
    cfg_path, _ = make_config(tmp_path)
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", "--since", stamp(1_800_000_000))
    assert code == 0, err
    assert "replayed events=0 " in err
    assert not (tmp_path / "out.jsonl").exists()


def test_until_not_after_since_is_refused(tmp_path: Path, cli: Any) -> None:
    spool_batches(tmp_path / "state", numbered_batches(3))
    cfg_path, _ = make_config(tmp_path)
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", "--since", "2026-11-26T10:00:00Z",
                    "--until", "2026-11-26T09:00:00Z")
    assert code == 2
    assert "--until 2026-11-26T09:00:00.000Z is not after --since 2026-11-26T10:00:00.000Z" in err
    assert not (tmp_path / "out.jsonl").exists()
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", "--since", "1h", "--until", "2h")
    assert code == 2 and "--until" in err and "--since" in err


@pytest.mark.parametrize("form", [["--since", "-5m"], ["--since=-5m"]])
def test_since_minus_5m_means_5_minutes_ago(tmp_path: Path, cli: Any, form: list[str]) -> None:
    """`--since -5m` used to end in argparse ('expected one argument'): '-5m' looked like an option."""
    now = time.time()
    old = numbered_batches(1, start=now - 600, names=("old",))
    new = numbered_batches(1, start=now - 120, names=("new",))
    spool_batches(tmp_path / "state", old + new)
    cfg_path, _ = make_config(tmp_path)
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", *form)
    assert code == 0, err
    assert sent(tmp_path / "out.jsonl") == [e.message for e in new[0].events]


def test_only_time_values_are_glued_to_their_option() -> None:
    assert cli_module._glue_negative_times(["replay", "--until", "-1h", "--container", "-x", "--since", "1h"]) == \
        ["replay", "--until=-1h", "--container", "-x", "--since", "1h"]


def test_relative_times_with_a_minus_mean_ago() -> None:
    assert parse_time("-5m", now=NOW) == parse_time("5m", now=NOW) == NOW - 300


async def test_dry_run_reports_events_containers_and_time_span_only(tmp_path: Path) -> None:
    batches = numbered_batches(4, per=3, names=("web", "db"))
    await write_spool(tmp_path / "state", batches)
    _, cfg = make_config(tmp_path)
    s = await replay(cfg, "out", None, None, None, dry_run=True, out=io.StringIO())
    line = s.dry_line()
    assert line == (f"replayed events=12 containers=2 first={batches[0].events[0].timestamp} "
                    f"last={batches[-1].events[-1].timestamp} corrupt_records_skipped=0")
    assert "bytes" not in line and "rate" not in line
    assert not (tmp_path / "out.jsonl").exists()


def test_a_real_run_reports_message_bytes_and_send_rate(tmp_path: Path, cli: Any) -> None:
    batches = numbered_batches(5, per=4)
    spool_batches(tmp_path / "state", batches)
    cfg_path, _ = make_config(tmp_path)
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out")
    assert code == 0, err
    nbytes = sum(len(e.message.encode()) for b in batches for e in b.events)
    assert f"replayed events=20 batches=5 message_bytes={nbytes} failed_events=0 containers=1 " in err
    assert re.search(r" send_seconds=\d+\.\d\d rate=[\d,]+ events/s ", err), err
    code, err = cli("replay", "--config", str(cfg_path), "--sink", "out", "--dry-run")
    assert code == 0 and "would send replayed events=20 containers=1 first=" in err and "bytes" not in err


def test_a_sink_down_at_start_ends_after_max_attempts(tmp_path: Path) -> None:
    """The sink never starts (its directory cannot be made: a file is in the way): replay ends after
    --max-attempts with a clear error and exit 1. It used to retry forever (attempt 400 and counting)."""
    spool_batches(tmp_path / "state", numbered_batches(2))
    (tmp_path / "blocker").write_text("a file, not a directory")
    cfg_path, _ = make_config(tmp_path, out=tmp_path / "blocker" / "out.jsonl")
    try:
        proc = subprocess.run([sys.executable, "-m", "shipper", "replay", "--config", str(cfg_path), "--sink", "out",
                               "--max-attempts", "3"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("replay still retrying the sink's start after 20 s") from None
    assert proc.returncode == 1, proc.stderr
    assert "sink 'out' is down: it did not start in 3 attempts, the last failing with cannot open" in proc.stderr
    assert "nothing was sent" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_start_gives_up_after_max_attempts_when_asked() -> None:
    attempts = []

    class Down(FileSink):
        async def start(self) -> None:
            attempts.append(1)
            raise RetryableSinkError("connection refused")

    cfg = load_dict({"sinks": {"d": {"type": "file", "retry_initial_secs": 0.001, "retry_max_secs": 0.002}}},
                    env={}).sinks["d"]
    m = Metrics()
    runner = SinkRunner("d", Down(cfg, SinkContext("d", Path("/nonexistent"), "h", m)), None, m)  # type: ignore[arg-type]
    with pytest.raises(RetryableSinkError, match="connection refused"):
        await runner.start(max_attempts=3)
    assert len(attempts) == 3
    assert m.get("shipper_sink_retries_total") == 2  # the two retries; the last failure is raised instead


async def test_a_request_failing_max_attempts_stops_the_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The sink goes down after the first request: replay stops at the request that failed --max-attempts
    times (sending on would only reorder and take max_attempts x backoff per request), exit 1, naming where
    to start again; what was sent before is in the summary."""
    batches = numbered_batches(6, per=10)
    await write_spool(tmp_path / "state", batches)
    _, cfg = make_config(tmp_path, batch_max_events=20)
    real_send = FileSink.send
    calls = []

    async def send(self: FileSink, request: Any) -> None:
        calls.append(request.events)
        if len(calls) > 1:
            raise RetryableSinkError("disk on fire")
        await real_send(self, request)

    monkeypatch.setattr(FileSink, "send", send)
    summary = ReplaySummary()
    with pytest.raises(ReplayError) as e:
        await replay(cfg, "out", None, None, None, max_attempts=3, summary=summary)
    assert e.value.code == 1
    assert f"--since {batches[2].events[0].timestamp}" in str(e.value)
    assert "disk on fire" in str(e.value)
    assert calls == [20, 20, 20, 20]  # one delivered, the next tried 3 times, nothing after it
    assert summary.events == 20 and summary.failed_events == 20
    assert sent(tmp_path / "out.jsonl") == [ev.message for b in batches[:2] for ev in b.events]


async def test_where_to_go_on_from_is_the_earliest_event_not_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """Spool order is read order, not time order: a container read late has older events in later records.
    The --since that replay suggests after stopping must cover them too."""
    web = numbered_batches(2, per=10, start=1_790_000_100.0, names=("web",))
    lagging = numbered_batches(1, per=10, start=1_790_000_050.0, names=("db",))
    await write_spool(tmp_path / "state", [*web, *lagging])
    _, cfg = make_config(tmp_path, batch_max_events=10)
    calls = []
    real_send = FileSink.send

    async def send(self: FileSink, request: Any) -> None:
        calls.append(request.events)
        if len(calls) > 1:
            raise RetryableSinkError("down")
        await real_send(self, request)

    monkeypatch.setattr(FileSink, "send", send)
    with pytest.raises(ReplayError) as e:
        await replay(cfg, "out", None, None, None, max_attempts=2)
    assert f"--since {lagging[0].events[0].timestamp} " in str(e.value)


def test_ctrl_c_prints_the_summary_and_exits_130(tmp_path: Path) -> None:
    """SIGINT in the middle of a replay (the sink is a FIFO the test stops reading, so replay is stuck in
    a write): no traceback, the summary of what was sent before it, exit 130. The request cut off is
    finished once the test reads on, and the summary says it was in flight."""
    spool_batches(tmp_path / "state", numbered_batches(100, per=10, size=300))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    cfg_path, _ = make_config(tmp_path, out=fifo, batch_max_events=50)
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "replay", "--config", str(cfg_path), "--sink", "out"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got = b""
    try:
        deadline = time.monotonic() + 20
        while got.count(b"\n") < 60:  # one request written whole, the next under way
            assert time.monotonic() < deadline and proc.poll() is None, "replay never wrote"
            got += read_some(reader) or b""
        time.sleep(0.5)  # replay fills the pipe and blocks in the next write
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        while True:
            assert time.monotonic() < deadline + 20, "replay did not finish the request cut off"
            chunk = read_some(reader)
            if chunk == b"":
                break
            got += chunk or b""
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"replayed events=(\d+) ", err)
    assert m, err
    said = int(m.group(1))
    lines = got.count(b"\n")
    assert said >= 50 and said % 50 == 0 and said < 1000
    assert lines == said + 50 and "50 events were in flight" in err, err  # the one cut off, finished after
    assert "interrupted" in err
    assert "followed its path" not in err  # a FIFO has no size: nothing to follow


def read_some(fd: int) -> bytes | None:
    """What the FIFO has (b'' at its end, when the writer closed it); None when it is empty for now."""
    ready, _, _ = select.select([fd], [], [], 0.05)
    if not ready:
        return None
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
