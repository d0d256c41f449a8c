"""`shipper run` as a process: the files it writes are owner-only whatever the umask; a second SIGTERM stops at
once with offsets saved; SIGHUP no longer kills it.

Docker is not needed: discovery = "files" reads a data root written by the test (tests/unit/daemon.py).
"""

from __future__ import annotations

import grp
import os
import signal
import stat
import time
from pathlib import Path
from typing import Self

import pytest

from tests.unit.daemon import CID, LINES, Daemon, append_lines, free_port, messages


class RunDaemon(Daemon):
    def start(self, *, stdin_config: bool = False, umask: int | None = 0o022) -> Self:
        """Under a umask that lets others read, so the modes tested are the daemon's own doing."""
        return super().start(stdin_config=stdin_config, umask=umask)


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
    d = RunDaemon(tmp_path, f'[sinks.shared]\ntype = "file"\npath = "{shared}"\nmode = "0640"\ngroup = "{g.gr_name}"\n'
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
    d = RunDaemon(tmp_path, f'[sinks.down]\ntype = "syslog"\naddress = "tcp://127.0.0.1:{free_port()}"\n'
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


def test_sighup_reloads_the_sinks_and_never_kills_it(tmp_path: Path, daemons: list[Daemon]) -> None:
    """SIGHUP applies added, changed and removed sinks; a bad config is refused and the old one kept; a change
    that takes a restart (the buffer's type) is said; the daemon never stops (it used to exit 129)."""
    d = RunDaemon(tmp_path, "")
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
