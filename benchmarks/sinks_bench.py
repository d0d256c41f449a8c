"""What each sink costs, against the floor, in one run on the same data.

The reference workload (benchmarks/workload.py) is read by the whole daemon (discovery = "files", memory buffer,
default config otherwise, as pipeline_bench.py runs it) and delivered to:
- `floor`: no daemon: one process reads every json-file log and `orjson.loads` each entry (the physical floor
  of any shipper written in Python);
- `null`: the null sink (reading, rebuilding and buffering only), and `null+encode` (the null sink building each
  event's ECS JSON, what every JSON sink pays);
- `file`: the file sink writing ECS JSON lines to a file on the same disk;
- `syslog`: the syslog sink, RFC 5424 over TCP, into a real rsyslogd that receives and parses every message
  and writes none (a filter that never matches): writing each as JSON to a file took rsyslogd more than one
  of this 2-core machine's cores, which left the daemon less than one and measured rsyslogd instead;
- `workers=1`: the null kind's config with `[pipeline] workers = 1` and an admin address, run as the real
  daemon (`python -m shipper --config CFG run`, a subprocess polled through its /metrics): one process;
- `workers=2`: the same with `workers = 2`: a supervisor and two worker processes, each a whole pipeline for
  the containers whose id hashes to it; `workers=N+encode`: the null sink with `encode = true`. These kinds
  run the daemon as a real subprocess because the supervisor and its workers are processes, which the
  in-process run of the other kinds cannot start.

The package is byte-compiled first, as an install leaves it, and every run starts after an `os.sync()`,
so none pays for writing back what the one before it wrote.
Kinds run interleaved, each in a fresh process with fresh state; the table shows medians: json-file
entries/s, CPU seconds per million entries (the daemon's own; rsyslogd runs apart), peak RSS, and each
kind's rate against the null sink (and the null sink with `encode = true`) and its CPU per entry against
the floor. `--sink-keys` adds keys to the file and syslog sinks. For the `workers=` kinds, wall
time runs from the process's start, so it includes Python's start-up, the imports and starting the workers
(the other kinds start their clock once the App is built); the line under the table gives that start-up
(until /metrics first counts an entry read; the supervisor answers before its workers are up). Their CPU
is the supervisor's and its workers' (all waited for), start-up, scrapes of /metrics and shutdown included;
their peak RSS is the sum of every process's VmHWM.

    python benchmarks/sinks_bench.py --records 1000000 --runs 5
    python benchmarks/sinks_bench.py --kinds floor,null,file --runs 5
    python benchmarks/sinks_bench.py --kinds null,workers=1,workers=2 --runs 5
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import add_workload_args, kinds_table, run_daemon, run_interleaved, workload  # noqa: E402
from pipeline_bench import bench_config  # noqa: E402

KINDS = "floor,null,null+encode,file,syslog,workers=1,workers=2"
NULL_SECTION = '[sinks.null]\ntype = "null"\n'
CHUNK = 1 << 20
WORKERS = "workers="
POLL_SECS = 0.05  # how often the workers= kinds scrape /metrics
STALL_SECS = 5.0  # no entry read for this long once /metrics answers: the run ends
STOP_SECS = 120.0  # for the supervisor to stop after SIGTERM, before it is killed
COUNTERS = ("shipper_entries_read_total", "shipper_events_read_total", "shipper_events_sent_total")


def floor(data: Path) -> None:
    """Read every log file in chunks and decode every entry: print the figures as run_daemon's child does."""
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    loads = orjson.loads
    entries = 0
    for f in sorted(data.glob("containers/*/*-json.log*")):
        rest = b""
        with f.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    loads(line)
                entries += len(lines)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                      "rss_mib": r1.ru_maxrss / 1024, "entries": entries, "events": entries}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """COUNTERS from a Prometheus exposition, each summed over all its series (labels such as worker and
    container)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    sums = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
    return found


def vm_hwm_mib(pid: int) -> float:
    """A process's peak RSS (VmHWM), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_workers(cfg: Path, port: int, entries: int, timeout: float, log: Path) -> dict[str, float]:
    """One run of the real daemon, `python -m shipper --config CFG run`, polled through its /metrics until
    `entries` are read and every event read is sent (pipeline_bench.child's rule), or on timeout, or after
    STALL_SECS without an entry read once /metrics answers. The dict of run_daemon, and `startup`: seconds until
    /metrics first counted an entry read.
    `events` is what /metrics last showed, before SIGTERM: the shutdown's flush of multi-line events still held
    is not in it (pipeline_bench.child counts those), so it can be a few short of the records."""
    url = f"http://127.0.0.1:{port}/metrics"
    root = str(HERE.parent)
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    env.pop("SHIPPER_PIPELINE_WORKERS", None)  # the kind names its workers
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "shipper", "--config", str(cfg), "run"], cwd=root, env=env,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
    try:
        startup = -1.0
        got = dict.fromkeys(COUNTERS, 0.0)
        last, last_change = -1.0, time.monotonic()
        while True:
            time.sleep(POLL_SECS)
            if proc.poll() is not None:
                raise RuntimeError(f"shipper ended early, exit status {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                got = scrape(url)
            except OSError:  # not listening yet (URLError is an OSError)
                if time.perf_counter() - t0 > timeout:
                    break
                continue
            read, sent = got["shipper_entries_read_total"], got["shipper_events_sent_total"]
            done = read >= entries and sent >= got["shipper_events_read_total"] > 0
            if done or time.perf_counter() - t0 > timeout:
                break
            if read != last:
                last, last_change = read, time.monotonic()
                if startup < 0 < read:
                    startup = time.perf_counter() - t0
            elif time.monotonic() - last_change > STALL_SECS:
                break
        wall = time.perf_counter() - t0
        rss = sum(vm_hwm_mib(p) for p in process_tree(proc.pid))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_SECS)
        except subprocess.TimeoutExpired:  # its workers die with it (PR_SET_PDEATHSIG)
            proc.kill()
            rc = proc.wait()
            print(f"shipper did not stop within {STOP_SECS:.0f}s of SIGTERM: killed", file=sys.stderr)
    if rc != 0:
        print(f"shipper exit status {rc} after SIGTERM:\n{log.read_text()[-4000:]}", file=sys.stderr)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), "rss_mib": rss,
            "entries": got["shipper_entries_read_total"], "events": got["shipper_events_sent_total"],
            "startup": startup}


def one_run(kind: str, data: Path, work: Path, entries: int, timeout: float, extra: str = "") -> dict[str, float]:
    os.sync()  # no kind pays for writing back what the one before it wrote (the file sink writes ~1 KB an event)
    if kind == "floor":
        out = subprocess.run([sys.executable, __file__, "--floor", str(data)], capture_output=True, text=True,
                             check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    state = work / f"state-{kind}"
    if kind.startswith(WORKERS):
        port = free_port()
        cfg = work / f"{kind}.toml"
        n, _, encode = kind[len(WORKERS):].partition("+")
        cfg.write_text(bench_config(data, state, "memory", encode=encode == "encode" or None)
                       + f'[pipeline]\nworkers = {int(n)}\n[admin]\naddress = "127.0.0.1:{port}"\n')
        try:
            return run_workers(cfg, port, entries, timeout, work / f"{kind}.log")
        finally:
            shutil.rmtree(state, ignore_errors=True)
    receiver = None
    if kind == "syslog":
        from tests.integration.rsyslog import Rsyslog

        receiver = Rsyslog(inputs=("tcp",), keep=False)
        receiver.start()
        section = f'[sinks.sys]\ntype = "syslog"\naddress = "{receiver.address("tcp")}"\n' + extra
    elif kind == "file":
        section = f'[sinks.out]\ntype = "file"\npath = "{work / "out.jsonl"}"\n' + extra
    else:
        section = NULL_SECTION + ("encode = true\n" if kind == "null+encode" else "")
    try:
        cfg = work / f"{kind}.toml"
        cfg.write_text(bench_config(data, state, "memory").replace(NULL_SECTION, section))
        return run_daemon(cfg, entries, timeout)
    finally:
        if receiver is not None:
            receiver.stop()
            shutil.rmtree(receiver.dir, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        for f in work.glob("out.jsonl*"):  # the live file and the rotated ones
            f.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap, timeout=600)
    ap.add_argument("--kinds", default=KINDS, help=f"comma-separated, of: {KINDS}")
    ap.add_argument("--sink-keys", default="", help='more keys for the file and syslog sinks, TOML, ";" between '
                                                     'keys: "max_in_flight = 2"')
    ap.add_argument("--floor", metavar="DATA", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.floor:
        floor(Path(a.floor))
        return
    # Byte-compiled first, as installing the package leaves it: with PYTHONDONTWRITEBYTECODE set and no .pyc,
    # every start would compile shipper's modules again (0.07 s of a worker's start-up on this machine).
    compileall.compile_dir(str(HERE.parent / "shipper"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="shipper-sinks-bench-"))
    try:
        w = workload(a, work)
        kinds = a.kinds.split(",")
        extra = a.sink_keys.replace(";", "\n") + "\n"
        results = run_interleaved(kinds, a.runs, lambda kind: one_run(kind, w.data, work, w.entries, a.timeout,
                                                                         extra))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"\nshipper sinks benchmark: {w.entries:,} json-file entries, {a.containers} containers, memory buffer, "
          f"median of {a.runs} runs, load average {load} at the end")
    kinds_table(results, "null", per="entries")
    if "floor" in results:
        cpu_floor = statistics.median(r["cpu"] / r["entries"] for r in results["floor"])
        print("\nCPU per entry against the floor: " + ", ".join(
            f"{k} {statistics.median(r['cpu'] / r['entries'] for r in rs) / cpu_floor:.1f}x"
            for k, rs in results.items() if k != "floor"))
    one, two = results.get(f"{WORKERS}1"), results.get(f"{WORKERS}2")
    if one and two:
        def rate(rs: list[dict[str, float]]) -> float:
            return statistics.median(r["entries"] / r["wall"] for r in rs)

        def startup(rs: list[dict[str, float]]) -> float:
            return statistics.median(r["startup"] for r in rs)

        def steady(rs: list[dict[str, float]]) -> float:
            return statistics.median(r["entries"] / (r["wall"] - r["startup"]) for r in rs)

        print(f"\n{WORKERS}2 against {WORKERS}1: {rate(two) / rate(one):.2f}x the rate from the process's start, "
              f"{steady(two) / steady(one):.2f}x from the first entry read ({steady(one):,.0f} and "
              f"{steady(two):,.0f} entries/s; start-up until /metrics first counted an entry read: "
              f"{startup(one):.2f} s and {startup(two):.2f} s, medians)")


if __name__ == "__main__":
    main()
