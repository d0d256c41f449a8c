"""`shipper run` as a process: the files it writes are owner-only whatever the umask; a second SIGTERM stops at
once with offsets saved; SIGHUP no longer kills it.

Docker is not needed: discovery = "files" reads a data root laid out as dockerd lays it out (config.v2.json,
hostconfig.json and a json-file log per container), written by the test.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CID = "c0ffee" + "0" * 58
LINES = 50


def write_container(data_root: Path, lines: int = LINES) -> None:
    d = data_root / "containers" / CID
    d.mkdir(parents=True)
    log = d / f"{CID}-json.log"
    (d / "config.v2.json").write_text(json.dumps({
        "ID": CID, "Name": "/app", "Created": "2026-11-30T00:00:00.000000000Z", "LogPath": str(log),
        "Config": {"Image": "app:1", "Labels": {}, "Env": [], "Tty": False}, "State": {"Running": True}}))
    (d / "hostconfig.json").write_text(json.dumps({"LogConfig": {"Type": "json-file", "Config": {}}}))
    with log.open("w") as f:
        for n in range(lines):
            f.write(json.dumps({"log": f"line {n}\n", "stream": "stdout",
                                "time": f"2026-11-30T00:00:{n % 60:02d}.000000000Z"}) + "\n")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


class Daemon:
    def __init__(self, tmp: Path, body: str) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.out = tmp / "out" / "events.jsonl"
        self.data_root = tmp / "docker"
        write_container(self.data_root)
        self.config = tmp / "shipper.toml"
        self.config.write_text(f"""
[docker]
discovery = "files"
data_root = "{self.data_root}"
scan_interval_secs = 0.1
poll_interval_secs = 0.05
[state]
dir = "{self.state}"
flush_interval_secs = 0.1
[telemetry]
stats_interval_secs = 0
[sinks.out]
type = "file"
path = "{self.out}"
{body}
""")
        self.log = tmp / "shipper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPPER_", "DOCKER_"))}
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(self.config)],
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp, env=env,
                                         preexec_fn=lambda: os.umask(0o022))  # a umask that lets others read
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            assert self.proc is not None and self.proc.poll() is None, f"shipper exited: {self.text()}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.text()}")

    def delivered(self) -> int:
        return len(self.out.read_text().splitlines()) if self.out.exists() else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for d in made:
        d.kill()


def some_group() -> grp.struct_group:
    mine = os.getgid()
    for g in grp.getgrall():
        if g.gr_gid != mine:
            return g
    pytest.skip("no group on this host other than the process's own")


def test_files_it_writes_are_owner_only(tmp_path: Path, daemons: list[Daemon]) -> None:
    """State dir, spool, offsets and the file sink's output: 0700 folders and 0600 files under umask 022
    (Docker keeps its own json-file logs 0640 root); a sink with mode = "0640" and a group gets exactly that."""
    g = some_group()
    shared = tmp_path / "shared" / "events.jsonl"
    d = Daemon(tmp_path, f'[sinks.shared]\ntype = "file"\npath = "{shared}"\nmode = "0640"\ngroup = "{g.gr_name}"\n'
                         '[buffer]\ntype = "disk"')
    daemons.append(d.start())
    d.wait_for(lambda: d.delivered() == LINES and shared.exists() and (d.state / "offsets.json").exists(),
               "every line delivered and offsets saved")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.text()
    seen = []
    for where in (d.state, d.out.parent):
        for path in [where, *where.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            want = 0o700 if path.is_dir() else 0o600
            seen.append(path.name)
            assert mode == want, f"{path}: {oct(mode)}, want {oct(want)}"
    assert {"offsets.json", "spool", "events.jsonl", "lock"} <= set(seen)
    st = shared.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == g.gr_gid
    assert stat.S_IMODE(shared.parent.stat().st_mode) == 0o750  # the group may enter the folder it may read


def test_a_second_sigterm_stops_at_once_with_offsets_saved(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A sink that cannot deliver holds the drain for shutdown_drain_secs (60 here); the second signal ends it."""
    d = Daemon(tmp_path, f'[sinks.down]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{closed_port()}"\n'
                         'healthcheck = false\n[buffer]\ntype = "disk"\nshutdown_drain_secs = 60')
    daemons.append(d.start())
    d.wait_for(lambda: d.delivered() == LINES and CID in (d.state / "offsets.json").read_text()
               if (d.state / "offsets.json").exists() else False, "lines spooled and offsets saved")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for(lambda: "draining" in d.text(), "the drain to start")
    time.sleep(1.0)
    assert d.proc.poll() is None, "the first SIGTERM must wait for the sinks (up to shutdown_drain_secs)"
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0, d.text()
    assert time.monotonic() - sent < 10
    text = d.text()
    assert "second stop signal" in text and "offsets saved" in text
    assert CID in (d.state / "offsets.json").read_text()
    assert "Traceback" not in text


def append_lines(data_root: Path, first: int, n: int) -> None:
    with (data_root / "containers" / CID / f"{CID}-json.log").open("a") as f:
        for k in range(first, first + n):
            f.write(json.dumps({"log": f"line {k}\n", "stream": "stdout",
                                "time": f"2026-11-30T00:01:{k % 60:02d}.000000000Z"}) + "\n")


def messages(path: Path) -> list[str]:
    return [json.loads(line)["message"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sighup_reloads_the_sinks_and_never_kills_it(tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGHUP applies added, changed and removed sinks; a bad config is refused and the old one kept; a change
    that takes a restart (the buffer's type) is said; the daemon never stops (it used to exit 129)."""
    d = Daemon(tmp_path, "")
    base = d.config.read_text()
    daemons.append(d.start())
    d.wait_for(lambda: d.delivered() == LINES, "every line delivered")
    assert d.proc is not None
    second, third = tmp_path / "second" / "events.jsonl", tmp_path / "third" / "events.jsonl"

    def reload(body: str, *says: str) -> None:
        d.config.write_text(base + body)
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        d.wait_for(lambda: all(x in d.text() for x in says), f"the reload to say {says!r}")
        d.log.write_text("")  # the next reload's message is looked for alone

    reload(f'[sinks.second]\ntype = "file"\npath = "{second}"\n', "sinks added=second removed=- changed=-")
    append_lines(d.data_root, LINES, 10)
    d.wait_for(lambda: d.delivered() == LINES + 10 and len(messages(second)) == 10, "the new sink to deliver")
    assert messages(second) == [f"line {k}" for k in range(LINES, LINES + 10)]

    reload(f'[sinks.second]\ntype = "file"\npath = "{third}"\n', "changed=second")
    append_lines(d.data_root, LINES + 10, 10)
    d.wait_for(lambda: d.delivered() == LINES + 20 and len(messages(third)) == 10, "the changed sink to deliver")
    assert len(messages(second)) == 10 and messages(third)[0] == f"line {LINES + 10}"

    reload('[multiline]\nmax_lines = -1\n', "reload refused", "multiline.max_lines")
    append_lines(d.data_root, LINES + 20, 5)
    d.wait_for(lambda: d.delivered() == LINES + 25 and len(messages(third)) == 15, "the old config to go on")

    reload('[buffer]\ntype = "disk"\n', "[buffer] changed, which takes a restart", "removed=second")
    append_lines(d.data_root, LINES + 25, 5)
    d.wait_for(lambda: d.delivered() == LINES + 30, "the remaining sink to deliver")
    time.sleep(0.5)
    assert len(messages(third)) == 15
    assert not (d.state / "spool").exists(), "the buffer's type must not change without a restart"
    assert d.proc.poll() is None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.text()
