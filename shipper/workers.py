"""`[pipeline] workers = N`: N processes, each a whole pipeline (readers, buffer, sinks, offsets) for its share
of the containers, and a supervisor that only starts them, restarts one that dies and speaks for all of them.

Why whole pipelines and not readers handing events to one process: what crosses between processes is paid
per event (a record costs about 0.7 us to encode and 1.1 us to decode, as much as reading the entry did), so
nothing per event crosses here. The price: each worker holds its own buffer and its own sink connections.

State with N > 1: worker K keeps its offsets and spool in `<state>/workers/K`; with N = 1 the one worker uses
`<state>` itself, as a single process does. Before any worker starts, the supervisor gives each container's
saved offset to the worker that owns it now (the newest saved copy wins), so changing N re-reads nothing
and loses nothing. A spool that no current worker owns (`<state>/spool` after a single process, or
`workers/K` for K >= N) is drained by a worker of its own that reads no container and stops once every sink
has delivered it; the folder then keeps a `drained` mark (its retained events stay for `shipper replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from shipper.backoff import Backoff
from shipper.config import BufferType, Config
from shipper.pidfile import remove_pid_file, write_pid_file
from shipper.preflight import make_state_dir
from shipper.sources.offsets import FILE_NAME as OFFSETS_FILE
from shipper.sources.offsets import OffsetStore
from shipper.telemetry.config import ADMIN_RETRY_SECS, AdminConfig

log = logging.getLogger("shipper.workers")

WORKERS_DIR = "workers"
DRAINED_MARK = "drained"
STOP_GRACE_SECS = 30.0  # beyond the workers' own drain deadline, before they are killed
RESTART_HEALTHY_SECS = 60.0  # a worker that ran this long before dying restarts without delay
PR_SET_PDEATHSIG = 1
MAX_WORKERS = 64  # pipeline.workers' bound
MAX_SOCKET_PATH = 100  # bytes, with room below the kernel's 107
CONFIG_ERROR = 2  # a worker's exit status when its config is wrong (as `shipper run`'s)


def shard_of(container_id: str, count: int) -> int:
    """The worker that reads `container_id` among `count` (Docker's ids are hex: their first 32 bits)."""
    try:
        return int(container_id[:8], 16) % count
    except ValueError:
        return zlib.crc32(container_id.encode()) % count


@dataclass(frozen=True)
class Shard:
    """Which containers one worker reads: those `shard_of` gives to `index`."""

    index: int
    count: int

    def owns(self, container_id: str) -> bool:
        return self.count <= 1 or shard_of(container_id, self.count) == self.index


def worker_dir(root: Path, index: int, count: int) -> Path:
    return root if count == 1 else root / WORKERS_DIR / str(index)


def state_dirs(root: Path) -> list[Path]:
    """Every folder that may hold offsets or a spool: `root`, then `root/workers/K` in K order."""
    found = [root]
    with contextlib.suppress(OSError):
        found += sorted((p for p in (root / WORKERS_DIR).iterdir() if p.name.isdigit() and p.is_dir()),
                        key=lambda p: int(p.name))
    return found


def _has_spool(d: Path) -> bool:
    try:
        return any((d / "spool").iterdir())
    except OSError:
        return False


def orphan_spools(root: Path, count: int) -> list[Path]:
    """Folders holding a spool that no worker of `count` owns and that is not drained yet."""
    current = {worker_dir(root, k, count) for k in range(count)}
    return [d for d in state_dirs(root)
            if d not in current and _has_spool(d) and not (d / DRAINED_MARK).exists()]


def make_worker_dirs(root: Path, count: int) -> None:
    """Every folder on the way owner-only, as the state dir itself is."""
    if count > 1:
        make_state_dir(root / WORKERS_DIR)
    for k in range(count):
        make_state_dir(worker_dir(root, k, count))


def redistribute_offsets(root: Path, count: int) -> int:
    """Give each container's saved offset to the worker that owns it under `count`; the newest file's copy
    wins when several hold one. Files no worker owns are removed once the new ones are written. Returns how
    many containers' offsets were placed."""
    found = [d for d in state_dirs(root) if (d / OFFSETS_FILE).exists()]
    found.sort(key=lambda d: (d / OFFSETS_FILE).stat().st_mtime_ns)
    merged = {}
    for d in found:
        store = OffsetStore(d)
        store.load()
        merged.update(store.all())
    targets = [worker_dir(root, k, count) for k in range(count)]
    if not merged and not found:
        return 0
    for k, d in enumerate(targets):
        store = OffsetStore(d)
        store.replace_all({cid: cp for cid, cp in merged.items() if shard_of(cid, count) == k})
        if not store.flush():
            raise OSError(f"cannot write {d / OFFSETS_FILE}")
    for d in found:
        if d not in targets:
            (d / OFFSETS_FILE).unlink(missing_ok=True)
    return len(merged)


def worker_config(cfg: Config, directory: Path, admin_socket: str) -> Config:
    """A worker's config: its own state folder, and an admin server on a unix socket only its supervisor can
    reach (the supervisor serves the configured address, with its TLS and token)."""
    admin = AdminConfig(address=f"unix:{admin_socket}") if admin_socket else AdminConfig(address="")
    return dataclasses.replace(cfg, state=dataclasses.replace(cfg.state, dir=str(directory)), admin=admin)


def die_with_parent(parent: int) -> None:
    """A worker ends when its supervisor does, even by kill -9: Linux kills it when its parent dies, and a
    parent gone before that was asked for is noticed at once."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Child:
    """One worker process: `index` >= 0 reads its shard; -1 drains `directory` and reads nothing."""

    index: int
    directory: Path
    socket: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return f"worker {self.index}" if self.index >= 0 else f"drain {self.directory}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts the workers, restarts one that dies, forwards SIGTERM/SIGINT/SIGHUP, serves the admin address."""

    def __init__(self, cfg: Config, count: int, argv: list[str]) -> None:
        self.cfg = cfg
        self.count = count
        self.argv = argv  # what every worker's command line carries: config, --set, --log-level
        self.root = cfg.state.path
        self.children: list[Child] = []
        self._stop = asyncio.Event()
        self._signals = 0
        self.exit_code = 0
        self._sockets = ""
        # the workers import this very shipper package, wherever it was imported from
        here = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH", "")
        self._env = {**os.environ, "PYTHONPATH": here + (os.pathsep + path if path else "")}

    def command(self, child: Child) -> list[str]:
        spec = f"{child.index}/{self.count}" if child.index >= 0 else f"drain:{child.directory}"
        extra = ["--admin-socket", child.socket] if child.socket else []
        return [sys.executable, "-m", "shipper", *self.argv, "--worker", spec, "--parent", str(os.getpid()), *extra]

    def prepare(self) -> list[Path]:
        """Before any worker starts: offsets placed, marks of folders owned again removed; the orphan spools."""
        make_state_dir(self.root)
        make_worker_dirs(self.root, self.count)
        placed = redistribute_offsets(self.root, self.count)
        for k in range(self.count):
            (worker_dir(self.root, k, self.count) / DRAINED_MARK).unlink(missing_ok=True)
        orphans = orphan_spools(self.root, self.count) if self.cfg.buffer.type is BufferType.DISK else []
        log.info("starting %d workers, containers split by id; offsets of %d containers placed%s", self.count,
                 placed, f"; draining spools no worker owns: {', '.join(map(str, orphans))}" if orphans else "")
        return orphans

    async def run(self) -> int:
        orphans = self.prepare()
        self._sockets = self._socket_folder()
        self.children = [Child(k, worker_dir(self.root, k, self.count),
                               os.path.join(self._sockets, f"{k}.sock") if self.cfg.admin.address else "")
                         for k in range(self.count)]
        self.children += [Child(-1, d) for d in orphans]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            write_pid_file(self.root)
            async with asyncio.TaskGroup() as tg:
                for c in self.children:
                    tg.create_task(self._keep(c), name=c.name)
                if self.cfg.admin.address:
                    tg.create_task(self._serve_admin(), name="admin")
        finally:
            remove_pid_file(self.root)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if Path(self._sockets).parent != self.root / WORKERS_DIR:
                shutil.rmtree(self._sockets, ignore_errors=True)
        failed = [c.name for c in self.children if c.process is not None and c.process.returncode not in (0, None)]
        log.info("stopped; every worker has ended%s", f" (with an error: {', '.join(failed)})" if failed else "")
        return self.exit_code or (1 if failed else 0)

    def _socket_folder(self) -> str:
        """Where the workers' admin sockets go: a folder only shipper's user can enter, in the state dir when
        a socket's path fits there (a unix socket's path is at most 107 bytes), else a new one in /tmp."""
        own = self.root / WORKERS_DIR / "sockets"
        if len(str(own / f"{MAX_WORKERS}.sock").encode()) <= MAX_SOCKET_PATH:
            make_state_dir(own.parent)
            make_state_dir(own)
            for old in own.glob("*.sock"):  # left by a supervisor killed with -9
                old.unlink(missing_ok=True)
            return str(own)
        return tempfile.mkdtemp(prefix="shipper-")

    async def _serve_admin(self) -> None:
        """The admin server until the supervisor stops. An address in use does not stop shipper (shipping logs
        matters more than showing how it goes): said once, tried again every ADMIN_RETRY_SECS."""
        from shipper.telemetry.fleet import WorkersAdmin

        server = WorkersAdmin(self.cfg.admin, self, self.cfg.host.resolved_name)
        said = False
        while not self._stop.is_set():
            try:
                await server.start()
                break
            except OSError as e:
                if not said:
                    said = True
                    log.warning("admin server cannot listen address=%s error=%s: running without /metrics, /health "
                                "and /status for now, trying again every %.0fs", self.cfg.admin.address, e,
                                ADMIN_RETRY_SECS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), ADMIN_RETRY_SECS)
        try:
            await self._stop.wait()
            await self._all_ended()
        finally:
            await server.close()

    async def _all_ended(self) -> None:
        """Until no worker runs: the admin server answers while they drain."""
        while any(c.running for c in self.children):
            await asyncio.sleep(0.1)

    def _on_stop(self, sig: int) -> None:
        """The first signal stops the workers (each drains, then saves its offsets); a second is passed on
        too, so they stop at once."""
        self._signals += 1
        if self._signals == 1:
            log.info("stopping: each worker drains for up to %.0fs, then saves its offsets",
                     self.cfg.buffer.shutdown_drain_secs)
        self._stop.set()
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        for c in self.children:
            if c.running:
                assert c.process is not None
                with contextlib.suppress(ProcessLookupError):
                    c.process.send_signal(sig)

    async def _keep(self, child: Child) -> None:
        """Run `child` until the supervisor stops; a worker that dies is started again (with backoff when it
        keeps dying), resuming from its offsets."""
        backoff = Backoff(1.0, 30.0, floor=0.5)
        while not self._stop.is_set():
            started = time.monotonic()
            # a session of its own: a terminal's Ctrl-C reaches the supervisor only, which passes it on once
            child.process = await asyncio.create_subprocess_exec(*self.command(child), stdin=asyncio.subprocess.DEVNULL,
                                                                 start_new_session=True, env=self._env)
            stop = asyncio.ensure_future(self._stop.wait())
            ended = asyncio.ensure_future(child.process.wait())
            await asyncio.wait([stop, ended], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self._stop.is_set():
                await self._reap(child, ended)
                return
            rc = ended.result()
            if child.index < 0 and rc == 0 and (child.directory / DRAINED_MARK).exists():  # the drain's own mark
                log.info("spool drained: %s (its retained events stay there for shipper replay)", child.directory)
                return
            if rc == CONFIG_ERROR:  # found at the worker's start: starting it again would fail the same way
                log.error("%s stopped on a config error (exit status 2; its log names the key): stopping shipper",
                          child.name)
                self.exit_code = CONFIG_ERROR
                self._on_stop(signal.SIGTERM)
                return
            child.restarts += 1
            if time.monotonic() - started > RESTART_HEALTHY_SECS:
                backoff.attempt = 0
            delay = backoff.next_delay()
            log.error("%s ended unexpectedly (exit status %s), starting it again in %.1fs; its containers resume "
                      "from their saved offsets", child.name, rc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _reap(self, child: Child, ended: asyncio.Future[int]) -> None:
        """Wait for a stopping worker: its drain deadline and a grace period, then kill it."""
        try:
            await asyncio.wait_for(asyncio.shield(ended), self.cfg.buffer.shutdown_drain_secs + STOP_GRACE_SECS)
        except TimeoutError:
            log.error("%s did not stop in time, killing it (what it had not delivered is re-read or still in its "
                      "spool at the next start)", child.name)
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await ended
