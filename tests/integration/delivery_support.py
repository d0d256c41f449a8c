"""Helpers for the delivery tests: a daemon with a config of the test's own, a reader of sink files that
survives torn lines, and what can be learnt about a running daemon from outside (its log, its spool)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shipper.buffer.segment import SpoolReader
from shipper.sources.jsonfile import OFFSET_MASK
from shipper.workers import state_dirs
from tests.integration.harness import Shipper

NUMBER_RE = re.compile(r"\bn=(\d+)\b")
STATS_RE = re.compile(r"stats containers=\d+ events_read=(\d+) .*?dropped=(\d+) invalid=(\d+) gaps=\d+ "
                      r"buffered=(\d+)")
SINK_STATS_RE = re.compile(r"stats sink=(\S+) state=\w+ events_sent=(\d+)")
GAP_MARK = "lost before it was read"


class Daemon(Shipper):
    """`shipper run` with a config the test writes whole (buffer, telemetry and sinks of its choosing).

    `body` is appended after [docker], [state], [select] and [multiline]; it names every sink. `{out}`,
    `{state}` and `{tmp}` in it are replaced by the harness's paths.
    """

    def __init__(self, tmp: Path, body: str, stats_secs: float = 0.0, select_label: str | None = None) -> None:
        super().__init__(tmp, body, select_label=select_label, stats_secs=stats_secs, file_sink=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill. With workers, they die with their
        supervisor (waited for here, so that what they left behind can be read)."""
        assert self.proc is not None
        pid = self.proc.pid
        rc = self.stop(signal.SIGKILL)
        assert rc == -9, f"shipper was not running when killed (rc={rc}):\n{self.log_text()[-3000:]}"
        deadline = time.monotonic() + 10
        while workers_of(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not workers_of(pid), f"workers outlived their supervisor killed with -9: {workers_of(pid)}"

    def spools(self) -> list[Path]:
        """The spool folders: the daemon's own, or one per worker."""
        return [d / "spool" for d in state_dirs(self.state) if (d / "spool").exists()]

    def stats(self) -> dict[str, int]:
        """The counters of the newest `stats` log line (all zero before the first one), summed over the workers
        when there are several; events_sent: the sum over the sinks' own `stats sink=` lines."""
        text = self.log_text()
        keys = ("events_read", "dropped", "invalid", "buffered")
        out = dict.fromkeys(keys, 0)
        for values in newest_per_worker(STATS_RE, text).values():
            for k, v in zip(keys, values, strict=True):
                out[k] += int(v)
        sent = newest_per_worker(SINK_STATS_RE, text, by_group=1)  # the newest line of each sink
        out["events_sent"] = sum(int(v[1]) for v in sent.values())
        return out

    def spool_bytes(self) -> int:
        return sum(p.stat().st_size for s in self.spools() for p in (s / "segments").glob("*.seg"))

    def cursors(self) -> dict[str, int]:
        """Each sink's acked position in the spool ledger, summed over the workers' spools."""
        out: dict[str, int] = collections.Counter()
        for s in self.spools():
            path = s / "ledger.json"
            if path.exists():
                out.update(json.loads(path.read_text())["cursors"])
        return dict(out)


def syslog_sink(address: str) -> str:
    """[sinks.central]: syslog over TCP to `address`, retried quickly (a receiver that is down is the test)."""
    return f"""
[sinks.central]
type = "syslog"
address = "{address}"
retry_initial_secs = 0.2
retry_max_secs = 1.0
connect_timeout_secs = 1.0
"""


WORKER_TAG = re.compile(r"\[(worker \d+|drain)\]: ")


def newest_per_worker(pattern: re.Pattern[str], text: str, by_group: int = 0) -> dict[tuple[str, str], tuple[str, ...]]:
    """The groups of `pattern`'s newest match in each worker's log lines (the one process's when there are no
    workers), keyed by the worker's tag and, with `by_group`, that group's value too (a sink's name)."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for line in text.splitlines():
        m = pattern.search(line)
        if m:
            tag = WORKER_TAG.search(line)
            found[(tag.group(1) if tag else "", m.group(by_group) if by_group else "")] = m.groups()
    return found


def workers_of(pid: int) -> list[int]:
    """Processes started as workers of supervisor `pid` that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--parent" in cmd and cmd[cmd.index(b"--parent") + 1:][:1] == [str(pid).encode()]:
            found.append(int(entry.name))
    return found


@dataclass
class SinkFile:
    """What a file sink wrote. A line torn by a kill in the middle of a write and then continued by the
    next run is kept apart (`torn`); the complete event at its end is recovered into `events`."""

    events: list[dict[str, Any]] = field(default_factory=list)
    torn: list[bytes] = field(default_factory=list)


def read_sink(path: Path) -> SinkFile:
    out = SinkFile()
    if not path.exists():
        return out
    data = path.read_bytes()
    for line in data[:data.rfind(b"\n") + 1].splitlines():
        try:
            out.events.append(orjson.loads(line))
            continue
        except orjson.JSONDecodeError:
            out.torn.append(line)
        start = line.rfind(b'{"@timestamp"')
        if start > 0:
            with contextlib.suppress(orjson.JSONDecodeError):
                out.events.append(orjson.loads(line[start:]))
    return out


def by_container(evs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in evs:
        out[e["container"]["name"]].append(e)
    return out


def numbers(messages: list[str]) -> list[int]:
    """The `n=` number of every message that has one, in order."""
    return [int(m.group(1)) for msg in messages for m in [NUMBER_RE.search(msg)] if m]


def wait_until(cond: Callable[[], bool], timeout: float, what: str, alive: Daemon | None = None,
               every: float = 0.2) -> None:
    """Poll `cond`; fail naming `what` (and the daemon's log tail) on timeout or if the daemon exits."""
    deadline = time.monotonic() + timeout
    while not cond():
        if alive is not None and not alive.running:
            raise AssertionError(f"shipper exited while waiting for {what}:\n{alive.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            tail = alive.log_text()[-3000:] if alive is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(every)


def counting_loop(total: int, text: str = "", burst: int = 0, pause: float = 0.0, then: str = "") -> str:
    """A busybox sh command printing `n=0 TEXT` .. `n=TOTAL-1 TEXT` as fast as it can, sleeping `pause`
    after every `burst` lines."""
    body = f'echo "n=$i{" " + text if text else ""}"; i=$((i+1))'
    if burst and pause:
        body += f"; if [ $((i % {burst})) = 0 ]; then sleep {pause}; fi"
    script = f"i=0; while [ $i -lt {total} ]; do {body}; done"
    if then:
        script += f"; {then}"
    return f"sh -c '{script}'"


def assert_exist(containers: list[Any]) -> None:
    """Fail plainly if a test container vanished (removed by something other than the shipper): otherwise
    it would look like lines lost by the shipper."""
    import docker.errors

    for c in containers:
        try:
            c.reload()
        except docker.errors.NotFound:
            raise AssertionError(f"container {c.name} was removed while the test ran (not by the shipper)") from None


class CrashAccount:
    """What a killed daemon leaves behind, read while it is dead: per container, the highest line number it
    had pushed into the spool and the line its saved offset resumes at. Their difference is what the next
    run must read again (the documented re-read from the last saved offset), so summed over the kills,
    plus one unsaved ack per kill, it bounds the duplicates that at-least-once allows.

    Assumes each container writes only numbered lines, one json-file entry each, and no log rotation.
    """

    def __init__(self, d: Daemon, containers: list[Any]) -> None:
        self.d = d
        self.containers = containers
        self.pushed: dict[str, int] = {}  # container name -> highest number ever pushed (-1: none)
        self.rereads: list[int] = []  # per kill, lines the next run reads again, all containers
        self.resumes: list[dict[str, int]] = []  # per kill, the line each container resumes at
        self._from_seq: dict[Path, int] = {}

    def after_kill(self) -> None:
        for spool in self.d.spools():
            for rec in SpoolReader(spool).records(from_seq=self._from_seq.get(spool, 0)):
                self._from_seq[spool] = rec.seq + 1
                name = rec.batch.container.name
                top = max(numbers([ev.message for ev in rec.batch.events]), default=-1)
                self.pushed[name] = max(self.pushed.get(name, -1), top)
        saved = {}
        for d in state_dirs(self.d.state):  # with workers, each container's offset is in one worker's file
            path = d / "offsets.json"
            saved.update(json.loads(path.read_text())["containers"] if path.exists() else {})
        resumes, total = {}, 0
        for c in self.containers:
            pos = saved.get(c.id, {}).get("position", 0) & OFFSET_MASK
            if not c.attrs.get("LogPath"):
                c.reload()
            with open(c.attrs["LogPath"], "rb") as f:
                resume = f.read(pos).count(b"\n")
            resumes[c.name] = resume
            total += max(self.pushed.get(c.name, -1) + 1 - resume, 0)
        self.resumes.append(resumes)
        self.rereads.append(total)

    @property
    def runs_without_progress(self) -> int:
        """Runs killed before they saved any newer offset (so the next run starts where they started)."""
        return sum(1 for a, b in itertools.pairwise(self.resumes) if a == b)
