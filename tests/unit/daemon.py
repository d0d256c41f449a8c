"""`shipper run` as a process for the CLI tests, without Docker: discovery = "files" reads a data root laid out
as dockerd lays it out (config.v2.json, hostconfig.json and a json-file log per container), written here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

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


def append_lines(data_root: Path, first: int, n: int) -> None:
    with (data_root / "containers" / CID / f"{CID}-json.log").open("a") as f:
        for k in range(first, first + n):
            f.write(json.dumps({"log": f"line {k}\n", "stream": "stdout",
                                "time": f"2026-11-30T00:01:{k % 60:02d}.000000000Z"}) + "\n")


def messages(path: Path) -> list[str]:
    return [json.loads(line)["message"] for line in path.read_text().splitlines()] if path.exists() else []


def free_port() -> int:
    """A local port nothing listens on now (bound, then let go): for a server to take, or a dead address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This environment without SHIPPER_* and DOCKER_*, so only the test's config file counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SHIPPER_", "DOCKER_"))}


class Daemon:
    """`shipper run` on a data root of one container and one file sink `out`; `body` follows [sinks.out]
    (more sinks, a [buffer]), `admin` is the [admin] table's text when the test has one."""

    def __init__(self, tmp: Path, body: str = "", *, out: str = "out/events.jsonl", admin: str | None = None) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.out = tmp / out
        self.data_root = tmp / "docker"
        write_container(self.data_root)
        self.config = tmp / "shipper.toml"
        admin_table = "" if admin is None else f"docker_ping_interval_secs = 0\n[admin]\n{admin}\n"
        if body and not body.endswith("\n"):
            body += "\n"
        self.base = f"""
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
{admin_table}[sinks.out]
type = "file"
path = "{self.out}"
{body}"""
        self.config.write_text(self.base)
        self.log = tmp / "shipper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, stdin_config: bool = False, umask: int | None = None) -> Self:
        """Start it on the config file, or on `base` given on standard input (`--config -`)."""
        args = ["--config", "-"] if stdin_config else ["--config", str(self.config)]

        def set_umask() -> None:
            if umask is not None:
                os.umask(umask)
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", *args], stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.tmp, env=clean_env(),
                                         stdin=subprocess.PIPE if stdin_config else None,
                                         preexec_fn=None if umask is None else set_umask)
        if stdin_config:
            assert self.proc.stdin is not None
            self.proc.stdin.write(self.base.encode())
            self.proc.stdin.close()
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
        """Lines the sink `out` has written."""
        return len(self.out.read_text().splitlines()) if self.out.exists() else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
