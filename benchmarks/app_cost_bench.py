"""What shipping a container costs the container: its wall time writing N lines alone and with shipper
reading it, through the real dockerd; prints a table.

Each run is one busybox container (`shipper-test:busybox`, made from /bin/busybox by `docker import` if it
is missing, as the test suite makes it) whose shell prints --lines numbered lines of about 90 bytes, one
write each: as fast as it can (`fast`), and --rate lines a second at most (`rate`: bursts of rate/20
lines, each followed by a 50 ms sleep, so the time to write a burst shows in the container's time). The
arms of a round run one after the other, their order turned by one every round, so drift in the machine's
load falls on every arm alike:

alone    no shipper running
after    `shipper run` from this checkout (PYTHONPATH; --after TREE for another), started before the container
         and reading it
before   with --baseline TREE: the same from another source tree, e.g. a clone of the commit before a change
SPEC     with --priority SPEC: the `after` shipper at a lower CPU priority, SPEC joining with + any of
         shares:N (in a cpu cgroup of its own with cpu.shares N: cgroup v1, root; the containers' cgroups
         have 1024), nice:N, batch (SCHED_BATCH: waking up, it does not preempt the task running) and idle
         (SCHED_IDLE). deploy/shipper.service: shares:205+nice:10+batch (CPUWeight=20 is 205 shares);
         deploy/compose.yaml: shares:256. (nice alone says little where the kernel groups tasks by session,
         sched_autogroup: a nice then only counts against the tasks of the same session.)

Shipper runs its default config but for: discovery = "api", read = "files", a fresh state dir, the
container's label selected, the null sink, stats every 0.1 s (its `events_sent` says when all is
delivered) and the admin server on a free port. Per run:

app s         the container's own time, from dockerd's StartedAt to FinishedAt (inspect)
ratio         app s with shipper / app s of the `alone` run of the same round (median of the pairs)
dockerd CPU   utime + stime of dockerd and containerd (/proc/PID/stat) from before the container is created to
              after it exited, and of its containerd-shim (read before the container is removed)
catch-up s    from the container's exit to shipper's stats line saying every line was delivered (0.1 s steps)
shipper CPU   shipper's utime + stime while the container ran, and in all until every line was delivered

    python benchmarks/app_cost_bench.py                                    # 200,000 lines, 5 rounds
    python benchmarks/app_cost_bench.py --runs 7 --baseline /tmp/prev --priority shares:205+nice:10+batch
    python benchmarks/app_cost_bench.py --workloads fast --lines 100000 --runs 3

Needs a local dockerd (root, or the docker group, and /proc of dockerd readable). Run it under the shared
lock (`flock /tmp/bench.lock python3 benchmarks/app_cost_bench.py`) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import busybox_tar, cpu_secs, pid_of

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "shipper-test:busybox"
LABEL = "shipper.appcost"
PAD = "x" * 72  # with "n=NNNNNN app " about 90 bytes a line
SENT_RE = re.compile(r"stats sink=out state=\w+ events_sent=(\d+)")
BURST_SECS = 0.05


@dataclass(frozen=True)
class Arm:
    name: str
    tree: Path | None  # None: no shipper
    nice: int = 0
    policy: int = 0  # os.SCHED_OTHER, os.SCHED_BATCH or os.SCHED_IDLE
    shares: int = 0  # > 0: in a cpu cgroup of its own with these cpu.shares


@dataclass
class Run:
    arm: str
    workload: str
    app_secs: float = 0.0
    dockerd_cpu: float = 0.0
    shim_cpu: float = 0.0
    catch_up: float | None = None  # None: no shipper, or not everything delivered in time
    shipper_cpu_app: float | None = None
    shipper_cpu_all: float | None = None
    delivered: int = 0


@dataclass
class Table:
    runs: list[Run] = field(default_factory=list)


# --- the container ---------------------------------------------------------------------------------------


def app_command(lines: int, rate: int) -> list[str]:
    """busybox sh: `lines` numbered lines, one write each (as an application logging line by line does), as
    fast as it can (rate 0), or in bursts of rate/20 lines with a 50 ms sleep after each: `rate` lines a
    second at most, and the time to write a burst shows in the container's time."""
    echo = f'echo "n=$i app {PAD}"; i=$((i+1))'
    if rate <= 0:
        return ["sh", "-c", f"i=0; while [ $i -lt {lines} ]; do {echo}; done"]
    burst = max(1, int(rate * BURST_SECS))
    return ["sh", "-c",
            f"i=0; while [ $i -lt {lines} ]; do "
            f"j=0; while [ $j -lt {burst} ] && [ $i -lt {lines} ]; do {echo}; j=$((j+1)); done; "
            f"usleep {int(BURST_SECS * 1_000_000)}; done"]


def docker_client() -> Any:
    import docker

    client = docker.from_env(timeout=120)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        repo, tag = IMAGE.split(":")
        client.api.import_image_from_data(busybox_tar(), repository=repo, tag=tag, changes=["ENV PATH=/bin"])
    return client


def rfc3339(text: str) -> float:
    """dockerd's time (nanoseconds, Z) -> seconds since the epoch, to the microsecond."""
    head, _, frac = text.rstrip("Z").partition(".")
    t = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return t + float(f"0.{(frac or '0')[:6]}")


def shim_of(cid: str) -> int | None:
    """The containerd-shim process serving container `cid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if cmd and b"containerd-shim" in cmd[0] and cid.encode() in cmd:
                return int(entry)
    return None


def daemons_cpu(pids: list[int]) -> float:
    return sum(cpu_secs(p) or 0.0 for p in pids)


# --- shipper ---------------------------------------------------------------------------------------------


CPU_CGROUP = Path("/sys/fs/cgroup/cpu/appcost-shipper")


def lower_priority(arm: Arm) -> None:
    """In the shipper's process before it runs: what the unit sets (CPUWeight=, Nice=, CPUSchedulingPolicy=)."""
    if arm.shares:
        CPU_CGROUP.mkdir(exist_ok=True)
        (CPU_CGROUP / "cpu.shares").write_text(str(arm.shares))
        (CPU_CGROUP / "cgroup.procs").write_text(str(os.getpid()))
    if arm.nice:
        os.nice(arm.nice)
    if arm.policy != os.SCHED_OTHER:
        os.sched_setscheduler(0, arm.policy, os.sched_param(0))


def priority_arm(spec: str, tree: Path) -> Arm:
    """`shares:205+nice:10+batch` -> an arm of the shipper from `tree` at that priority."""
    nice = shares = 0
    policy = os.SCHED_OTHER
    for part in spec.split("+"):
        kind, _, n = part.partition(":")
        if kind == "nice":
            nice = int(n)
        elif kind == "shares":
            shares = int(n)
        elif kind in ("batch", "idle"):
            policy = os.SCHED_BATCH if kind == "batch" else os.SCHED_IDLE
        else:
            raise SystemExit(f"--priority: unknown {part!r} (shares:N, nice:N, batch, idle)")
    return Arm(spec, tree, nice, policy, shares)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shipper:
    """`python -m shipper run` from `tree`, reading the containers labelled `run_id` into the null sink."""

    def __init__(self, work: Path, tree: Path, run_id: str, arm: Arm) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "shipper.log"
        config = work / "shipper.toml"
        config.write_text(f"""
[docker]
discovery = "api"
read = "files"
[state]
dir = "{work / 'state'}"
[select]
include_labels = ["{LABEL}={run_id}"]
[telemetry]
stats_interval_secs = 0.1
[admin]
address = "127.0.0.1:{free_port()}"
[sinks.out]
type = "null"
""")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shipper", "run", "--config", str(config)], stdout=logf,
                stderr=subprocess.STDOUT, cwd=work, env=env,
                preexec_fn=lambda: lower_priority(arm))

    def sent(self) -> int:
        found = SENT_RE.findall(self.log.read_text(errors="replace")[-4000:])
        return int(found[-1]) if found else -1

    def wait_up(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while self.sent() < 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"shipper did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_secs(self.proc.pid) or 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def removing(container: Any) -> Iterator[Any]:
    try:
        yield container
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def one_run(client: Any, arm: Arm, workload: str, lines: int, rate: int, work: Path, timeout: float) -> Run:
    run = Run(arm.name, workload)
    run_id = uuid.uuid4().hex[:10]
    shipper = None
    if arm.tree is not None:
        shipper = Shipper(work / f"{workload}-{arm.name}-{run_id}", arm.tree, run_id, arm)
        shipper.wait_up()
        time.sleep(1.0)  # discovery subscribed, start-up work done
    daemons = [p for p in (pid_of("dockerd"), pid_of("containerd")) if p]
    try:
        cpu0 = daemons_cpu(daemons)
        sh0 = shipper.cpu() if shipper else 0.0
        container = client.containers.create(IMAGE, app_command(lines, rate), labels={LABEL: run_id},
                                             name=f"appcost-{run_id}")
        with removing(container):
            container.start()
            shim = shim_of(container.id)
            container.wait(timeout=timeout)
            exited = time.monotonic()
            run.shim_cpu = (cpu_secs(shim) or 0.0) if shim else 0.0
            run.dockerd_cpu = daemons_cpu(daemons) - cpu0
            if shipper:
                run.shipper_cpu_app = shipper.cpu() - sh0
            state = client.api.inspect_container(container.id)["State"]
            run.app_secs = rfc3339(state["FinishedAt"]) - rfc3339(state["StartedAt"])
            if shipper:
                end = exited + timeout
                while (sent := shipper.sent()) < lines and time.monotonic() < end:
                    time.sleep(0.02)
                run.delivered = max(sent, 0)
                if sent >= lines:
                    run.catch_up = time.monotonic() - exited
                run.shipper_cpu_all = shipper.cpu() - sh0
    finally:
        if shipper:
            shipper.stop()
    return run


# --- the table -------------------------------------------------------------------------------------------


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def table(runs: list[Run], arms: list[Arm], workloads: list[str], lines: int) -> str:
    head = ("workload", "arm", "runs", "app s", "ratio to alone", "dockerd+containerd CPU s", "shim CPU s",
            "catch-up s", "shipper CPU s (app / all)", "all delivered")
    rows = [head]
    for wl in workloads:
        alone = [r for r in runs if r.workload == wl and r.arm == "alone"]
        for arm in arms:
            mine = [r for r in runs if r.workload == wl and r.arm == arm.name]
            if not mine:
                continue
            ratios = [r.app_secs / a.app_secs for r, a in zip(mine, alone, strict=False) if a.app_secs]
            ups = [r.catch_up for r in mine if r.catch_up is not None]
            cpu_app = [r.shipper_cpu_app for r in mine if r.shipper_cpu_app is not None]
            cpu_all = [r.shipper_cpu_all for r in mine if r.shipper_cpu_all is not None]
            rows.append((
                wl, arm.name, str(len(mine)), med([r.app_secs for r in mine]),
                "1" if arm.tree is None else med(ratios), med([r.dockerd_cpu for r in mine]),
                med([r.shim_cpu for r in mine]), med(ups) if arm.tree is not None else "-",
                f"{statistics.median(cpu_app):.2f} / {statistics.median(cpu_all):.2f}" if cpu_app else "-",
                "-" if arm.tree is None else f"{sum(r.delivered >= lines for r in mine)}/{len(mine)}"))
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--lines", type=int, default=200_000, help="lines the container writes (default 200,000)")
    p.add_argument("--rate", type=int, default=20_000, help="lines a second of the `rate` workload (20,000)")
    p.add_argument("--workloads", default="fast,rate", help="fast (as fast as it can), rate (--rate a second)")
    p.add_argument("--runs", type=int, default=5, help="rounds; each runs every arm once (default 5)")
    p.add_argument("--baseline", type=Path, help="also run shipper from this source tree (arm `before`)")
    p.add_argument("--priority", default="", help="more arms of the `after` shipper at a lower CPU priority, "
                                                  "comma-separated: e.g. shares:205+nice:10+batch,shares:256")
    p.add_argument("--after", type=Path, default=ROOT, help="the source tree of arm `after` (this checkout)")
    p.add_argument("--no-after", action="store_true", help="leave out arm `after`")
    p.add_argument("--timeout", type=float, default=180, help="seconds a container or the catch-up may take")
    a = p.parse_args(argv)
    after = a.after.resolve()
    arms = [Arm("alone", None)] + ([] if a.no_after else [Arm("after", after)])
    if a.baseline:
        arms.insert(1, Arm("before", a.baseline.resolve()))
    arms += [priority_arm(spec, after) for spec in filter(None, (x.strip() for x in a.priority.split(",")))]
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    client = docker_client()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="appcost-") as tmp:
        for i in range(a.runs):
            for wl in workloads:
                order = arms[i % len(arms):] + arms[:i % len(arms)]
                for arm in order:
                    r = one_run(client, arm, wl, a.lines, a.rate if wl == "rate" else 0, Path(tmp), a.timeout)
                    runs.append(r)
                    up = f"{r.catch_up:.2f}" if r.catch_up is not None else "-"
                    print(f"round {i + 1} {wl:<4} {arm.name:<7} app {r.app_secs:6.2f}s dockerd {r.dockerd_cpu:5.2f}s "
                          f"shim {r.shim_cpu:5.2f}s catch-up {up} delivered {r.delivered:,}",
                          file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        CPU_CGROUP.rmdir()  # empty once its shippers have exited
    print(f"{a.lines:,} lines a run; rate = {a.rate:,} lines/s; medians (min-max) of {a.runs} rounds; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(table(runs, arms, workloads, a.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
