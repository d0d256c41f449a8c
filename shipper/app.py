"""Wires the pipeline and owns its lifecycle: docker -> sources -> buffer -> sinks.

One TaskGroup supervises everything: a task per sink runner, one for discovery, one per container reader,
one that saves offsets. Readers push batches into the bounded buffer (a full buffer slows reading, never
grows memory); each sink runner reads its own cursor. Shutdown (SIGTERM/SIGINT) stops discovery and the
readers, lets the sinks drain the buffer until a deadline, then saves offsets: whatever was not delivered
by then is re-read (memory buffer) or still in the spool (disk buffer) at the next start.

The Engine API client is the app's: made at start (a TLS setting that cannot be honoured stops the start
there), handed to discovery, and replaced (the old one closed) when discovery is restarted after a failure;
API readers ask for the current one at every connection.

No reader is built on a guess. A `start` made from an event alone (`info.guessed`: the json-file driver, its
default path and no TTY are assumed) starts a json-file reader at once only when that file is there to be
read (which proves the driver); otherwise the container waits in `pending` for the inspect's `update`. When
an update changes what a running reader was built for (which reader, the file, the TTY), the reader is
rebuilt: the old one is stopped and closed before the new one starts (from the offset saved when it was
built: at worst what the old one had read is read again, never skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shipper.backoff import Backoff, pause
from shipper.buffer.base import Buffer
from shipper.buffer.memory import MemoryBuffer
from shipper.config import BufferType, Config, Discovery, ReadMode
from shipper.docker.metadata import JSON_FILE, ContainerInfo, default_log_path, own_container_id
from shipper.errors import ConfigError, SpoolError
from shipper.event import Batch, Checkpoint
from shipper.pidfile import remove_pid_file, write_pid_file
from shipper.preflight import make_state_dir, may
from shipper.sinks import sink_class
from shipper.sinks.base import SinkBase, SinkContext
from shipper.sinks.runner import SinkRunner
from shipper.sources.base import LogSource, SourceContext
from shipper.sources.offsets import OffsetStore
from shipper.telemetry import events as tel
from shipper.telemetry.config import ADMIN_RETRY_SECS
from shipper.telemetry.metrics import Metrics
from shipper.telemetry.status import Status
from shipper.transforms.select import Selector
from shipper.workers import DRAINED_MARK, Shard

if TYPE_CHECKING:
    from shipper.docker.client import DockerClient, Endpoint
    from shipper.docker.discovery import ContainerDiscovery
    from shipper.docker.watch import DockerWatch
    from shipper.sinks.base import Request
    from shipper.sinks.runner import Delivery
    from shipper.sources.jsonfile.keeper import LogKeeper
    from shipper.telemetry.admin import AdminServer

log = logging.getLogger("shipper")
SHUTDOWN_DRAIN_SECS = 10.0  # readers being replaced or stopped get this long to close
SINK_CLOSE_SECS = 10.0  # a sink's close() at shutdown (1 s after a second stop signal)
STUCK_REPORT_SECS = 5.0  # after the drain, tasks still running this long are named in the log
PENDING_WARN_SECS = 30.0  # a container still waiting for its inspect after this long is reported
GC_THRESHOLDS = (50_000, 20, 100)  # see tune_gc
FORGET_REMOVED_AFTER_SECS = 300.0  # offsets of removed containers are kept this long, then pruned


def tune_gc() -> None:
    """The hot path allocates millions of short-lived objects (entries, events) that reference counting frees
    at once; with CPython's default threshold (700) the cyclic collector still runs thousands of times a
    second and walks every live object. Freezing what start-up built and raising the first threshold cut
    CPU per entry by 10% (memory buffer) to 17% (disk spool) on the reference workload (medians of 5 and 3
    whole-process runs of benchmarks/pipeline_bench.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class Reader:
    source: LogSource
    task: asyncio.Task[None]
    kind: str


@dataclass
class Pending:
    """A container started from its event alone, waiting for the inspect that says how to read it."""

    info: ContainerInfo
    since: float  # monotonic
    reported: bool = False


Choice = Literal["files", "api", "wait", "none"]


@dataclass
class App:
    """One whole pipeline. Under a supervisor (`[pipeline] workers`), a worker reads only the containers
    of its `shard`, keeps its state in its own folder, and writes default sink files under `root_dir`; with
    `drain_only` it reads nothing and stops once every sink has delivered what its spool holds."""

    config: Config
    metrics: Metrics = field(default_factory=lambda: Metrics(process=True))
    shard: Shard | None = None
    root_dir: Path | None = None  # the configured state dir (a worker's own is a folder under it)
    drain_only: bool = False

    def __post_init__(self) -> None:
        self.state_dir = self.config.state.path
        self.files_dir: Path = self.root_dir or self.state_dir  # where sinks put their default files
        self.offsets = OffsetStore(self.state_dir)
        self.buffer: Buffer | None = None
        self.runners: dict[str, SinkRunner] = {}
        self.readers: dict[str, Reader] = {}
        self.removed_at: dict[str, float] = {}
        self.selector = Selector(self.config.select)
        self.own_id = None if self.config.select.include_self else own_container_id()
        self.docker: DockerClient | None = None  # the current Engine API client (the app owns and closes it)
        self._endpoint: Endpoint | None = None
        self.keeper: LogKeeper | None = None
        self._discovery_runs = 0
        self.discovery: ContainerDiscovery | None = None
        self.pending: dict[str, Pending] = {}
        self._stop = asyncio.Event()
        self._forced = asyncio.Event()  # a second stop signal: no more waiting for the sinks
        self._tasks: asyncio.TaskGroup | None = None
        self.started = asyncio.Event()
        self._spool_failing = False  # a push failed and none has succeeded since
        self.ops = Status(self)  # what /status, /health and the page say
        self.admin: AdminServer | None = None
        self.docker_watch: DockerWatch | None = None
        self._gone_labels: dict[str, str] = {}  # id of a removed container -> its metric label
        self.reload_config: Callable[[], Config] | None = None  # set by `shipper run`: reads the config again
        self.sink_tasks: dict[str, asyncio.Task[None]] = {}  # sink name -> the task running its runner
        self._reloading: asyncio.Task[bool] | None = None
        self.reload_refusal = ""  # why the last reload was refused ("" when it was applied)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """The first SIGTERM/SIGINT drains for up to buffer.shutdown_drain_secs; a second stops at once (what
        was not delivered is re-read or still in the spool at the next start), offsets saved either way."""
        if self._stop.is_set():
            if not self._forced.is_set():
                log.warning("second stop signal: stopping now without waiting for the sinks; offsets are saved, "
                            "what was not delivered is re-read (memory buffer) or still in the spool")
            self._forced.set()
            return
        log.info("stopping: draining buffered events for up to %.0fs (a second signal stops at once), then "
                 "saving offsets", self.config.buffer.shutdown_drain_secs)
        self._stop.set()

    def _on_hangup(self) -> None:
        self.request_reload("SIGHUP")

    def request_reload(self, why: str) -> asyncio.Task[bool] | None:
        """Read the config again and apply its sinks (shipper.reload), in a task of its own; never stops the
        daemon. `why` (SIGHUP, an admin request) is logged. None when no reload was started."""
        if self.reload_config is None or self._tasks is None:
            log.warning("%s received: this config cannot be read again (it came from standard input, or shipper "
                        "is not running yet); still running with the config it started with", why)
            return None
        if self._reloading is not None and not self._reloading.done():
            log.warning("%s received while a reload is still running: ignored", why)
            return None
        if self._stop.is_set():  # a sink started now could outlive the runners shutdown cancels
            log.warning("%s received while stopping: ignored", why)
            return None
        from shipper.reload import reload

        log.info("%s received: reloading the config", why)
        self._reloading = self._tasks.create_task(reload(self, self.reload_config), name="reload")
        return self._reloading

    async def _resolve_host_name(self) -> None:
        """host.name, once, before anything uses it: inside a container shipper's own host name is the
        container id, so ask the Engine API for the Docker host's name (host.name and host.name_file win)."""
        hc = self.config.host
        if hc.name:
            return
        name = hc.resolved_name
        in_container = bool(own_container_id() or os.path.exists("/.dockerenv"))
        if in_container and not hc.name_file and self.docker is None:
            log.warning("running in a container with no Engine API to ask for the host's name: host.name=%s is "
                        "the container's (set host.name, or host.name_file to the host's /etc/hostname mounted "
                        "read-only)", name)
        if not hc.name_file and self.docker is not None and in_container:
            try:
                async with asyncio.timeout(10):
                    info = await self.docker._json("GET", "/info", versioned=False)  # the client has no info()
                if isinstance(info, dict) and isinstance(info.get("Name"), str) and info["Name"]:
                    name = info["Name"]
            except Exception as e:  # dockerd not up yet: the container's name is better than no start
                log.warning("cannot ask the Engine API for the host's name, host.name=%s (set host.name or "
                            "host.name_file) error=%r", name, e)
        self.config = dataclasses.replace(self.config, host=dataclasses.replace(hc, name=name))

    async def run(self) -> None:
        """Run until request_stop(); then shut down in order."""
        make_state_dir(self.state_dir)
        if not self.drain_only:
            self._open_docker()
            self._start_keeper()
        await self._resolve_host_name()
        tune_gc()
        self.offsets.load()
        self.buffer = await self._open_buffer()
        self.offsets.flush()  # checkpoints the spool recovered at open are durable before reading starts
        self._make_runners()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            if self.root_dir is None:  # under a supervisor (a worker, a drain) the supervisor has the pid file
                write_pid_file(self.state_dir)  # once SIGHUP is handled: `shipper reload` finds this process by it
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                for n, r in self.runners.items():
                    self.sink_tasks[n] = tg.create_task(self._supervised(f"sink:{n}", r.run), name=f"sink:{n}")
                background = [tg.create_task(self._supervised("offsets", self._save_offsets_periodically),
                                             name="offsets")]
                background.append(tg.create_task(self._supervised("discovery", self._discover), name="discovery")
                                  if not self.drain_only else
                                  tg.create_task(self._supervised("drain", self._stop_when_drained), name="drain"))
                if self.config.telemetry.stats_interval_secs > 0:
                    background.append(tg.create_task(self._supervised("stats", self._log_stats), name="stats"))
                background.append(tg.create_task(self._supervised("status", self.ops.run), name="status"))
                watch = self._make_docker_watch()
                if watch is not None:
                    background.append(tg.create_task(self._supervised("docker-watch", watch.run),
                                                     name="docker-watch"))
                admin_retry = await self._start_admin()
                if admin_retry is not None:
                    background.append(admin_retry)
                self.started.set()
                await self._stop.wait()
                for t in background:
                    t.cancel()
                await self._stop_readers()
                await self._drain(self.config.buffer.shutdown_drain_secs)
                if self._reloading is not None:  # begun before the stop: it must not start a sink after this
                    self._reloading.cancel()
                for t in self.sink_tasks.values():
                    t.cancel()
                stuck = asyncio.get_running_loop().call_later(STUCK_REPORT_SECS, _report_stuck_tasks,
                                                              asyncio.current_task())
            stuck.cancel()
        finally:
            if self.root_dir is None:
                remove_pid_file(self.state_dir)  # before SIGHUP's handler goes: a reload sent later finds no daemon
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await self._close()

    async def _open_buffer(self) -> Buffer:
        bc = self.config.buffer
        if bc.type is BufferType.DISK:
            from shipper.buffer.spool import DiskSpool

            spool = DiskSpool(self.state_dir / "spool", bc, self.metrics, self._safe)
            await spool.open()
            for name in spool.known_cursors():
                if name not in self.config.sinks:
                    log.warning("sink %s is no longer configured: its spool cursor is dropped, so what it had not "
                                "delivered no longer holds the spool (replay can still send what is retained)", name)
                    spool.remove_cursor(name)
            return spool
        return MemoryBuffer(self._safe, self.metrics, bc.max_events, bc.limit_bytes, bc.when_full)

    async def _push(self, batch: Batch) -> None:
        """The readers' emit: push into the buffer; while the spool cannot take it (disk full, I/O error) wait
        and try again, so reading stops and Docker's own files keep the logs meanwhile."""
        assert self.buffer is not None
        backoff = Backoff(0.5, 30.0, floor=0.1)  # every try writes: a floor keeps a full disk from being spun on
        self.ops.push_started(batch)  # a push that waits long means reading is paused (the page says so)
        try:
            while True:
                try:
                    await self.buffer.push(batch)
                    self.ops.pushed(batch)
                    if self._spool_failing:  # said once per outage, by the first reader through
                        self._spool_failing = False
                        log.warning("spool writable again, reading resumed (write errors so far: %d)",
                                    self.metrics.get("shipper_spool_write_errors_total"))
                    return
                except SpoolError as e:
                    self._spool_failing = True
                    delay = backoff.next_delay()
                    tel.spool_push_failed(self.metrics, e, delay)
                    await pause(delay)
        finally:
            self.ops.push_ended(batch)

    def _safe(self, cp: Checkpoint) -> None:
        if not self.drain_only:  # a drained spool's containers belong to the workers reading them now
            self.offsets.commit(cp)

    async def _stop_when_drained(self) -> None:
        """A drain worker's end: every sink has delivered what the spool held."""
        while True:
            await asyncio.sleep(0.5)
            if self.runners and all(r.cursor is None or not r.cursor.pending() for r in self.runners.values()):
                await asyncio.to_thread((self.state_dir / DRAINED_MARK).touch, 0o600)
                log.info("spool drained: every sink has delivered it; stopping")
                self.request_stop()
                return

    def _make_runners(self) -> None:
        assert self.buffer is not None
        for name, sc in self.config.sinks.items():
            self.runners[name] = self._make_runner(name, sc)

    def _make_runner(self, name: str, sc: SinkBase) -> SinkRunner:
        assert self.buffer is not None
        sink = sink_class(sc.type)(sc, SinkContext(name, self.files_dir, self.config.host.resolved_name,
                                                   self.metrics))
        runner = _TrackedRunner(name, sink, self.buffer.cursor(name), self.metrics)
        runner.on_delivered = self.ops.delivered
        return runner

    def start_sink(self, name: str, sc: SinkBase) -> None:
        """A sink added or changed by a reload: its runner on the sink's cursor (new, or the old one rewound)."""
        assert self._tasks is not None
        runner = self.runners[name] = self._make_runner(name, sc)
        self.sink_tasks[name] = self._tasks.create_task(self._supervised(f"sink:{name}", runner.run),
                                                        name=f"sink:{name}")

    async def stop_sink(self, name: str, remove_cursor: bool) -> None:
        """A sink removed or changed by a reload: its runner stopped (requests in flight are not acked: the
        cursor hands them out again), the sink closed; a removed sink's cursor no longer holds the buffer."""
        task = self.sink_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        runner = self.runners.pop(name, None)
        if runner is not None:
            try:
                async with asyncio.timeout(SINK_CLOSE_SECS):
                    await runner.sink.close()
            except Exception as e:
                log.warning("sink close failed sink=%s error=%r", name, e)
        if remove_cursor and self.buffer is not None:
            self.buffer.remove_cursor(name)

    async def _stop_readers(self) -> None:
        readers = list(self.readers.values())
        for r in readers:
            r.task.cancel()
        if readers:  # bounded: a reader that does not end is named by the stuck-task report below
            await asyncio.wait([r.task for r in readers], timeout=SHUTDOWN_DRAIN_SECS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECS):
                for r in readers:
                    await r.source.close()
        self.readers.clear()

    async def _drain(self, deadline_secs: float) -> None:
        """Give the sinks until the deadline to deliver what is buffered."""
        end = time.monotonic() + deadline_secs
        pending: dict[str, int] = {}
        while time.monotonic() < end and not self._forced.is_set():
            pending = {n: r.cursor.pending() for n, r in self.runners.items() if r.cursor is not None}
            if not any(pending.values()):
                return
            await asyncio.sleep(0.05)
        log.warning("shutdown deadline reached with events undelivered pending=%s (they are re-read or kept "
                    "in the spool at the next start)", pending)

    async def _close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        for name, r in self.runners.items():
            try:
                async with asyncio.timeout(1.0 if self._forced.is_set() else SINK_CLOSE_SECS):
                    await r.sink.close()
            except Exception as e:
                log.warning("sink close failed sink=%s error=%r", name, e)
        if self.buffer is not None:
            await self.buffer.close()
        if self.docker is not None:
            await self.docker.close()
            self.docker = None
        if self.keeper is not None:
            self.keeper.close()
            self.keeper = None
        self.offsets.flush()
        log.info("stopped; offsets saved in %s", self.state_dir)

    # --- discovery and readers ---------------------------------------------------------------------------

    def _start_keeper(self) -> None:
        """Hold new containers' json-file logs open from their creation, so that one removed (`--rm`) before
        its reader starts is still read whole; not needed when logs are read from the Engine API only."""
        if self.config.docker.read is ReadMode.API or self.keeper is not None:
            return
        from shipper.sources.jsonfile.keeper import LogKeeper

        keeper = LogKeeper(self.config.docker.data_root, wanted=self.shard.owns if self.shard else None)
        if keeper.start():
            self.keeper = keeper

    def _open_docker(self) -> None:
        """The Engine API client, when discovery uses the API: its endpoint is resolved here, at start, so that
        a TLS file that is missing or a TLS setting that cannot be honoured stops shipper with a ConfigError
        naming the key or variable, instead of failing (or worse, talking plain HTTP) later."""
        if self.config.docker.discovery is not Discovery.API or self.docker is not None:
            return
        from shipper.docker.client import DockerClient, endpoint_from_config

        try:
            self._endpoint = endpoint_from_config(self.config.docker)
        except ConfigError as e:
            log.error("cannot start: config error: %s", e)
            raise
        self.docker = DockerClient(self._endpoint, metrics=self.metrics)

    async def _replace_docker(self, why: str) -> None:
        """A new client for a restarted discovery; the old one is closed (API readers reconnect through the
        new one: they ask for the current client at every connection)."""
        if self._endpoint is None:
            return
        from shipper.docker.client import DockerClient

        old, self.docker = self.docker, DockerClient(self._endpoint, metrics=self.metrics)
        log.warning("Docker API client replaced (%s); the old one is closed, API readers reconnect through the "
                    "new one", why)
        if old is not None:
            await old.close()

    def _discovery(self) -> ContainerDiscovery:
        cfg = self.config
        if cfg.docker.discovery is Discovery.FILES:
            from shipper.docker.discovery import FileDiscovery

            return FileDiscovery(cfg, self.metrics)
        from shipper.docker.discovery import ApiDiscovery

        assert self.docker is not None
        return ApiDiscovery(self.docker, cfg, self.metrics)  # the app's client: discovery does not close it

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a long-lived task, restarting it with backoff if it fails: one bug must not stop the daemon."""
        backoff = Backoff(1.0, 30.0, floor=0.1)  # a floor: each failure logs a traceback
        while True:
            try:
                await run()
                return
            except Exception:
                self.metrics.inc("shipper_task_restarts_total", task=name)
                delay = backoff.next_delay()
                log.exception("task failed, restarting it task=%s retry_in=%.1fs", name, delay)
                await pause(delay)

    async def _discover(self) -> None:
        if self._discovery_runs:  # restarted after a failure: a fresh client, the old one closed
            await self._replace_docker("discovery restarted")
        self._discovery_runs += 1
        discovery = self.discovery = self._discovery()
        try:
            async for change in discovery:
                try:
                    self._apply(change)
                except Exception:  # a container we cannot handle must not stop discovery of the others
                    log.exception("could not handle container change kind=%s id=%s", change.kind, change.id[:12])
        finally:
            await discovery.close()

    def _apply(self, change: Any) -> None:
        cid, info = change.id, change.info
        if change.kind == "remove":
            waiting = self.pending.pop(cid, None)
            if waiting is not None:
                tel.container_unreadable(self.metrics, waiting.info.meta.name or cid[:12], "gone_before_inspect",
                                         "removed before an inspect said how to read its log (driver, TTY)")
            reader = self.readers.get(cid)
            if reader is not None:
                reader.source.removed()
                self.removed_at[cid] = time.monotonic()
                self._gone_labels[cid] = reader.source.meta.name or cid[:12]
            return
        if cid in self.pending:
            if info is None:
                return
            if change.kind in ("start", "update") or not info.guessed:
                del self.pending[cid]
                self._start_reader(info)  # waits again if this is still a guess
            else:  # rename, stop: keep the latest picture for when the inspect answers
                self.pending[cid].info = info
            return
        reader = self.readers.get(cid)
        if change.kind == "start":
            if reader is None or reader.task.done():
                self._start_reader(info)
            elif info is not None and not self._rebuilt(reader, info):
                self._refresh(reader, info)
                reader.source.started()
        elif reader is None:
            return
        elif change.kind in ("rename", "update") and info is not None:
            if not self._rebuilt(reader, info):
                self._refresh(reader, info)
        elif change.kind == "stop":
            reader.source.stopped()

    @staticmethod
    def _refresh(reader: Reader, info: ContainerInfo) -> None:
        if info.guessed:  # a restart seen from its event: only the metadata is news
            reader.source.renamed(info.meta)
        else:
            reader.source.refreshed(info)

    def _json_readable(self, info: ContainerInfo, exists: bool) -> bool:
        """The json-file can be read: it is there (`exists`), or its folder is readable (created next)."""
        path = info.log_path or default_log_path(self.config.docker.data_root, info.meta.id)
        if self.keeper is not None and self.keeper.has(path):
            return True  # held open since dockerd created it, though the container may be gone already
        return may(path, os.R_OK) or (not exists and may(os.path.dirname(path), os.R_OK))  # capabilities count

    def _choose(self, info: ContainerInfo) -> tuple[Choice, str]:
        """Which reader `info` calls for, or why none: never on a guess. A guessed json-file that is there to
        read proves the guess (only that driver writes it), and is opened at once: a container removed with
        --rm a moment later is still read whole. Anything else waits for the inspect."""
        mode = self.config.docker.read
        if info.guessed:
            if mode is not ReadMode.API and self._json_readable(info, exists=True):
                return "files", ""
            return "wait", ""
        json_file = info.log_driver == JSON_FILE
        if mode is ReadMode.FILES:
            if json_file:
                return "files", ""
            return "none", (f"read = 'files', but its log driver is {info.log_driver!r}, which writes no "
                            f"json-file (read = 'auto' or 'api' streams it from the Engine API)")
        if mode is ReadMode.AUTO and json_file and self._json_readable(info, exists=False):
            return "files", ""
        if self.docker is None:
            return "none", (f"its log is not a readable json-file (driver={info.log_driver}) and "
                            f"discovery = 'files' has no Engine API to stream it from")
        return "api", ""

    def _start_reader(self, info: ContainerInfo) -> None:
        meta = info.meta
        if self.shard is not None and not self.shard.owns(meta.id):
            return  # another worker's
        ok, reason = self.selector.decide(meta)
        if meta.id == self.own_id:
            ok, reason = False, "shipper's own container (select.include_self = false)"
        if not ok:
            log.debug("not shipping container name=%s id=%s reason=%s", meta.name, meta.id[:12], reason)
            return
        choice, why = self._choose(info)
        if choice == "wait":
            self.pending[meta.id] = Pending(info, time.monotonic())
            log.debug("waiting for inspect before reading container name=%s id=%s (its start event does not "
                      "say its log driver or TTY)", meta.name, meta.id[:12])
            return
        if choice == "none":
            tel.container_unreadable(self.metrics, meta.name or meta.id[:12], "no_reader", why)
            return
        source = self._make_source(info, choice)
        assert self._tasks is not None
        task = self._tasks.create_task(self._read(source), name=f"reader:{meta.name}")
        self.readers[meta.id] = Reader(source, task, type(source).__name__)
        self.removed_at.pop(meta.id, None)
        self.metrics.set("shipper_containers", len(self.readers))
        log.info("reading container name=%s id=%s image=%s via=%s", meta.name, meta.id[:12], meta.image,
                 type(source).__name__)

    def _rebuilt(self, reader: Reader, info: ContainerInfo) -> bool:
        """Replace `reader` when `info` calls for another one (driver, path or TTY changed); True if it did."""
        if info.guessed:
            return False
        choice, _ = self._choose(info)
        have = reader.source.info
        if choice == "files":
            from shipper.sources.jsonfile import JsonFileSource

            if not isinstance(reader.source, JsonFileSource):
                why = f"its log is a readable json-file (driver={info.log_driver})"
            elif self._path(have) != self._path(info):
                why = f"log path {self._path(have)} -> {self._path(info)}"
            else:
                return False
        elif choice == "api":
            from shipper.sources.api import ApiSource

            if not isinstance(reader.source, ApiSource):
                why = f"its log is streamed from the Engine API (driver={info.log_driver})"
            elif have.tty != info.tty:
                why = f"tty {have.tty} -> {info.tty}"
            else:
                return False
        else:
            return False
        meta = info.meta
        log.warning("rebuilding reader container=%s id=%s: %s", meta.name, meta.id[:12], why)
        source = self._make_source(info, choice)
        assert self._tasks is not None
        task = self._tasks.create_task(self._read_after(reader, source), name=f"reader:{meta.name}")
        self.readers[meta.id] = Reader(source, task, type(source).__name__)
        return True

    def _path(self, info: ContainerInfo) -> str:
        return info.log_path or default_log_path(self.config.docker.data_root, info.meta.id)

    def _make_source(self, info: ContainerInfo, choice: Choice) -> LogSource:
        assert self.buffer is not None
        ctx = SourceContext(self.config, self.metrics, self._push, self.docker,
                            current_docker=lambda: self.docker, keeper=self.keeper)
        resume = self.offsets.get(info.meta.id)
        if choice == "files":
            from shipper.sources.jsonfile import JsonFileSource

            return JsonFileSource(info, ctx, resume)
        from shipper.sources.api import ApiSource

        return ApiSource(info, ctx, resume)

    async def _read_after(self, old: Reader, source: LogSource) -> None:
        """Stop and close the reader being replaced, then read with the new one (never both at once: they
        would write the same container's offset)."""
        old.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await old.task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECS):
                await old.source.close()
        await self._read(source)

    async def _read(self, source: LogSource) -> None:
        cid = source.meta.id
        try:
            await source.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # one broken reader must not take the daemon down
            tel.reader_crashed(self.metrics, source.meta.name or cid[:12])
        finally:
            current = self.readers.get(cid)
            if current is not None and current.source is source:
                del self.readers[cid]
                self.metrics.set("shipper_containers", len(self.readers))

    # --- housekeeping ------------------------------------------------------------------------------------

    async def _save_offsets_periodically(self) -> None:
        interval = self.config.state.flush_interval_secs
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for p in self.pending.values():
                if not p.reported and now - p.since > PENDING_WARN_SECS:
                    p.reported = True
                    tel.container_unreadable(self.metrics, p.info.meta.name or p.info.meta.id[:12], "not_inspected",
                                             f"no inspect has answered for {PENDING_WARN_SECS:.0f}s, so how to "
                                             f"read its log is unknown; it is read once one does")
            for cid, at in list(self.removed_at.items()):
                if now - at > FORGET_REMOVED_AFTER_SECS and cid not in self.readers:
                    self.offsets.forget(cid)
                    del self.removed_at[cid]
                    self._forget_series(cid)
            await self.offsets.flush_async()

    async def _log_stats(self) -> None:
        """One line for reading and the buffer (`dropped`: everywhere, by any reason), then one per sink with
        its own counts (never summed over sinks)."""
        m = self.metrics
        while True:
            await asyncio.sleep(self.config.telemetry.stats_interval_secs)
            log.info("stats containers=%d events_read=%d events_per_sec=%.1f dropped=%d invalid=%d gaps=%d "
                     "buffered=%d buffer_fill=%.1f%% reading_paused=%s reader_failures=%d waiting_inspect=%d "
                     "docker=%s spool_write_errors=%d",
                     len(self.readers), m.get("shipper_events_read_total"), self.ops.rate(None),
                     m.get("shipper_events_dropped_total"), m.get("shipper_lines_invalid_total"),
                     m.get("shipper_log_gap_total"),
                     m.get("shipper_buffer_events"), 100 * self.ops.buffer_fill(), bool(self.ops.paused_since),
                     m.get("shipper_reader_failures_total"), len(self.pending), self._docker_state(),
                     m.get("shipper_spool_write_errors_total"))
            for name, r in self.runners.items():
                log.info("stats sink=%s state=%s events_sent=%d events_per_sec=%.1f pending=%d in_flight=%d "
                         "retries=%d dropped=%d", name, r.state, r.sent_events, self.ops.rate(name),
                         r.cursor.pending() if r.cursor else 0, r.in_flight,
                         m.get("shipper_sink_retries_total", sink=name),
                         m.get("shipper_events_dropped_total", where=name))

    def _docker_state(self) -> str:
        return str(getattr(self.discovery, "state", "-"))

    def status(self) -> dict[str, Any]:
        """The /status document (see shipper.telemetry.status)."""
        return self.ops.snapshot()

    # --- operations: the admin server, the Docker daemon watched ----------------------------------------

    async def _start_admin(self) -> asyncio.Task[None] | None:
        """Serve /metrics, /health, /status and the page. A token that cannot be read stops the start (fail
        closed); an address in use does not: shipping logs matters more than showing how it goes, so it is said
        once and tried again every ADMIN_RETRY_SECS (a scrape that fails meanwhile is what alerts). Returns
        the task that tries again, if any (cancelled at shutdown with the other background tasks)."""
        if not self.config.admin.address:
            return None
        from shipper.telemetry.admin import AdminServer

        server = AdminServer(self.config.admin, self.ops, self.metrics, self.config.host.resolved_name)
        try:
            await server.start()
        except OSError as e:
            log.warning("admin server cannot listen address=%s error=%s: running without /metrics, /health and "
                        "/status for now, trying again every %.0fs (or set [admin] address to a free host:port)",
                        self.config.admin.address, e, ADMIN_RETRY_SECS)
            assert self._tasks is not None
            return self._tasks.create_task(self._supervised("admin", lambda: self._listen_later(server)),
                                           name="admin")
        self.admin = server
        return None

    async def _listen_later(self, server: AdminServer) -> None:
        while True:
            await asyncio.sleep(ADMIN_RETRY_SECS)
            try:
                await server.start()
            except OSError:
                continue
            self.admin = server
            return

    def _make_docker_watch(self) -> DockerWatch | None:
        interval = self.config.telemetry.docker_ping_interval_secs
        if self.docker is None or interval <= 0:
            return None
        from shipper.docker.watch import DockerWatch

        self.docker_watch = DockerWatch(lambda: self.docker, self.metrics, self.config.docker.data_root, interval,
                                        lambda: self.discovery)
        return self.docker_watch

    def _forget_series(self, cid: str) -> None:
        """A container gone for good: its per-container series go (unless a live reader has its name)."""
        label = self._gone_labels.pop(cid, "")
        self.ops.forget(cid)
        live = {r.source.meta.name or c[:12] for c, r in self.readers.items()}
        if label and label not in live:
            self.metrics.forget_container(label)


class _TrackedRunner(SinkRunner):
    """A sink runner that reports each delivered request (for each container's seconds behind)."""

    on_delivered: Callable[[str, list[Batch]], None] | None = None

    async def deliver(self, request: Request, max_attempts: int | None = None) -> Delivery:
        done = await super().deliver(request, max_attempts)
        if done.delivered and self.on_delivered is not None:
            self.on_delivered(self.name, request.batches)
        return done


def _report_stuck_tasks(waiting: asyncio.Task[Any] | None) -> None:
    """Shutdown takes well under STUCK_REPORT_SECS once the drain is over: name whatever it still waits for, and
    cancel it again, so that the daemon stops. `waiting` is the task doing the shutdown: it is spared (a timer
    callback runs in no task, and cancelling the shutdown itself would end the daemon with an error)."""
    for t in asyncio.all_tasks():
        if t is waiting or t.done():
            continue
        frames = t.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.warning("shutdown still waiting for a task, cancelling it again task=%s at=%s", t.get_name(), where)
        t.cancel()
