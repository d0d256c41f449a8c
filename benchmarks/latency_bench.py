"""End-to-end latency through the real dockerd: from the time Docker gave a log line to its arrival at a sink.

Each run starts a fresh `shipper run` (discovery = "api", the json-file reader, memory buffer) whose one sink
is the Logstash sink, protocol json_lines, into a TCP receiver in this process. `--containers` busybox
containers (the test image, `shipper-test:busybox`, made from /bin/busybox if missing) together write
`--rate` numbered lines a second for `--duration` seconds: each paces itself on /proc/uptime (10 ms steps)
and writes what is due, then waits 5 ms (a `read -t` on a FIFO: no process forked, so many containers cost
little CPU), so lines come in bursts of about rate/100 per container every 10 ms. The achieved rate is
Docker's: each container's lines over the span of their Docker timestamps, added up.

The receiver stamps every chunk it reads with `time.time_ns()` on receipt; a line's arrival is the stamp of
the chunk holding its newline. Its latency is that minus its `@timestamp`, which is the `time` Docker wrote
in the json-file log (when dockerd read the line from the container). Both clocks are this host's
CLOCK_REALTIME. Lines Docker stamped within `--warmup` seconds of their container's first line are left
out (they include the daemon finding the container and opening its log); every line is counted for missing
and duplicated ones. The table has p50, p90, p99 and max of each run, then the median of each over the runs,
per variant, runs interleaved (auto, off, auto, off, ...). A variant is a multi-line mode (`[multiline]
mode`), optionally with config keys of its own after a colon, `;` between them: `--variants
'off,off:sinks.out.linger_secs=0'` compares the default linger with none, run for run. The key
`receiver.quickack` is the receiver's: it ACKs every read at once (TCP_QUICKACK), where Linux delays the
ACK of a lone segment (up to 40 ms).

    python benchmarks/latency_bench.py                       # 20,000 lines/s x 20 s, 5 runs per mode
    python benchmarks/latency_bench.py --runs 3 --variants off --duration 10
    python benchmarks/latency_bench.py --variants 'off,off:sinks.out.linger_secs=0' --runs 7
    python benchmarks/latency_bench.py --set 'sinks.out.linger_secs=0.05'    # a key of the config changed

Needs a local dockerd (root or the docker group). The daemon is run from this checkout (PYTHONPATH); its
containers carry the label shipper.latency=<run id> and are removed at the end of each run, even on an error.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from soak import IMAGE, docker_client  # noqa: E402  (beside this script)

LABEL = "shipper.latency"
PAD = "x" * 64  # ~90-byte lines, as soak.py writes
MARK = "latency"
QUICKACK = "receiver.quickack"  # a variant's key for the receiver, not the daemon


def writer_script(total: int, rate: int) -> str:
    """busybox sh: `total` numbered lines at `rate` a second, paced on /proc/uptime (centiseconds)."""
    return (
        "mkfifo /pace; exec 3<>/pace; "  # read -t on it: a sleep of 5 ms that forks nothing
        "read s _ < /proc/uptime; start=${s%.*}${s#*.}; sent=0; "
        f"while [ $sent -lt {total} ]; do "
        "read s _ < /proc/uptime; now=${s%.*}${s#*.}; "
        f"due=$(( (now - start) * {rate} / 100 )); [ $due -gt {total} ] && due={total}; "
        f"while [ $sent -lt $due ]; do echo \"n=$sent {MARK} {PAD}\"; sent=$((sent+1)); done; "
        "read -t 0.005 _ <&3; done")


# --- the receiver --------------------------------------------------------------------------------------------


class Receiver:
    """A TCP server on 127.0.0.1 that keeps what it reads, each chunk stamped with time.time_ns() on receipt.
    Nothing is decoded while a run goes: that is done afterwards (`lines`)."""

    def __init__(self, quickack: bool = False) -> None:
        self.quickack = quickack
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.chunks: list[tuple[int, bytes]] = []
        self.newlines = 0
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        now, append = time.time_ns, self.chunks.append
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                append((now(), data))
                self.newlines += data.count(b"\n")
                if self.quickack:  # Linux clears it again on its own: set it after every read
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(arrival ns, line) for every whole line received (one connection at a time is what the sink
        keeps; a reconnect would start a new line stream, which the JSON check below would catch)."""
        tail = b""
        for stamp, data in self.chunks:
            data = tail + data
            end = data.rfind(b"\n")
            if end < 0:
                tail = data
                continue
            for line in data[:end].split(b"\n"):
                yield stamp, line
            tail = data[end + 1:]


class FileProbe:
    """--probe-file: reads each container's json-file every millisecond in a thread and stamps each line when
    it is first seen there, so the latency splits into dockerd's part (time -> in the file) and shipper's."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, list[int], list[bytes]]] = {}  # name -> fd, [offset], [tail]
        self.seen: dict[str, list[tuple[int, int]]] = {}  # name -> (docker ns, seen ns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, name: str, path: str) -> None:
        self.seen[name] = []
        self.files[name] = (os.open(path, os.O_RDONLY), [0], [b""])

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            for name, (fd, off, tail) in list(self.files.items()):
                data = os.pread(fd, 1 << 20, off[0])
                if not data:
                    continue
                now = time.time_ns()
                off[0] += len(data)
                data = tail[0] + data
                end = data.rfind(b"\n") + 1
                tail[0] = data[end:]
                seen = self.seen[name]
                for line in data[:end].splitlines():
                    i = line.find(b'"time":"') + 8
                    seen.append((docker_ns(line[i:line.index(b'"', i)].decode()), now))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd, _, _ in self.files.values():
            os.close(fd)


_EPOCH: dict[str, int] = {}


def docker_ns(ts: str) -> int:
    """Docker's RFC 3339 UTC time ("2026-11-30T09:10:00.123456789Z", trailing zeros trimmed) in ns."""
    head = ts[:19]
    secs = _EPOCH.get(head)
    if secs is None:
        secs = _EPOCH[head] = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    frac = ts[20:-1] if ts[19:20] == "." else ""
    return secs * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or "0")


# --- one run -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str  # the variant
    lines: int  # written
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    rate: float = 0.0  # lines a second by Docker's timestamps
    measured: int = 0  # lines after the warm-up
    p50: float = 0.0  # ms
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    shipper_cpu: float = 0.0  # % of one core over the logging
    file_p50: float = float("nan")  # --probe-file: Docker's time to the line being in the json-file, ms
    file_p99: float = float("nan")
    errors: list[str] = field(default_factory=list)


def pct(sorted_ms: list[float], p: float) -> float:
    """The nearest-rank percentile `p` (0-100) of an ascending list."""
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[k]


def config_text(work: Path, label: str, mode: str, port: int, sets: list[str]) -> str:
    """The daemon's config; `sets` are "section.key=value" lines added to their section (TOML values)."""
    sections: dict[str, list[str]] = {
        "docker": ['discovery = "api"'],
        "state": [f'dir = "{work / "state"}"'],
        "select": [f'include_labels = ["{LABEL}={label}"]'],
        "multiline": [f'mode = "{mode}"'],
        "telemetry": ['log_level = "info"', "stats_interval_secs = 0"],
        "sinks.out": ['type = "logstash"', 'protocol = "json_lines"', f'hosts = ["127.0.0.1:{port}"]'],
    }
    for s in sets:
        key, _, value = s.partition("=")
        section, _, name = key.strip().rpartition(".")
        lines = sections.setdefault(section, [])
        lines[:] = [x for x in lines if x.split("=")[0].strip() != name] + [f"{name} = {value.strip()}"]
    return "\n".join(f"[{name}]\n" + "\n".join(body) + "\n" for name, body in sections.items())


def cpu_secs(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(client: Any, variant: str, a: argparse.Namespace, work: Path) -> Result:
    """A fresh daemon, fresh containers, one receiver; the figures of the lines it received."""
    run_id = uuid.uuid4().hex[:10]
    mode, _, own = variant.partition(":")
    work = work / f"{mode}-{run_id}"
    work.mkdir(parents=True)
    per = int(a.rate * a.duration) // a.containers
    res = Result(variant, per * a.containers)
    sets = a.set + [x for x in own.split(";") if x]
    rx = Receiver(quickack=QUICKACK in sets)
    config = work / "shipper.toml"
    config.write_text(config_text(work, run_id, mode, rx.port, [x for x in sets if x != QUICKACK]))
    logf = open(work / "shipper.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=work)
    names = [f"latency-{run_id}-{i}" for i in range(a.containers)]
    probe = FileProbe() if a.probe_file else None
    try:
        deadline = time.monotonic() + 30
        while b" starting: " not in (work / "shipper.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shipper did not start:\n{(work / 'shipper.log').read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # subscribed to dockerd's events before the first container
        cpu0, t0 = cpu_secs(proc.pid), time.monotonic()
        for name in names:
            c = client.containers.run(IMAGE, ["sh", "-c", writer_script(per, a.rate // a.containers)], name=name,
                                      detach=True, labels={LABEL: run_id},
                                      log_config={"type": "json-file", "config": {"max-size": "200m"}})
            if probe is not None:
                c.reload()
                probe.add(name, c.attrs["LogPath"])
        for name in names:
            client.containers.get(name).wait(timeout=a.duration * 3 + 60)
        cpu1, t1 = cpu_secs(proc.pid), time.monotonic()
        res.shipper_cpu = 100 * (cpu1 - cpu0) / (t1 - t0)
        deadline = time.monotonic() + a.drain_timeout
        while rx.newlines < res.lines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)  # anything extra (duplicates) shows now
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                client.containers.get(name).remove(force=True)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()
        rx.close()
        if probe is not None:
            probe.close()
    res.errors = [x[:300] for x in (work / "shipper.log").read_text(errors="replace").splitlines()
                  if " ERROR " in x or "Traceback" in x]
    measure(res, rx, names, per, a.warmup)
    if probe is not None:
        ms = sorted((seen - ts) / 1e6 for got in probe.seen.values() if got
                    for ts, seen in got if ts >= got[0][0] + a.warmup * 1e9)
        res.file_p50, res.file_p99 = pct(ms, 50), pct(ms, 99)
    if not a.keep:
        (work / "shipper.log").unlink(missing_ok=True)
    return res


def measure(res: Result, rx: Receiver, names: list[str], per: int, warmup: float) -> None:
    """Latencies, rate, missing and duplicated lines from what the receiver got."""
    seen: dict[str, list[int]] = {}
    pairs: dict[str, list[tuple[int, int]]] = {}  # container -> (docker ns, arrival ns)
    for arrival, line in rx.lines():
        ev = orjson.loads(line)
        msg = ev["message"]
        if f" {MARK} " not in msg:
            continue
        n = int(msg[2:msg.index(" ")])
        name = ev["container"]["name"]
        counts = seen.get(name)
        if counts is None:
            counts = seen[name] = [0] * per
            pairs[name] = []
        counts[n] += 1
        pairs[name].append((docker_ns(ev["@timestamp"]), arrival))
    res.delivered = sum(map(len, pairs.values()))
    res.missing = sum(seen[name].count(0) if name in seen else per for name in names)
    res.duplicates = sum(max(0, k - 1) for c in seen.values() for k in c)
    if not pairs:
        return
    ms: list[float] = []
    for got in pairs.values():
        first = min(p[0] for p in got)
        last = max(p[0] for p in got)
        res.rate += len(got) / ((last - first) / 1e9) if last > first else 0.0
        ms.extend((arr - ts) / 1e6 for ts, arr in got if ts >= first + warmup * 1e9)
    ms.sort()
    res.measured = len(ms)
    res.p50, res.p90, res.p99 = pct(ms, 50), pct(ms, 90), pct(ms, 99)
    res.max = ms[-1] if ms else float("nan")


# --- the table -----------------------------------------------------------------------------------------------


COLUMNS = ("variant", "run", "lines/s", "lines", "missing", "dup", "p50 ms", "p90 ms", "p99 ms", "max ms",
           "shipper %core", "in file p50 ms", "in file p99 ms")


def row(r: Result, run: str) -> tuple[str, ...]:
    return (r.mode, run, f"{r.rate:,.0f}", f"{r.delivered:,}", f"{r.missing:,}", f"{r.duplicates:,}",
            f"{r.p50:.1f}", f"{r.p90:.1f}", f"{r.p99:.1f}", f"{r.max:.1f}", f"{r.shipper_cpu:.0f}",
            *("-" if math.isnan(x) else f"{x:.1f}" for x in (r.file_p50, r.file_p99)))


def median_row(rs: list[Result]) -> tuple[str, ...]:
    def med(name: str) -> float:
        return statistics.median(getattr(r, name) for r in rs)

    m = Result(rs[0].mode, 0, delivered=int(med("delivered")), missing=sum(r.missing for r in rs),
               duplicates=sum(r.duplicates for r in rs), rate=med("rate"), p50=med("p50"), p90=med("p90"),
               p99=med("p99"), max=med("max"), shipper_cpu=med("shipper_cpu"), file_p50=med("file_p50"),
               file_p99=med("file_p99"))
    return row(m, f"median of {len(rs)}")


def table(rows: list[tuple[str, ...]]) -> str:
    """A markdown table."""
    widths = [max(len(x[i]) for x in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=20_000, help="lines a second, all containers together")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of logging per run")
    p.add_argument("--containers", type=int, default=1, help="containers sharing the rate")
    p.add_argument("--runs", type=int, default=5, help="runs per variant")
    p.add_argument("--variants", default="auto,off", help="multi-line modes to compare, each optionally with "
                   "keys of its own: 'off,off:sinks.out.linger_secs=0;docker.poll_interval_secs=0.1'")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of each run's first lines left out")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="longest wait for the last lines")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config key for every run (TOML value), e.g. 'sinks.out.linger_secs=0.05'")
    p.add_argument("--probe-file", action="store_true", help="also time each line's arrival in the json-file "
                   "(dockerd's part of the latency), read every millisecond")
    p.add_argument("--work", type=Path, help="where configs and logs go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the daemon's logs")
    a = p.parse_args(argv)
    root = str(HERE.parent)  # the daemon runs from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)
    work = a.work or Path(tempfile.mkdtemp(prefix="shipper-latency-"))
    modes = [m for m in a.variants.split(",") if m]
    print(f"latency: {a.rate:,} lines/s from {a.containers} container(s) for {a.duration:g}s, {a.runs} runs per "
          f"variant {modes}, warm-up {a.warmup:g}s left out{', ' + ', '.join(a.set) if a.set else ''}; "
          f"load average {os.getloadavg()[0]:.2f}; work {work}", flush=True)
    client = docker_client()
    results: dict[str, list[Result]] = {m: [] for m in modes}
    rows: list[tuple[str, ...]] = []
    ok = True
    for i in range(a.runs):
        for mode in modes:
            r = one_run(client, mode, a, work)
            results[mode].append(r)
            rows.append(row(r, str(i + 1)))
            print(table([rows[-1]]).splitlines()[-1], flush=True)
            for e in r.errors[:5]:
                print(f"  shipper: {e}")
            ok = ok and r.missing == 0 and not r.errors
    print()
    print(table(rows + [median_row(results[m]) for m in modes]))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
