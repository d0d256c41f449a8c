"""The daemon's pid file, `shipper.pid` in its state dir: how `shipper reload` finds the daemon to send SIGHUP
to when the admin server is off.

Written owner-only (0600) when `run` starts and removed when it stops; a crash leaves it behind, so a reader
never trusts it alone: the pid must name a live process whose command line is `shipper ... run` (a pid reused
by another program after a crash must never be signalled: SIGHUP ends most programs).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from shipper.atomicfile import write_atomic

PID_FILE = "shipper.pid"


def pid_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / PID_FILE


def write_pid_file(state_dir: str | os.PathLike[str]) -> Path:
    """This process's pid, replacing whatever an earlier run left; raises OSError."""
    path = pid_path(state_dir)
    write_atomic(path, f"{os.getpid()}\n".encode(), fsync=False)
    return path


def remove_pid_file(state_dir: str | os.PathLike[str]) -> None:
    """Remove the pid file if it still names this process (another daemon may have replaced it since)."""
    path = pid_path(state_dir)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


class NoDaemon(Exception):
    """No running daemon is named by the pid file; the message says why."""


def is_shipper_run(cmdline: list[str]) -> bool:
    """A `shipper run` command line: `shipper run ...`, `python3 -m shipper run ...`, options before `run`."""
    words = [os.path.basename(w) for w in cmdline]
    try:
        at = words.index("shipper")
    except ValueError:
        return False
    return "run" in words[at + 1:]


def daemon_pid(state_dir: str | os.PathLike[str]) -> int:
    """The pid of the `shipper run` whose state dir this is; NoDaemon when the file is missing or stale."""
    path = pid_path(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise NoDaemon(f"no pid file at {path}: the daemon is not running with this state dir") from None
    except OSError as e:
        raise NoDaemon(f"cannot read {path}: {e.strerror or e}") from None
    try:
        pid = int(text)
    except ValueError:
        raise NoDaemon(f"{path} holds no pid ({text[:40]!r})") from None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
    except OSError:
        raise NoDaemon(f"{path} names pid {pid}, which is not running (left by a daemon that did not stop "
                       f"cleanly)") from None
    if not is_shipper_run(cmdline):
        raise NoDaemon(f"{path} names pid {pid}, which is not shipper ({' '.join(cmdline)[:80]!r}): left by a "
                       f"daemon that did not stop cleanly") from None
    return pid
