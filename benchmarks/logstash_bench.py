"""End-to-end throughput into Logstash protocols, against the null sink in the same run.

The reference workload (benchmarks/workload.py) is read by the whole daemon (discovery = "files", as
pipeline_bench.py does) and delivered to:
- `null`: the null sink (the ceiling: reading, rebuilding and buffering only), and `null+encode` (the null
  sink building each event's ECS JSON, what any JSON sink pays before its protocol);
- `beats`: the Logstash sink, protocol beats, compressed windows (level 3, Filebeat's default), to a local
  Lumberjack receiver that reads each window's frames and ACKs it without decompressing or decoding;
- `json_lines`: the Logstash sink, protocol json_lines, to a local TCP receiver that reads and discards.

Each receiver is a process of its own; the daemon's CPU (worker threads included: compression runs there) is
what is reported. Each run is a fresh daemon process with fresh state; the table shows medians.

    python benchmarks/logstash_bench.py --records 1000000 --runs 3

Profile one run: python benchmarks/logstash_bench.py --runs 1 --keep (prints the config), then
python -m cProfile -o /tmp/p.out benchmarks/pipeline_bench.py --child CONFIG ENTRIES.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import add_workload_args, kinds_table, run_daemon, run_interleaved, workload  # noqa: E402
from pipeline_bench import bench_config  # noqa: E402

NULL_SECTION = '[sinks.null]\ntype = "null"\n'


# --- receivers (each run in a process of its own) -------------------------------------------------------


async def _beats_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads whole windows by their frame headers and ACKs each; nothing is decompressed or decoded."""
    try:
        while True:
            head = await reader.readexactly(6)
            if head[:2] != b"2W":
                raise ConnectionError(f"not a window: {head!r}")
            count = struct.unpack(">I", head[2:])[0]
            seen = 0
            while seen < count:
                kind = await reader.readexactly(2)
                if kind == b"2C":
                    (size,) = struct.unpack(">I", await reader.readexactly(4))
                    await reader.readexactly(size)
                    seen = count  # one compressed frame carries the window's json frames
                elif kind == b"2J":
                    _, size = struct.unpack(">II", await reader.readexactly(8))
                    await reader.readexactly(size)
                    seen += 1
                else:
                    raise ConnectionError(f"frame {kind!r}")
            writer.write(b"2A" + struct.pack(">I", count))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _lines_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(1 << 20):
        pass
    writer.close()


def receiver(kind: str, port: int) -> None:
    async def main() -> None:
        handler = _beats_conn if kind == "beats" else _lines_conn
        server = await asyncio.start_server(handler, "127.0.0.1", port, limit=1 << 20)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- runs -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink_section(kind: str, port: int, extra: str = "") -> str:
    if kind == "null":
        return NULL_SECTION
    if kind == "null+encode":
        return NULL_SECTION + "encode = true\n"
    protocol = "beats" if kind == "beats" else "json_lines"
    return (f'[sinks.ls]\ntype = "logstash"\nprotocol = "{protocol}"\nhosts = ["127.0.0.1:{port}"]\n'
            + ("" if "compression_level" in extra else "compression_level = 3\n") + extra)


def one_run(kind: str, data: Path, work: Path, entries: int, timeout: float, keep: bool,
            extra: str = "") -> dict[str, float]:
    state = work / f"state-{kind}"
    port = free_port()
    proc = None
    if kind in ("beats", "json_lines"):
        proc = subprocess.Popen([sys.executable, __file__, "--receiver", kind, str(port)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        cfg = work / f"{kind}.toml"
        base = bench_config(data, state, "memory")
        cfg.write_text(base.replace(NULL_SECTION, sink_section(kind, port, extra)))
        if keep:
            print(f"config {kind}: {cfg}", file=sys.stderr)
        return run_daemon(cfg, entries, timeout)
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap, timeout=600)
    ap.add_argument("--kinds", default="null,null+encode,beats,json_lines")
    ap.add_argument("--keep", action="store_true", help="keep the configs and say where they are")
    ap.add_argument("--sink-keys", default="", help='more keys for the Logstash sinks, TOML: "max_in_flight = 1"')
    ap.add_argument("--receiver", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.receiver:
        receiver(a.receiver[0], int(a.receiver[1]))
        return

    work = Path(tempfile.mkdtemp(prefix="shipper-logstash-bench-"))
    try:
        run_all(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def run_all(a: argparse.Namespace, work: Path) -> None:
    w = workload(a, work)
    data, entries = w.data, w.entries
    kinds = a.kinds.split(",")
    extra = a.sink_keys.replace(';', '\n') + '\n'
    results = run_interleaved(kinds, a.runs, lambda kind: one_run(kind, data, work, entries, a.timeout, a.keep,
                                                                   extra))
    sys.path.insert(0, str(HERE.parent))
    from shipper.sinks.logstash.lumberjack import DEFLATE_BACKEND

    print(f"\nshipper Logstash benchmark: {entries:,} json-file entries, {a.containers} containers, memory buffer, "
          f"beats windows deflated by {DEFLATE_BACKEND}, median of {a.runs} runs")
    kinds_table(results, "null")

if __name__ == "__main__":
    main()
