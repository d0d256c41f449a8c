"""Watches the Docker daemon itself, apart from discovery: is it answering, how fast, which daemon is it.

Every `telemetry.docker_ping_interval_secs` it pings the Engine API (the latency into a histogram, up/down
into a gauge), reads /info (version, API version, daemon ID, containers by state) and measures the
json-file logs on disk (their bytes under the data root, the free space of the filesystem holding them).

A restart of dockerd is seen when its ID changes, or its start time does: the API does not say when the
daemon started, so that is read from its process (`/var/run/docker.pid` and /proc) when shipper shares the
host's PID namespace; otherwise a ping that fails and then answers again with another API session is the
only sign, logged as an outage, not a restart. The events stream's health (connected, seconds since its last
event: any event dockerd sent on it, whether or not it changed a container shipper reads) comes from
discovery, which owns that stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipper.errors import DockerError
from shipper.telemetry import events as tel

if TYPE_CHECKING:
    from collections.abc import Callable

    from shipper.docker.client import DockerClient
    from shipper.docker.discovery import ContainerDiscovery
    from shipper.telemetry.metrics import Metrics

log = logging.getLogger("shipper.docker")
PID_FILE = "/var/run/docker.pid"
DISK_EVERY = 6  # the logs on disk are measured every this many pings (a walk of the data root)
STATES = ("running", "paused", "stopped")


@dataclass
class DaemonInfo:
    version: str = ""
    api_version: str = ""
    daemon_id: str = ""
    started: float = 0.0  # unix time, 0 when it cannot be read


def daemon_start_time(pid_file: str = PID_FILE) -> float:
    """The unix time the dockerd named by `pid_file` started, from /proc; 0.0 when it cannot be read."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime, in clock ticks after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def json_log_usage(data_root: str) -> int:
    """Bytes of json-file logs (live and rotated) under `data_root`/containers."""
    total = 0
    base = os.path.join(data_root, "containers")
    try:
        dirs = os.scandir(base)
    except OSError:
        return 0
    with dirs:
        for d in dirs:
            with contextlib.suppress(OSError), os.scandir(d.path) as files:
                for f in files:
                    if "-json.log" in f.name:
                        with contextlib.suppress(OSError):
                            total += f.stat(follow_symlinks=False).st_size
    return total


class DockerWatch:
    def __init__(self, client: Callable[[], DockerClient | None], metrics: Metrics, data_root: str,
                 interval: float, discovery: Callable[[], ContainerDiscovery | None] | None = None,
                 pid_file: str = PID_FILE) -> None:
        """`client`: the app's current Engine API client (it is replaced when discovery restarts).
        `discovery`: the app's current discovery, owner of the /events stream (connected, its last event)."""
        self._client = client
        self._metrics = metrics
        self._data_root = data_root
        self._interval = interval
        self._discovery = discovery
        self._pid_file = pid_file
        self.up: bool | None = None
        self.ping_secs: float | None = None
        self.info = DaemonInfo()
        self.restarts = 0
        self.last_restart = 0.0
        self.containers: dict[str, int] = {}
        self.log_bytes: int | None = None
        self.fs_free: int | None = None
        self.fs_size: int | None = None
        self.last_error = ""
        self._pings = 0

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)

    async def check(self) -> None:
        """One round: ping, and when it answers, /info; the logs on disk every DISK_EVERY rounds."""
        client = self._client()
        if client is not None:
            await self._ping(client)
        if self._pings % DISK_EVERY == 0:
            await asyncio.to_thread(self._measure_disk)
        self._pings += 1
        self._events_gauges()

    async def _ping(self, client: DockerClient) -> None:
        t0 = time.perf_counter()
        try:
            await client.ping()
        except DockerError as e:
            self._set_up(False, str(e))
            return
        self.ping_secs = time.perf_counter() - t0
        self._metrics.observe("shipper_docker_ping_seconds", self.ping_secs)
        self._set_up(True, "")
        try:
            info = await client._json("GET", "/info")
            version = await client.version()
        except DockerError as e:
            self.last_error = str(e)
            return
        if isinstance(info, dict):
            self._read_info(info, version)

    def _set_up(self, up: bool, error: str) -> None:
        if error:
            self.last_error = error
        if up != self.up:
            tel.docker_daemon_up(self._metrics, up, error, first=self.up is None)
        self.up = up

    def _read_info(self, info: dict[str, Any], version: dict[str, Any]) -> None:
        new = DaemonInfo(str(info.get("ServerVersion") or version.get("Version") or ""),
                         str(version.get("ApiVersion") or ""), str(info.get("ID") or ""),
                         daemon_start_time(self._pid_file))
        old = self.info
        if old.daemon_id and (new.daemon_id != old.daemon_id
                              or (new.started and old.started and abs(new.started - old.started) > 1.0)):
            self.restarts += 1
            self.last_restart = time.time()
            tel.docker_restarted(self._metrics, old.started, new.started, old.daemon_id, new.daemon_id,
                                 new.version)
        if (new.version, new.api_version, new.daemon_id) != (old.version, old.api_version, old.daemon_id):
            self._metrics.clear("shipper_docker_info")
            self._metrics.set("shipper_docker_info", 1, version=new.version, api_version=new.api_version,
                              daemon_id=new.daemon_id)
        if new.started:
            self._metrics.set("shipper_docker_start_time_seconds", new.started)
        self.info = new
        self.containers = {s: int(info.get(f"Containers{s.capitalize()}") or 0) for s in STATES}
        for s, n in self.containers.items():
            self._metrics.set("shipper_docker_containers", n, state=s)

    def _measure_disk(self) -> None:
        self.log_bytes = json_log_usage(self._data_root)
        self._metrics.set("shipper_docker_log_bytes", self.log_bytes)
        try:
            st = os.statvfs(self._data_root)
        except OSError:
            return
        self.fs_free, self.fs_size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        self._metrics.set("shipper_docker_log_fs_free_bytes", self.fs_free)
        self._metrics.set("shipper_docker_log_fs_size_bytes", self.fs_size)

    def _events_gauges(self) -> tuple[bool | None, float | None]:
        if self._discovery is None:
            return None, None
        d = self._discovery()
        connected, last = (d.events_connected, d.last_event) if d is not None else (False, 0.0)
        age = time.monotonic() - last if last else None
        self._metrics.set("shipper_docker_events_connected", int(connected))
        if age is not None:
            self._metrics.set("shipper_docker_last_event_age_seconds", round(age, 3))
        return connected, age

    def snapshot(self) -> dict[str, Any]:
        connected, age = self._events_gauges()
        i = self.info
        return {"up": self.up, "ping_ms": round(self.ping_secs * 1000, 2) if self.ping_secs is not None else None,
                "version": i.version, "api_version": i.api_version, "daemon_id": i.daemon_id,
                "started": _iso(i.started), "restarts_seen": self.restarts, "last_restart": _iso(self.last_restart),
                "events_connected": connected, "secs_since_last_event": round(age, 1) if age is not None else None,
                "reconnects": int(self._metrics.get("shipper_docker_reconnects_total", where="events")),
                "containers": self.containers, "json_log_bytes": self.log_bytes, "log_fs_free_bytes": self.fs_free,
                "log_fs_size_bytes": self.fs_size, "last_error": self.last_error}


def _iso(t: float) -> str | None:
    if not t:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
