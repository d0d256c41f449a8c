"""shipper and Fluent Bit side by side: the same json-file logs, the same output, interleaved runs.

Every kind is a real process started fresh, with fresh state, and polled over HTTP until everything is
delivered; its clock runs from the process's start, so start-up counts for both:
- `shipper`: `python -m shipper --config CFG run`, its default config but for `discovery = "files"` (no
  dockerd: the workload is a folder) and an admin address; done when /metrics counts every json-file entry
  read and every event read sent;
- `fluent-bit`: the tail input with Docker's multiline parser (it joins dockerd's 16 KiB partial entries, as
  shipper does; it does not merge stack traces) and 64 KiB chunks, Fluent Bit's defaults; `fluent-bit-tuned`:
  1 MiB chunks and a 0.2 s flush. Done when /api/v1/metrics shows the output processed as many records as
  there are entries once the partial ones are joined.

`--output` picks what both deliver to: `null` (each program's null output), `file` (shipper's file sink,
ECS JSON lines; Fluent Bit's file output, `Format plain`: the record as JSON) or `syslog` (RFC 5424 over TCP
into a real rsyslogd that writes every message to a file; rsyslogd's CPU is not counted).

CPU is the program's own (utime + stime of its processes from /proc when it is done, before it is stopped);
peak RSS their VmHWM summed; entries/s is json-file entries over the wall time, the same input for both.
The table shows medians and each kind against shipper.

    python benchmarks/peer_bench.py --fluent-bit /path/to/fluent-bit --runs 5
    python benchmarks/peer_bench.py --fluent-bit /path/to/fluent-bit --output syslog --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import add_workload_args, workload  # noqa: E402
from pipeline_bench import bench_config  # noqa: E402
from sinks_bench import POLL_SECS, STALL_SECS, free_port, process_tree, scrape, vm_hwm_mib  # noqa: E402

KINDS = ("shipper", "fluent-bit", "fluent-bit-tuned")
OUTPUTS = ("null", "file", "syslog")
STOP_SECS = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

FLUENT_BIT = """[SERVICE]
    Flush              {flush}
    Grace              1
    Log_Level          warn
    HTTP_Server        On
    HTTP_Listen        127.0.0.1
    HTTP_Port          {port}

[INPUT]
    Name               tail
    Tag                docker.*
    Path               {logs}/*/*-json.log
    Read_from_Head     On
    multiline.parser   docker, cri
    DB                 {db}
    Buffer_Chunk_Size  {chunk}
    Buffer_Max_Size    {chunk_max}
    Skip_Long_Lines    Off

[OUTPUT]
    Name               {output}
    Match              *
"""
SETUPS = {"fluent-bit": {"flush": "1", "chunk": "64k", "chunk_max": "128k"},
          "fluent-bit-tuned": {"flush": "0.2", "chunk": "1M", "chunk_max": "2M"}}


def joined_records(data: Path) -> int:
    """Entries once dockerd's partial ones are joined: what Fluent Bit's docker parser emits."""
    records = 0
    for f in data.glob("containers/*/*-json.log*"):
        with f.open("rb") as fh:
            for line in fh:
                records += orjson.loads(line)["log"].endswith("\n")
    return records


def cpu_secs(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / CLOCK_TICKS


def fluent_bit_processed(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    return float(sum(o.get("proc_records", 0) for o in doc.get("output", {}).values()))


def shipper_progress(url: str, entries: int) -> tuple[float, bool]:
    got = scrape(url)
    read, sent = got["shipper_entries_read_total"], got["shipper_events_sent_total"]
    return read, read >= entries and sent >= got["shipper_events_read_total"] > 0


def measure(argv: list[str], log: Path, progress: Callable[[], tuple[float, bool]], timeout: float,
            env: dict[str, str] | None = None) -> dict[str, float]:
    """Start `argv`, poll `progress` (a count that grows, and whether all is delivered) until done; the wall
    time, CPU and peak RSS of its processes then, before it is stopped."""
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=HERE.parent)
    try:
        last, changed, done = -1.0, time.monotonic(), False
        while not done:
            time.sleep(POLL_SECS)
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} ended early, exit status {proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                count, done = progress()
            except OSError:  # not listening yet
                count = last
            if count != last:
                last, changed = count, time.monotonic()
            elif last >= 0 and time.monotonic() - changed > STALL_SECS:
                raise RuntimeError(f"{argv[0]} stalled at {last:,.0f}; its log:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{argv[0]} not done within {timeout:.0f}s (at {last:,.0f}); its log:\n"
                                   f"{log.read_text()[-3000:]}")
        wall = time.perf_counter() - t0
        pids = process_tree(proc.pid)
        return {"wall": wall, "cpu": cpu_secs(pids), "rss_mib": sum(vm_hwm_mib(p) for p in pids)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_run(kind: str, a: argparse.Namespace, data: Path, work: Path, entries: int, records: int,
            syslog: str) -> dict[str, float]:
    os.sync()  # no run pays for writing back what the one before it wrote
    port = free_port()
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        if kind == "shipper":
            sink = {"null": '[sinks.null]\ntype = "null"\n',
                    "file": f'[sinks.out]\ntype = "file"\npath = "{out / "events.jsonl"}"\n',
                    "syslog": f'[sinks.sys]\ntype = "syslog"\naddress = "{syslog}"\n'}[a.output]
            cfg = work / "shipper.toml"
            cfg.write_text(bench_config(data, work / "state", "memory").replace('[sinks.null]\ntype = "null"\n', sink)
                           + f'[admin]\naddress = "127.0.0.1:{port}"\n')
            env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
            env.pop("SHIPPER_PIPELINE_WORKERS", None)
            url = f"http://127.0.0.1:{port}/metrics"
            return measure([sys.executable, "-m", "shipper", "--config", str(cfg), "run"], work / "shipper.log",
                           lambda: shipper_progress(url, entries), a.timeout, env)
        host, _, sport = syslog.partition("://")[2].rpartition(":")
        output = {"null": "null",
                  "file": f"file\n    Path               {out}\n    File               out.log\n"
                          "    Format             plain",
                  "syslog": f"syslog\n    Host               {host}\n    Port               {sport}\n"
                            "    Mode               tcp\n    Syslog_Format      rfc5424\n"
                            "    Syslog_Message_Key log"}[a.output]
        conf = work / f"{kind}.conf"
        conf.write_text(FLUENT_BIT.format(port=port, logs=data / "containers", db=work / "state.db", output=output,
                                          **SETUPS[kind]))
        url = f"http://127.0.0.1:{port}/api/v1/metrics"

        def progress() -> tuple[float, bool]:
            n = fluent_bit_processed(url)
            return n, n >= records
        return measure([a.fluent_bit, "-c", str(conf)], work / f"{kind}.log", progress, a.timeout)
    finally:
        shutil.rmtree(work / "state", ignore_errors=True)
        for f in work.glob("state.db*"):
            f.unlink()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap, timeout=300)
    ap.add_argument("--fluent-bit", default=shutil.which("fluent-bit") or "", help="the fluent-bit binary")
    ap.add_argument("--output", choices=OUTPUTS, default="null")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    if any(k.startswith("fluent-bit") for k in kinds) and not os.access(a.fluent_bit, os.X_OK):
        ap.error("give the Fluent Bit binary with --fluent-bit PATH (none on PATH)")
    work = Path(tempfile.mkdtemp(prefix="shipper-peer-bench-"))
    receiver = None
    try:
        w = workload(a, work)
        records = joined_records(w.data)
        syslog = ""
        if a.output == "syslog":
            from tests.integration.rsyslog import Rsyslog

            receiver = Rsyslog(inputs=("tcp",))
            receiver.start()
            syslog = receiver.address("tcp")
        results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for run in range(a.runs):
            for kind in kinds:
                r = one_run(kind, a, w.data, work, w.entries, records, syslog)
                results[kind].append(r)
                print(f"run {run + 1} {kind}: {w.entries / r['wall']:,.0f} entries/s, {r['cpu']:.2f} CPU s, "
                      f"{r['rss_mib']:.0f} MiB", file=sys.stderr)
    finally:
        if receiver is not None:
            receiver.stop()
            shutil.rmtree(receiver.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"\nshipper and Fluent Bit, output {a.output}: {w.entries:,} json-file entries ({records:,} once partial "
          f"entries are joined), {a.containers} containers, median of {a.runs} runs, load average {load} at the end")
    print(f"| {'program':<18} | {'entries/s':>10} | {'CPU s per M entries':>19} | {'peak RSS MiB':>12} | "
          f"{'rate vs shipper':>15} |")
    print(f"|{'-' * 20}|{'-' * 12}|{'-' * 21}|{'-' * 14}|{'-' * 17}|")

    def med(kind: str, f: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(f(r) for r in results[kind])

    rate = {k: med(k, lambda r: w.entries / r["wall"]) for k in kinds}
    for k in kinds:
        share = f"{rate[k] / rate['shipper']:.0%}" if "shipper" in rate else "-"
        print(f"| {k:<18} | {rate[k]:>10,.0f} | {med(k, lambda r: r['cpu'] / w.entries * 1e6):>19.2f} | "
              f"{med(k, lambda r: r['rss_mib']):>12.0f} | {share:>15} |")


if __name__ == "__main__":
    main()
