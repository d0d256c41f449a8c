"""Runs the real `shipper run` as a child process and reads what it shipped (the file sink's JSON lines)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
RUNNING: set[Shipper] = set()  # daemons still running; tests/integration/conftest.py kills them after each test
WORKERS_ENV = "SHIPPER_PIPELINE_WORKERS"  # set for a whole run: every daemon with that many workers


def env_workers() -> int:
    """The workers every daemon of this run has (SHIPPER_PIPELINE_WORKERS, else one)."""
    return int(os.environ.get(WORKERS_ENV) or 1)


class Shipper:
    """One shipper daemon with its own state dir, output file and selection label."""

    def __init__(self, tmp: Path, extra_toml: str = "", select_label: str | None = None,
                 docker_toml: str = "", stats_secs: float = 0.0, file_sink: bool = True) -> None:
        """`extra_toml` goes after [multiline]; `{out}`, `{state}` and `{tmp}` in it become this daemon's
        paths. Without `file_sink`, extra_toml names every sink itself."""
        self.tmp = tmp
        self.run_id = select_label or uuid.uuid4().hex[:12]
        self.state = tmp / "state"
        self.out = tmp / "out.jsonl"
        self.config = tmp / "shipper.toml"
        self.log = tmp / "shipper.log"
        extra_toml = extra_toml.replace("{out}", str(self.out)).replace("{state}", str(self.state)) \
            .replace("{tmp}", str(tmp))
        sink = f'[sinks.out]\ntype = "file"\npath = "{self.out}"\nmax_bytes = 0\n' if file_sink else ""
        self.config.write_text(f"""
[docker]
poll_interval_secs = 0.05
{docker_toml}
[state]
dir = "{self.state}"
flush_interval_secs = 0.2
[select]
include_labels = ["shipper.test.run={self.run_id}"]
[telemetry]
stats_interval_secs = {stats_secs}
log_level = "debug"
[multiline]
flush_timeout_secs = 0.3
{extra_toml}
{sink}""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"shipper.test.run": self.run_id}

    def start(self) -> Shipper:
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        if "[pipeline]" in self.config.read_text():  # the test chose its workers: the run's choice gives way
            env.pop(WORKERS_ENV, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        RUNNING.add(self)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        RUNNING.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError(f"shipper did not stop within {timeout}s:\n{self.log_text()[-3000:]}") from None
        self._logf.close()
        if rc != 0 and sig == signal.SIGTERM:  # shown by pytest when the test's check of rc fails
            print(f"shipper exited rc={rc} after SIGTERM:\n{self.log_text()[-3000:]}")
        return rc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        end = data.rfind(b"\n") + 1
        return [orjson.loads(line) for line in data[:end].splitlines()]

    def wait_for(self, cond: Callable[[list[dict[str, Any]]], bool], timeout: float = 60,
                 what: str = "events") -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        evs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            evs = self.events()
            if cond(evs):
                return evs
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"shipper exited rc={self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; have {len(evs)} events\n"
                             f"{self.log_text()[-3000:]}")


def messages_of(evs: list[dict[str, Any]], name: str) -> list[str]:
    return [e["message"] for e in evs if e["container"]["name"] == name]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
