"""A `shipper run` daemon with its admin server on a free loopback port, and ways to read it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import ROOT, Shipper

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ALIKE = ("shipper_docker_", "shipper_build_info")  # gauges every worker reports alike
WORKER_PREFIX = re.compile(r"^worker \d+: ")  # what a supervisor puts before a worker's health problem


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AdminShipper(Shipper):
    """The harness's daemon, with `[admin] address` on a free port (the ping interval through the environment
    the daemon inherits: SHIPPER_TELEMETRY_DOCKER_PING_INTERVAL_SECS)."""

    def __init__(self, tmp: Path, extra_toml: str = "", **kw: Any) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(tmp, extra_toml + f'\n[admin]\naddress = "127.0.0.1:{self.port}"\n', **kw)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/health")
        return code, orjson.loads(body)

    def metrics(self, by_worker: bool = False) -> Samples:
        """/metrics, read by prometheus_client's own text parser. With workers (`[pipeline] workers`), each
        series is one process's view unless `by_worker`: added over the workers, but for what every worker
        sees alike (dockerd's state) which is the highest; the supervisor's own series (shipper_workers_up)
        keep their label."""
        code, body = self.get("/metrics")
        assert code == 200
        out: Samples = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                own = fam.name.startswith("shipper_worker")
                labels = {k: v for k, v in s.labels.items() if by_worker or own or k != "worker"}
                key = (s.name, tuple(sorted(labels.items())))
                if key not in out:
                    out[key] = s.value
                elif fam.name.startswith(ALIKE):
                    out[key] = max(out[key], s.value)
                else:
                    out[key] += s.value
        return out

    def wait_admin(self, timeout: float = 30) -> None:
        self.until(lambda: self.get("/ready")[0] == 200, timeout, "the admin server to say ready")

    def until(self, cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = cond()
            except OSError as e:  # not listening yet
                last = e
            if last and not isinstance(last, BaseException):
                return last
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"shipper exited rc={self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(every)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{self.log_text()[-3000:]}")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shipper", *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1]).get(label, ""): v for k, v in samples.items() if k[0] == name}
