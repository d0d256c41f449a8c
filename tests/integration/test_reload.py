"""Reload under load: real dockerd containers logging ~10,000 lines/s in all, a real `shipper run`, its sinks
changed three times while they log (through `shipper reload`, by SIGHUP, and a bad config refused).

Every numbered line is accounted for in every sink: the untouched sink has each line once and in order; an
added sink has every line from its start on; a removed sink stops where it was; a changed sink's new file
continues its old one with duplicates only from the requests it had in flight when it was restarted
(rewound, sent again with the same `event.id`).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.replay import parse_time
from tests.integration.admin_support import by_label, free_port
from tests.integration.delivery_support import (
    Daemon,
    assert_exist,
    by_container,
    counting_loop,
    numbers,
    read_sink,
    wait_until,
)
from tests.integration.harness import ROOT

pytestmark = pytest.mark.docker

RunContainer = Callable[..., Any]
CONTAINERS = 5
PER_SEC = 2_500  # lines/s asked of each; a shell's bursts and pauses reach about 2,200: about 10,000 in all
TARGET_RATE = 10_000  # lines/s in all
SECS = 16
PER = PER_SEC * SECS  # lines each container writes
BURST = 250  # lines written at once, then a pause of BURST / PER_SEC
C_BATCH = 512  # sink c's batch_max_events: bounds what it had in flight when it was changed
INPUT_BATCH = 256  # input.batch_max_events: a record (never split) is at most this many events
MIN_RATE_SHARE = 0.5  # of TARGET_RATE, at least this much must be reached (a busy machine logs slower)


def sink(name: str, path: Path, extra: str = "") -> str:
    return f'[sinks.{name}]\ntype = "file"\npath = "{path}"\nmax_bytes = 0\n{extra}'


class Files:
    """The sinks' files, and the per-container line numbers in each."""

    def __init__(self, tmp: Path) -> None:
        self.a, self.b, self.c, self.c2, self.d = (tmp / f"{n}.jsonl" for n in ("a", "b", "c", "c2", "d"))

    @staticmethod
    def events(path: Path) -> dict[str, list[dict[str, Any]]]:
        sf = read_sink(path)
        assert not sf.torn, f"{path.name}: torn lines {sf.torn[:2]!r}"
        return by_container(sf.events)

    @staticmethod
    def nums(evs: list[dict[str, Any]]) -> list[int]:
        out = numbers([e["message"] for e in evs])
        assert len(out) == len(evs), "an event without its number: a line was cut or merged"
        return out


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipper", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=90, cwd=ROOT)


@pytest.mark.timeout(300)
def test_reload_under_load_adds_removes_and_changes_sinks_without_losing_a_line(
        tmp_path: Path, run_container: RunContainer) -> None:
    f = Files(tmp_path)
    port = free_port()
    head = f'[input]\nbatch_max_events = {INPUT_BATCH}\n[admin]\naddress = "127.0.0.1:{port}"\n'
    a, b = sink("a", f.a), sink("b", f.b)
    c_extra = f"batch_max_events = {C_BATCH}\nfsync = true\n"  # a request stays in flight longer
    d = Daemon(tmp_path, head + a + b + sink("c", f.c, c_extra))
    base = d.config.read_text()
    sinks_at_start = a + b + sink("c", f.c, c_extra)

    def write_sinks(text: str) -> None:
        d.config.write_text(base.replace(sinks_at_start, text))

    d.start()
    wait_until(lambda: b"listening" in d.log.read_bytes() if d.log.exists() else False, 30, "the admin server",
               alive=d)
    cmd = counting_loop(PER, "load", burst=BURST, pause=BURST / PER_SEC)
    cs = [run_container(cmd, labels=d.labels) for _ in range(CONTAINERS)]
    names = [c.name for c in cs]

    def lines_in(path: Path) -> int:
        return sum(len(v) for v in Files.events(path).values())

    wait_until(lambda: lines_in(f.a) > 5_000, 30, "the first lines in sink a", alive=d)

    def running() -> bool:
        assert_exist(cs)
        return all(c.status == "running" for c in cs)

    # 1. through `shipper reload` (the admin server): d added, b removed
    assert running(), "the containers stopped logging before the first reload: it would not be under load"
    write_sinks(a + sink("c", f.c, c_extra) + sink("d", f.d))
    r = run_cli(d.config, "reload")
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{d.log_text()[-2000:]}"
    assert "reloaded: the daemon applied the config" in r.stdout
    a_at_d_start = {n: max(Files.nums(v), default=-1) for n, v in Files.events(f.a).items()}
    b_after_removal = f.b.stat().st_size
    assert "sinks added=d removed=b changed=-" in d.log_text()

    # 2. by SIGHUP: c's path changed
    time.sleep(2)
    assert running(), "the containers stopped logging before the second reload"
    write_sinks(a + sink("c", f.c2, c_extra) + sink("d", f.d))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "sinks added=- removed=- changed=c" in d.log_text(), 30, "the SIGHUP reload", alive=d)

    # 3. a bad config is refused, and shipping goes on
    time.sleep(2)
    write_sinks(a + sink("c", f.c2, c_extra) + sink("d", f.d) + sink("e", tmp_path / "e.jsonl", "no_such_key = 1\n"))
    before_refusal = {p: lines_in(p) for p in (f.a, f.c2, f.d)}
    r = run_cli(d.config, "reload")
    assert r.returncode == 1, f"{r.stdout}{r.stderr}"
    assert "the daemon refused (HTTP 422" in r.stderr and "sinks.e.no_such_key" in r.stderr, r.stderr
    assert "reload refused" in d.log_text()
    wait_until(lambda: all(lines_in(p) > n for p, n in before_refusal.items()), 30,
               "every sink to go on after the refused reload", alive=d)
    status = d_status(port)
    age = status["docker"]["secs_since_last_event"]
    assert status["docker"]["events_connected"] and age is not None and age < 60, status["docker"]

    def complete() -> bool:
        assert_exist(cs)
        evs = [Files.events(p) for p in (f.a, f.c2, f.d)]
        return all(max(Files.nums(e.get(n, [])), default=-1) == PER - 1 for e in evs for n in names)

    wait_until(complete, 120, f"all {PER} lines of each container in a, c (new path) and d", alive=d)
    time.sleep(1)  # anything extra would show now
    samples = admin_metrics(port)
    assert d.running, "the daemon stopped"
    assert d.stop() == 0
    log = d.log_text()
    assert "Traceback" not in log and "task failed" not in log
    assert by_label(samples, "shipper_config_reloads_total", "result") == {"applied": 2.0, "refused": 1.0}
    assert not (tmp_path / "e.jsonl").exists(), "the refused config started a sink"

    ea, eb, ec, ec2, ed = (Files.events(p) for p in (f.a, f.b, f.c, f.c2, f.d))
    want = list(range(PER))
    c_dups = 0
    for n in names:
        # a: untouched by every reload: each line once, in order
        assert Files.nums(ea[n]) == want, f"a/{n}: {first_difference(Files.nums(ea[n]), want)}"
        assert len({e["event"]["id"] for e in ea[n]}) == PER, f"a/{n}: two lines share an event.id"
        # b: removed: a prefix, in order, and nothing after its removal
        nb = Files.nums(eb.get(n, []))
        assert nb == want[:len(nb)], f"b/{n}: {first_difference(nb, want)}"
        # d: added: every line from where it started, in order, no later than what a had when it was added
        nd = Files.nums(ed[n])
        assert nd and nd == want[nd[0]:], f"d/{n}: {first_difference(nd, want[nd[0]:] if nd else want)}"
        assert nd[0] <= a_at_d_start.get(n, -1) + 1, f"d/{n} starts at {nd[0]}, after lines read since it was added"
        # c: its old file a prefix; its new file goes on from at most where the old one stopped, to the end
        nc, nc2 = Files.nums(ec.get(n, [])), Files.nums(ec2[n])
        assert nc == want[:len(nc)], f"c/{n}: {first_difference(nc, want)}"
        assert nc2 and nc2 == want[nc2[0]:], f"c2/{n}: {first_difference(nc2, want[nc2[0]:] if nc2 else want)}"
        assert nc2[0] <= len(nc), f"c/{n}: lines {len(nc)}..{nc2[0] - 1} are in neither of c's files"
        old_ids = {e["event"]["id"]: k for k, e in zip(nc, ec.get(n, []), strict=True)}
        for k, e in zip(nc2, ec2[n], strict=True):
            if k < len(nc):
                assert old_ids.get(e["event"]["id"]) == k, f"c/{n} n={k}: sent again with another event.id"
        c_dups += max(0, len(nc) - nc2[0])
    assert f.b.stat().st_size == b_after_removal, "the removed sink b was written after its removal"
    assert c_dups <= C_BATCH + INPUT_BATCH, (f"{c_dups} lines in both of c's files: more than the one request "
                                             f"it had in flight (max_in_flight = 1, at most {C_BATCH} events "
                                             f"plus the rest of one record)")

    spans = [parse_time(ea[n][-1]["@timestamp"]) - parse_time(ea[n][0]["@timestamp"]) for n in names]
    starts = [parse_time(ea[n][0]["@timestamp"]) for n in names]
    ends = [parse_time(ea[n][-1]["@timestamp"]) for n in names]
    rate = CONTAINERS * PER / (max(ends) - min(starts))
    print(f"\n{CONTAINERS} containers x {PER:,} lines: {rate:,.0f} lines/s in all (asked {CONTAINERS * PER_SEC:,}; "
          f"each {PER / max(spans):,.0f}..{PER / min(spans):,.0f}); d started at "
          f"{[Files.nums(ed[n])[0] for n in names]}; c sent again {c_dups} lines "
          f"(bound {C_BATCH + INPUT_BATCH}); b stopped at {[len(eb.get(n, [])) for n in names]}")
    assert rate >= MIN_RATE_SHARE * TARGET_RATE, f"the containers logged only {rate:,.0f} lines/s"


def first_difference(have: list[int], want: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(have, want, strict=False)) if x != y), min(len(have), len(want)))
    counts = collections.Counter(have)
    dups = sorted(k for k, v in counts.items() if v > 1)[:5]
    return (f"{len(have)} lines, {len(want)} expected; first difference at index {i} "
            f"(have {have[i:i + 3]}, want {want[i:i + 3]}); duplicated {dups}")


def d_status(port: int) -> dict[str, Any]:
    import urllib.request

    import orjson

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        doc: dict[str, Any] = orjson.loads(resp.read())
    return doc


def admin_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}
