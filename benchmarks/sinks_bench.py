"""What each sink costs, against the floor, in one run on the same data.

The reference workload (benchmarks/workload.py) is read by the whole daemon (discovery = "files", memory buffer,
default config otherwise, as pipeline_bench.py runs it) and delivered to:
- `floor`: no daemon: one process reads every json-file log and `orjson.loads` each entry (the physical floor
  of any shipper written in Python);
- `null`: the null sink (reading, rebuilding and buffering only), and `null+encode` (the null sink building each
  event's ECS JSON, what every JSON sink pays);
- `file`: the file sink writing ECS JSON lines to a file on the same disk;
- `syslog`: the syslog sink, RFC 5424 over TCP, into a real rsyslogd that writes every message to a file.

Kinds run interleaved, each in a fresh process with fresh state; the table shows medians: json-file
entries/s, CPU seconds per million entries (the daemon's own; rsyslogd runs apart), peak RSS, and each
kind's rate against the null sink and its CPU per entry against the floor.

    python benchmarks/sinks_bench.py --records 1000000 --runs 5
    python benchmarks/sinks_bench.py --kinds floor,null,file --runs 5
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import add_workload_args, kinds_table, run_daemon, run_interleaved, workload  # noqa: E402
from pipeline_bench import bench_config  # noqa: E402

KINDS = "floor,null,null+encode,file,syslog"
NULL_SECTION = '[sinks.null]\ntype = "null"\n'
CHUNK = 1 << 20


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


def one_run(kind: str, data: Path, work: Path, entries: int, timeout: float) -> dict[str, float]:
    if kind == "floor":
        out = subprocess.run([sys.executable, __file__, "--floor", str(data)], capture_output=True, text=True,
                             check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    state = work / f"state-{kind}"
    receiver = None
    if kind == "syslog":
        from tests.integration.rsyslog import Rsyslog

        receiver = Rsyslog(inputs=("tcp",))
        receiver.start()
        section = f'[sinks.sys]\ntype = "syslog"\naddress = "{receiver.address("tcp")}"\n'
    elif kind == "file":
        section = f'[sinks.out]\ntype = "file"\npath = "{work / "out.jsonl"}"\n'
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
        (work / "out.jsonl").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap, timeout=600)
    ap.add_argument("--kinds", default=KINDS, help=f"comma-separated, of: {KINDS}")
    ap.add_argument("--floor", metavar="DATA", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.floor:
        floor(Path(a.floor))
        return
    work = Path(tempfile.mkdtemp(prefix="shipper-sinks-bench-"))
    try:
        w = workload(a, work)
        kinds = a.kinds.split(",")
        results = run_interleaved(kinds, a.runs, lambda kind: one_run(kind, w.data, work, w.entries, a.timeout))
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


if __name__ == "__main__":
    main()
