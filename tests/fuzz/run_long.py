"""The long fuzz run: the properties of tests/fuzz (props.py) with a big budget, one worker per target.

    python3 tests/fuzz/run_long.py                          # every target, 300 s each, 2 at a time
    python3 tests/fuzz/run_long.py --seconds 60 --targets jsonfile,syslog --jobs 1
    python3 tests/fuzz/run_long.py --engine hypothesis      # without atheris (slower per input)

Engine `atheris` (pip install atheris; coverage-guided libFuzzer over instrumented shipper code) is used when
it imports, else `hypothesis`. Inputs that hit a known bug (props.KNOWN_BUGS) are counted, not failures; any
other exception or failed property is a failure: the worker keeps going, saves the first inputs that failed
under --artifacts and prints their tracebacks. Prints a table: target, inputs run, seconds, inputs/s,
failures, known-bug hits. Exit status 1 when any target failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("jsonfile", "assemble", "config", "spool_open", "spool_record", "spool_scan", "syslog",
           "docker_events", "docker_inspect", "docker_frames")
MAX_SAVED = 20


# --- inputs from atheris' bytes ---------------------------------------------------------------------------


def _ints(fdp: Any, n: int, hi: int) -> list[int]:
    return [fdp.ConsumeIntInRange(0, hi) for _ in range(n)]


def _json(fdp: Any, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5, 6):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind in (7, 8):
        return {fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)): _json(fdp, depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 4))}
    return [_json(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]


def _pick(fdp: Any, options: Any) -> Any:
    return options[fdp.ConsumeIntInRange(0, len(options) - 1)]


STAMPS = ("2024-05-01T12:00:00.000000001Z", "2024-05-01T12:00:00Z", "2024-13-45T99:99:99Z",
          "2024-05-01T12:00:00+02:00", "2024-05-01T12:00:00", "", "x", "9999-12-31T23:59:59-01:00",
          "2024-05-01T12:00:00.1234567891234Z", "0001-01-01T00:00:00+01:00")


def _stamp(fdp: Any) -> str:
    if fdp.ConsumeBool():
        return _pick(fdp, STAMPS)
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 35))


def _config_value(fdp: Any, strings: list[str], depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 12 if depth < 2 else 9)
    if kind <= 2:
        return _pick(fdp, strings)
    if kind == 3:
        return fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
    if kind == 4:
        return fdp.ConsumeIntInRange(0, 2**1400)
    if kind == 5:
        return fdp.ConsumeFloat()
    if kind == 6:
        return fdp.ConsumeBool()
    if kind in (7, 8, 9):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30))
    if kind in (10, 11):
        return [_config_value(fdp, strings, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {fdp.ConsumeUnicodeNoSurrogates(4): _config_value(fdp, strings, depth + 1)
            for _ in range(fdp.ConsumeIntInRange(0, 3))}


CONFIG_STRINGS = ["64KiB", "1m", "1e5", "1" + "0" * 400, "${HOME}", "${NOPE}", "${NOPE:-5}", "auto", "pattern",
                  "off", "field", "text", "memory", "disk", "always", "never", "block", "drop_oldest", "api",
                  "files", "end", "rfc5424", "rfc3164", "lf", "local0", "err", "1.3", "json", "unix:///dev/log",
                  "udp://127.0.0.1:514", "tcp://[::1]:6514", "udp://h:99999", "tcp://", "file", "syslog",
                  "stdout", "null", "(", "a{99999999999}", "(" * 1100, "x*", "docker@32473", "{container.name}",
                  "{nope}", "{", "name@", "a b@1", "bogus"]


def build_input(target: str, data: bytes, fdp_cls: Any) -> tuple[Any, ...]:
    """atheris' bytes -> the arguments of the target's check function."""
    from tests.fuzz import props, strategies

    fdp = fdp_cls(data)
    if target == "jsonfile":
        variant = fdp.ConsumeIntInRange(0, 3)
        cuts = _ints(fdp, fdp.ConsumeIntInRange(0, 6), 1 << 20)
        huge = fdp.ConsumeIntInRange(0, 63) == 0
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        if huge:
            n = props.MAX_ENTRY_BYTES + (len(body) % 2000) - 64
            body = b'{"log":"' + b"y" * n + b'\\n","stream":"stdout","time":"t"}\n' + body
        return body, cuts, variant
    if target == "assemble":
        variant = fdp.ConsumeIntInRange(0, 3)
        ops = []
        while fdp.remaining_bytes() and len(ops) < 40:
            kind = fdp.ConsumeIntInRange(0, 5)
            if kind >= 4:
                ops.append((kind - 3, 0, ""))
                continue
            n = fdp.ConsumeIntInRange(0, 11)
            text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 48))
            if fdp.ConsumeIntInRange(0, 15) == 0:
                text *= fdp.ConsumeIntInRange(1, 400)
            ops.append((0, n, text + _pick(fdp, ("\n", "\n", "", "\r\n", "\r"))))
        return ops, variant
    if target == "config":
        tree: dict[str, Any] = {}
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            name = _pick(fdp, [*strategies.SECTIONS, "sinks", "sinks", "bogus"])
            if name == "sinks":
                tree["sinks"] = {
                    _pick(fdp, ["a", "b", ""]): {
                        **{_pick(fdp, strategies.SINK_FIELDS["syslog"]): _config_value(fdp, CONFIG_STRINGS)
                           for _ in range(fdp.ConsumeIntInRange(0, 4))},
                        "type": _pick(fdp, [*strategies.SINK_FIELDS, "bogus"])}
                    for _ in range(fdp.ConsumeIntInRange(0, 2))} if fdp.ConsumeIntInRange(0, 7) else \
                    _config_value(fdp, CONFIG_STRINGS)
            elif name in strategies.SECTIONS and fdp.ConsumeIntInRange(0, 7):
                keys = strategies.SECTIONS[name]
                tree[name] = {_pick(fdp, keys): _config_value(fdp, CONFIG_STRINGS)
                              for _ in range(fdp.ConsumeIntInRange(0, 4))}
            else:
                tree[name] = _config_value(fdp, CONFIG_STRINGS)
        env = {"X": fdp.ConsumeUnicodeNoSurrogates(8)} if fdp.ConsumeBool() else {}
        return tree, env
    if target == "spool_open":
        compression = fdp.ConsumeBool()
        ops = [(fdp.ConsumeIntInRange(0, 5), fdp.ConsumeIntInRange(0, 20), fdp.ConsumeIntInRange(0, 1 << 16),
                fdp.ConsumeIntInRange(0, 1 << 16)) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        return ops, compression
    if target == "spool_record":
        compress = fdp.ConsumeBool()
        seq = fdp.ConsumeIntInRange(0, 2**64 - 1)
        return fdp.ConsumeBytes(fdp.remaining_bytes()), compress, seq
    if target == "spool_scan":
        if fdp.ConsumeIntInRange(0, 3):
            tpl = props.spool_template(fdp.ConsumeBool())
            name = _pick(fdp, tpl.files[:-1])
            buf = bytearray((tpl.directory / "segments" / name).read_bytes())
            for _ in range(fdp.ConsumeIntInRange(0, 4)):
                if not buf:
                    break
                i = fdp.ConsumeIntInRange(0, len(buf) - 1)
                how = fdp.ConsumeIntInRange(0, 3)
                if how == 0:
                    buf[i] ^= fdp.ConsumeIntInRange(1, 255)
                elif how == 1:
                    del buf[i:]
                elif how == 2:
                    buf[i:i] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 60))
                else:
                    buf += buf[i:i + fdp.ConsumeIntInRange(1, 200)]
            first = int(name.split(".")[0])
            return bytes(buf), _pick(fdp, (first, first, first + 1, 0))
        return fdp.ConsumeBytes(fdp.remaining_bytes()), fdp.ConsumeIntInRange(0, 5)
    if target == "syslog":
        from shipper.event import ContainerMeta, Event
        from shipper.sinks.syslog.encode import Format, Framing

        def text(n: int = 30) -> str:
            return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, n))

        meta = ContainerMeta(text(70), text(), text(), {text(40): text() for _ in range(fdp.ConsumeIntInRange(0, 3))},
                             text(300))
        events = []
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            msg = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80))
            if fdp.ConsumeIntInRange(0, 7) == 0:
                msg *= fdp.ConsumeIntInRange(1, 300)
            fields = ({_pick(fdp, ("level", "severity", "log.level", "log")): _json(fdp)}
                      if fdp.ConsumeBool() else None)
            events.append(Event(_stamp(fdp), msg, _pick(fdp, ("stdout", "stderr", "x")), fields,
                                fdp.ConsumeIntInRange(0, 15), fdp.ConsumeIntInRange(0, 5)))
        templates = ("{container.name}", "{container.id:12}", "-", "", "app", "{stream}", "{host.name}", "x" * 60,
                     "p" * 128, "{compose.project}-{compose.service}")
        case = props.SyslogCase(_pick(fdp, list(Format)), _pick(fdp, [None, *Framing]),
                                fdp.ConsumeIntInRange(480, 70000), meta, events, text(300), _pick(fdp, templates),
                                _pick(fdp, templates), _pick(fdp, templates), fdp.ConsumeBool(), fdp.ConsumeBool())
        return (case,)
    if target == "docker_events":
        cuts = sorted(_ints(fdp, fdp.ConsumeIntInRange(0, 4), 4096))
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        points = [0, *[c % (len(raw) + 1) for c in cuts], len(raw)]
        points.sort()
        return ([raw[a:b] for a, b in itertools.pairwise(points)],)
    if target == "docker_inspect":
        doc: dict[str, Any] = {}
        for key, sub in (("Id", None), ("Name", None), ("Image", None), ("LogPath", None), ("Created", None),
                         ("ID", None), ("Config", ("Image", "Labels", "Env", "Tty")),
                         ("State", ("Running", "StartedAt")), ("HostConfig", ("LogConfig", "AutoRemove"))):
            how = fdp.ConsumeIntInRange(0, 5)
            if how == 0:
                continue
            if sub is None or how == 1:
                doc[key] = ("c" * 64 if key in ("Id", "ID") and how > 2 else _json(fdp))
            else:
                doc[key] = {k: _json(fdp) for k in sub if fdp.ConsumeBool()}
                if key == "Config" and fdp.ConsumeBool():
                    doc[key]["Labels"] = {text: text for text in (fdp.ConsumeUnicodeNoSurrogates(5),)}
                    doc[key]["Env"] = ["A=1", fdp.ConsumeUnicodeNoSurrogates(6)]
        return (doc if fdp.ConsumeIntInRange(0, 15) else _json(fdp),)
    if target == "docker_frames":
        tty = fdp.ConsumeIntInRange(0, 4) == 0
        cuts = sorted(_ints(fdp, fdp.ConsumeIntInRange(0, 5), 4096))
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        points = sorted([0, *[c % (len(raw) + 1) for c in cuts], len(raw)])
        return [raw[a:b] for a, b in itertools.pairwise(points)], tty
    raise ValueError(target)


CHECKS = {"jsonfile": "check_jsonfile", "assemble": "check_assemble", "config": "check_config",
          "spool_open": "check_spool_open", "spool_record": "check_record", "spool_scan": "check_scan",
          "syslog": "check_syslog", "docker_events": "check_events", "docker_inspect": "check_inspect",
          "docker_frames": "check_frames"}


def seeds(target: str) -> list[bytes]:
    """A few valid inputs for libFuzzer to start from (it mutates them)."""
    import struct

    line = b'{"log":"hello world\\n","stream":"stdout","time":"2024-05-01T12:00:00.000000001Z"}\n'
    ts = b"2024-05-01T12:00:00.000000001Z "
    if target == "jsonfile":
        return [b"\x00\x00" + line * 3, b"\x01\x02\x10\x20" + line + line.replace(b"\\n", b"") + b"\x00\x00" + line]
    if target == "docker_events":
        ev = (b'{"Type":"container","Action":"start","Actor":{"ID":"' + b"a" * 64 +
              b'","Attributes":{"name":"web","image":"nginx","tier":"x"}},"time":1714564800,'
              b'"timeNano":1714564800000000000}\n')
        return [b"\x00" + ev + ev.replace(b"start", b"die") + ev.replace(b"start", b"rename")]
    if target == "docker_frames":
        def frame(k: int, p: bytes) -> bytes:
            return struct.pack(">BxxxL", k, len(p)) + p
        return [b"\x01\x00" + frame(1, ts + b"out\n") + frame(2, ts + b"err") + frame(2, ts + b"or\n"),
                b"\x00\x02" + ts + b"tty line\r\n" + ts + b"x"]
    return [bytes(range(256)), b"\x00" * 64, b"\xff" * 64]


# --- workers ----------------------------------------------------------------------------------------------


class Tally:
    def __init__(self, target: str, out: Path, artifacts: Path) -> None:
        self.target = target
        self.out = out
        self.artifacts = artifacts
        self.runs = 0
        self.failures = 0
        self.hits: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.start = time.monotonic()
        self._written = 0.0

    def failed(self, data: Any, exc: BaseException) -> None:
        self.failures += 1
        tb = "".join(traceback.format_exception(exc))
        kind = f"{type(exc).__name__}: {str(exc)[:120]}"
        self.kinds[kind] += 1
        if kind not in self.first and len(self.first) < MAX_SAVED:
            self.first[kind] = tb
            self.artifacts.mkdir(parents=True, exist_ok=True)
            name = f"{self.target}-{len(self.first):02d}"
            (self.artifacts / f"{name}.txt").write_text(f"{kind}\ninput: {data!r}\n\n{tb}"[:200_000])
            if isinstance(data, bytes):
                (self.artifacts / f"{name}.bin").write_bytes(data)

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < 1.0:
            return
        self._written = now
        doc = {"target": self.target, "runs": self.runs, "seconds": now - self.start, "failures": self.failures,
               "hits": dict(self.hits), "kinds": dict(self.kinds.most_common(10)), "first": self.first}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.out)


def worker_atheris(target: str, seconds: float, tally: Tally, corpus: Path, instrument: bool) -> None:
    import atheris

    if instrument:
        with atheris.instrument_imports(include=["shipper"]):
            from tests.fuzz import props
    else:
        from tests.fuzz import props
    check = getattr(props, CHECKS[target])
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    if target in ("spool_open", "spool_scan"):
        props.spool_template(False)
        props.spool_template(True)

    def one(data: bytes) -> None:
        tally.runs += 1
        try:
            args = build_input(target, data, atheris.FuzzedDataProvider)
            tally.hits.update(check(*args))
        except Exception as e:
            tally.failed(data, e)
        tally.save()
        if time.monotonic() - tally.start > seconds:
            tally.save(force=True)
            os._exit(0)

    max_len = {"jsonfile": 8192, "docker_events": 8192, "docker_frames": 8192}.get(target, 4096)
    atheris.Setup([sys.argv[0], f"-max_len={max_len}", "-rss_limit_mb=4096", "-print_final_stats=0",
                   str(corpus)], one)
    atheris.Fuzz()


def worker_hypothesis(target: str, seconds: float, tally: Tally) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.fuzz import props, strategies

    check = getattr(props, CHECKS[target])
    strat = {
        "jsonfile": strategies.jsonfile_input(), "assemble": strategies.assemble_ops(),
        "config": st.tuples(strategies.config_tree(), strategies.ENV),
        "spool_open": st.tuples(strategies.SPOOL_OPS, st.booleans()),
        "spool_record": st.tuples(strategies.RECORD_PAYLOAD, st.booleans(), st.integers(0, 2**64 - 1)),
        "spool_scan": st.tuples(st.binary(max_size=300), st.integers(0, 5)),
        "syslog": st.tuples(strategies.SYSLOG_CASE), "docker_events": st.tuples(strategies.event_chunks()),
        "docker_inspect": st.tuples(strategies.INSPECT_DOC), "docker_frames": strategies.frame_chunks(),
    }[target]

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strat)
    def body(args: tuple[Any, ...]) -> None:
        tally.runs += 1
        try:
            tally.hits.update(check(*args))
        except Exception as e:
            tally.failed(args, e)
        tally.save()

    while time.monotonic() - tally.start < seconds:
        body()
    tally.save(force=True)


# --- the driver -------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--seconds", type=float, default=300.0, help="per target")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--artifacts", default=str(Path(tempfile.gettempdir()) / "shipper-fuzz-artifacts"))
    ap.add_argument("--corpus", default=str(Path(tempfile.gettempdir()) / "shipper-fuzz-corpus"))
    ap.add_argument("--no-instrument", dest="instrument", action="store_false",
                    help="atheris without coverage instrumentation of shipper (mutation only, about 2x the inputs/s)")
    ap.add_argument("--code", default="", help="import shipper from this folder instead of the work tree "
                    "(e.g. a `git archive HEAD shipper` snapshot, while the work tree is being edited)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    logging.disable(logging.CRITICAL)  # shipper logs every skipped input once: noise here

    if args.worker:
        tally = Tally(args.worker, Path(args.out), Path(args.artifacts))
        if args.engine == "atheris":
            worker_atheris(args.worker, args.seconds, tally, Path(args.corpus) / args.worker, args.instrument)
        else:
            worker_hypothesis(args.worker, args.seconds, tally)
        return 0

    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    work = Path(tempfile.mkdtemp(prefix="shipper-fuzz-run-"))
    print(f"engine={engine} instrument={args.instrument} targets={len(targets)} seconds/target={args.seconds:g} "
          f"jobs={args.jobs} code={args.code or ROOT} "
          f"artifacts={args.artifacts}", flush=True)
    pending = list(targets)
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    results: dict[str, dict[str, Any]] = {}
    wall = time.monotonic()
    while pending or running:
        while pending and len(running) < args.jobs:
            t = pending.pop(0)
            out = work / f"{t}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", t, "--out", str(out),
                   "--seconds", str(args.seconds), "--engine", engine, "--artifacts", args.artifacts,
                   "--corpus", args.corpus, *([] if args.instrument else ["--no-instrument"]),
                   *(["--code", args.code] if args.code else [])]
            log = open(work / f"{t}.log", "wb")  # noqa: SIM115 - closed with the process
            running[t] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), out)
        time.sleep(0.5)
        for t, (proc, out) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[t]
            try:
                results[t] = json.loads(out.read_text())
            except (OSError, ValueError):
                results[t] = {"target": t, "runs": 0, "seconds": 0.0, "failures": 1, "hits": {},
                              "kinds": {f"worker exited {proc.returncode}, see {work / (t + '.log')}": 1}}
            if proc.returncode not in (0, None) and not results[t]["failures"]:
                results[t]["failures"] = 1
                results[t]["kinds"] = {f"worker exited {proc.returncode}, see {work / (t + '.log')}": 1}
            r = results[t]
            print(f"  done {t}: {r['runs']} inputs in {r['seconds']:.0f}s, failures {r['failures']}", flush=True)

    print()
    print(f"{'target':<16}{'inputs':>12}{'seconds':>10}{'inputs/s':>10}{'failures':>10}  known-bug hits")
    total_runs = total_fail = 0
    total_secs = 0.0
    for t in targets:
        r = results[t]
        rate = r["runs"] / r["seconds"] if r["seconds"] else 0.0
        hits = ", ".join(f"{k} {v}" for k, v in sorted(r["hits"].items())) or "-"
        print(f"{t:<16}{r['runs']:>12,}{r['seconds']:>10.0f}{rate:>10,.0f}{r['failures']:>10}  {hits}")
        total_runs += r["runs"]
        total_fail += r["failures"]
        total_secs += r["seconds"]
    print(f"{'total':<16}{total_runs:>12,}{total_secs:>10.0f}{total_runs / max(total_secs, 1e-9):>10,.0f}"
          f"{total_fail:>10}  (wall {time.monotonic() - wall:.0f}s, {args.jobs} jobs, {engine})")
    for t in targets:
        for kind, n in results[t].get("kinds", {}).items():
            print(f"FAILURE {t}: {n}x {kind}")
        for kind, tb in results[t].get("first", {}).items():
            print(f"--- first {t} failure: {kind}\n{tb}")
    return 1 if total_fail else 0


if __name__ == "__main__":
    sys.exit(main())
