"""Soak: many containers logging for a long time through the real dockerd and the whole daemon, and a churn of
short-lived containers; prints a table.

Two kinds of run, each with a fresh `shipper run` (discovery = "api", memory buffer, a file sink) and its own
containers, for each reader asked for (`--reads files,api`: read = "files", the json-file, and read = "api",
the Engine API log stream):

fleet   --containers containers each print --rate numbered lines a second (in bursts every 0.2 s) for
        --duration seconds, then exit (kept, not removed, until the run ends).
churn   --churn containers, started evenly over --duration seconds with `--rm` (auto_remove), each printing
        --churn-lines lines and exiting at once: dockerd removes them a few ms later.

Every line is counted per container in the sink file at the end: missing and duplicated lines are reported
(nothing lost is the pass mark: the exit status is 1 if any line is missing). While a run goes, shipper's and
dockerd's CPU (utime + stime from /proc/<pid>/stat) and shipper's RSS (VmRSS from /proc/<pid>/status) are
sampled every --sample-secs: CPU is reported as seconds and as % of one core over the run, RSS as
first/last/max (growth over the run shows as last well above first). The load window is from the first
container start to the last line delivered.

    python benchmarks/soak.py                                   # full: 200 x 50 lines/s x 600 s, 2,000 churned
    python benchmarks/soak.py --containers 100 --duration 120 --churn 400
    python benchmarks/soak.py --reads files --kinds fleet --containers 40 --rate 20 --duration 30

Needs a local dockerd (root, or the docker group, and /proc of dockerd readable), the busybox test image
(`shipper-test:busybox`, made by the test suite; made here from /bin/busybox if missing) and disk for the
sink files (about 500 bytes an event, 3 GB for a full-size fleet run; each is deleted once counted unless
--keep). The containers carry the label shipper.soak=<run id> and are all removed at the end, even on an
error or Ctrl-C. The daemon is run from this checkout (PYTHONPATH), whatever `pip install -e` points at.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

IMAGE = "shipper-test:busybox"
SOAK_LABEL = "shipper.soak"
TICK = os.sysconf("SC_CLK_TCK")
STATS_RE = re.compile(r"stats containers=(\d+) events_read=(\d+) .*?dropped=(\d+)")
SINK_STATS_RE = re.compile(r"stats sink=(\S+) state=\w+ events_sent=(\d+)")
NUMBER_RE = re.compile(r"\bn=(\d+)\b")
PAD = "x" * 64  # ~85-byte lines


# --- /proc ---------------------------------------------------------------------------------------------------


def pid_of(comm: str) -> int | None:
    """The pid of the one process named `comm` (the oldest if several)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    found.append(int(entry))
    return min(found) if found else None


def cpu_secs(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Usage:
    """CPU seconds and RSS of some processes, sampled every `every` seconds in a thread."""

    pids: dict[str, int]
    every: float
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)
    rss: dict[str, list[int]] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Usage:
        self.started = time.monotonic()
        for name, pid in self.pids.items():
            self.cpu0[name] = cpu_secs(pid) or 0.0
            self.rss[name] = []
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            cpu, rss = cpu_secs(pid), rss_bytes(pid)
            if cpu is not None:
                self.cpu1[name] = cpu
            if rss is not None:
                self.rss[name].append(rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.ended = time.monotonic()

    @property
    def secs(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def cpu(self, name: str) -> float:
        return self.cpu1.get(name, 0.0) - self.cpu0.get(name, 0.0)

    def cpu_pct(self, name: str) -> float:
        return 100.0 * self.cpu(name) / self.secs if self.secs > 0 else 0.0

    def rss_mb(self, name: str) -> tuple[float, float, float]:
        """first, last and max RSS in MiB."""
        s = self.rss.get(name) or [0]
        return s[0] / 2**20, s[-1] / 2**20, max(s) / 2**20


# --- shipper -------------------------------------------------------------------------------------------------


class Daemon:
    """`python -m shipper run`: discovery = "api", the given reader, memory buffer, one file sink."""

    def __init__(self, work: Path, read: str, label: str, stats_secs: float = 1.0,
                 env: dict[str, str] | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.out = work / "out.jsonl"
        self.log = work / "shipper.log"
        self.config = work / "shipper.toml"
        self.config.write_text(f"""
[docker]
discovery = "api"
read = "{read}"
[state]
dir = "{work / 'state'}"
[select]
include_labels = ["{SOAK_LABEL}={label}"]
[telemetry]
stats_interval_secs = {stats_secs}
log_level = "info"
[sinks.out]
type = "file"
path = "{self.out}"
max_bytes = 0
""")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(self.config)],
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=self.work, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stats(self) -> tuple[int, int, int, int]:
        """containers, events_read, events_sent, dropped of the newest stats line."""
        text = self.log_text()[-20_000:]
        found = STATS_RE.findall(text)
        if not found:
            return (0, 0, 0, 0)
        containers, read, dropped = map(int, found[-1])
        sent = sum({sink: int(n) for sink, n in SINK_STATS_RE.findall(text)}.values())  # each sink's newest line
        return containers, read, sent, dropped

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def count_sink(path: Path) -> dict[str, list[int]]:
    """Per container name, how often each line number arrived (index = n)."""
    counts: dict[str, list[int]] = {}
    if not path.exists():
        return counts
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            ev = orjson.loads(line)
            m = NUMBER_RE.search(ev["message"])
            if m is None:
                continue
            n = int(m.group(1))
            seen = counts.setdefault(ev["container"]["name"], [])
            if n >= len(seen):
                seen.extend([0] * (n + 1 - len(seen)))
            seen[n] += 1
    return counts


# --- containers ----------------------------------------------------------------------------------------------


def docker_client() -> Any:
    import docker

    client = docker.from_env(timeout=120)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.api.import_image_from_data(busybox_tar(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1],
                                          changes=["ENV PATH=/bin"])
    return client


def busybox_tar() -> bytes:
    """A root holding /bin/busybox and its applet links (as tests/conftest.py makes the test image)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for name in applets:
            if name != "busybox":
                info = tarfile.TarInfo(f"bin/{name}")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                tar.addfile(info)
    return buf.getvalue()


def fleet_script(total: int, rate: int) -> str:
    """`total` numbered lines, `rate` a second in five bursts a second, then exit."""
    burst = max(1, rate // 5)
    return (f"i=0; while [ $i -lt {total} ]; do j=0; while [ $j -lt {burst} ] && [ $i -lt {total} ]; do "
            f"echo \"n=$i soak {PAD}\"; i=$((i+1)); j=$((j+1)); done; sleep 0.2; done")


def churn_script(lines: int) -> str:
    return f"i=0; while [ $i -lt {lines} ]; do echo \"n=$i churn {PAD}\"; i=$((i+1)); done"


@contextlib.contextmanager
def cleanup(client: Any, label: str) -> Iterator[None]:
    """Remove every container of this soak run at the end, whatever happened."""
    try:
        yield
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{SOAK_LABEL}={label}"}):
            with contextlib.suppress(Exception):
                c.remove(force=True)


def start_fleet(client: Any, n: int, total: int, rate: int, labels: dict[str, str], prefix: str,
                workers: int = 4) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(n)]

    def one(name: str) -> None:
        client.containers.run(IMAGE, ["sh", "-c", fleet_script(total, rate)], name=name, detach=True, labels=labels,
                              log_config={"type": "json-file", "config": {"max-size": "200m", "max-file": "2"}})

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))
    return names


def run_churn(client: Any, n: int, lines: int, secs: float, labels: dict[str, str], prefix: str,
              workers: int = 4) -> tuple[list[str], float]:
    """`n` --rm containers started evenly over `secs`; returns their names and how long starting took."""
    names = [f"{prefix}-{i}" for i in range(n)]
    began = time.monotonic()
    errors: list[BaseException] = []

    def one(i: int) -> None:
        delay = began + i * secs / n - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            client.containers.run(IMAGE, ["sh", "-c", churn_script(lines)], name=names[i], detach=True,
                                  auto_remove=True, labels=labels)
        except Exception as e:  # reported below, all at once
            errors.append(e)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} churn containers could not be started: {errors[0]!r}")
    return names, time.monotonic() - began


def wait_fleet_exit(client: Any, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        c = client.containers.get(name)
        c.wait(timeout=max(1.0, deadline - time.monotonic()))


# --- one run -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    read: str
    containers: int
    lines: int
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    missing_by_container: dict[str, int] = field(default_factory=dict)
    secs: float = 0.0
    drain_secs: float = 0.0
    usage: Usage | None = None
    log_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0


def wait_delivered(d: Daemon, want: int, timeout: float, progress: Callable[[str], None]) -> bool:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        if not d.running():
            raise RuntimeError(f"shipper exited:\n{d.log_text()[-3000:]}")
        _, _, sent, _ = d.stats()
        if sent >= want:
            return True
        if sent != last:
            progress(f"  delivered {sent:,}/{want:,}")
            last = sent
        time.sleep(1.0)
    return False


def one_run(kind: str, read: str, args: argparse.Namespace, work: Path, progress: Callable[[str], None],
            extra_labels: dict[str, str] | None = None, client: Any = None) -> Result:
    """One fleet or churn run with a fresh shipper reading with `read`."""
    client = client or docker_client()
    run_id = uuid.uuid4().hex[:10]
    labels = {SOAK_LABEL: run_id, **(extra_labels or {})}
    d = Daemon(work / f"{kind}-{read}", read, run_id, stats_secs=1.0)
    if kind == "fleet":
        n, per = args.containers, args.rate * int(args.duration)
    else:
        n, per = args.churn, args.churn_lines
    res = Result(kind, read, n, n * per)
    dockerd = pid_of("dockerd")
    d.start()
    pids = {"shipper": d.pid} | ({"dockerd": dockerd} if dockerd else {})
    with cleanup(client, run_id):
        time.sleep(1.0)  # the daemon is up and subscribed before the first container
        usage = res.usage = Usage(pids, args.sample_secs).start()
        began = time.monotonic()
        if kind == "fleet":
            names = start_fleet(client, n, per, args.rate, labels, f"soak-{run_id}")
            progress(f"  {n} containers started in {time.monotonic() - began:.1f}s")
            wait_fleet_exit(client, names, args.duration * 3 + 120)
        else:
            names, took = run_churn(client, n, per, args.duration, labels, f"soak-{run_id}")
            progress(f"  {n} --rm containers started over {took:.1f}s")
        written = time.monotonic()
        wait_delivered(d, res.lines, args.drain_timeout, progress)
        usage.stop()
        res.secs = usage.secs
        res.drain_secs = time.monotonic() - written
        time.sleep(1.0)  # anything extra (duplicates) shows now
    rc = d.stop()
    counts = count_sink(d.out)
    for name in names:
        seen = counts.get(name, [])
        missing = sum(1 for k in range(per) if k >= len(seen) or seen[k] == 0)
        res.delivered += sum(seen)
        res.duplicates += sum(max(0, c - 1) for c in seen)
        res.missing += missing
        if missing:
            res.missing_by_container[name] = missing
    res.log_errors = [line[:300] for line in d.log_text().splitlines() if " ERROR " in line or "Traceback" in line]
    if rc != 0:
        res.log_errors.append(f"shipper exited with {rc}")
    if not args.keep:
        d.out.unlink(missing_ok=True)
    return res


def table(results: list[Result]) -> str:
    head = ("run", "read", "containers", "lines", "missing", "dup", "secs", "lines/s", "drain s",
            "shipper CPU s", "shipper %core", "dockerd CPU s", "dockerd %core", "RSS MiB first/last/max")
    rows = [head]
    for r in results:
        u = r.usage
        assert u is not None
        first, last, top = u.rss_mb("shipper")
        rows.append((r.kind, r.read, f"{r.containers:,}", f"{r.lines:,}", f"{r.missing:,}", f"{r.duplicates:,}",
                     f"{r.secs:.0f}", f"{r.lines / r.secs:,.0f}" if r.secs else "-", f"{r.drain_secs:.1f}",
                     f"{u.cpu('shipper'):.1f}", f"{u.cpu_pct('shipper'):.1f}",
                     f"{u.cpu('dockerd'):.1f}" if "dockerd" in u.pids else "-",
                     f"{u.cpu_pct('dockerd'):.1f}" if "dockerd" in u.pids else "-",
                     f"{first:.0f}/{last:.0f}/{top:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--containers", type=int, default=200, help="fleet: containers (default 200)")
    p.add_argument("--rate", type=int, default=50, help="fleet: lines a second each (default 50)")
    p.add_argument("--duration", type=float, default=600, help="seconds of logging, and of churn (default 600)")
    p.add_argument("--churn", type=int, default=2000, help="churn: --rm containers over --duration (default 2000)")
    p.add_argument("--churn-lines", type=int, default=5, help="churn: lines each (default 5)")
    p.add_argument("--reads", default="files,api", help="readers to compare (default files,api)")
    p.add_argument("--kinds", default="fleet,churn", help="runs to do (default fleet,churn)")
    p.add_argument("--sample-secs", type=float, default=10.0, help="CPU/RSS sampling period (default 10)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for the last lines")
    p.add_argument("--work", type=Path, help="where sink files and logs go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the sink files")
    args = p.parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])  # the daemon runs from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)
    work = args.work or Path(tempfile.mkdtemp(prefix="shipper-soak-"))
    reads = [r for r in args.reads.split(",") if r]
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"soak: fleet {args.containers} x {args.rate} lines/s x {args.duration:.0f}s, churn {args.churn} x "
          f"{args.churn_lines} lines over {args.duration:.0f}s; reads {reads}; work {work}", flush=True)
    client = docker_client()
    results = []
    for kind in kinds:
        for read in reads:
            print(f"{kind}, read = {read!r}:", flush=True)
            r = one_run(kind, read, args, work, lambda s: print(s, flush=True), client=client)
            results.append(r)
            for name, k in list(r.missing_by_container.items())[:10]:
                print(f"  missing {k} lines: {name}")
            for line in r.log_errors[:10]:
                print(f"  shipper: {line}")
    print()
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
