"""At-least-once delivery of the whole daemon: real dockerd, real rsyslogd, `shipper run` as a child process.

Each test counts what arrived where against what the containers wrote: every numbered line, no gaps,
duplicates only where a crash makes them unavoidable and then with the same `event.id`.
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest

from tests.integration.delivery_support import Daemon, by_container, counting_loop, numbers, read_sink, wait_until

pytestmark = pytest.mark.docker

BATCH_MAX_EVENTS = 2048


@pytest.mark.timeout(240)
def test_kill_9_twenty_times_loses_nothing(tmp_path: Path, run_container) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL at random moments while three containers log at full speed: after the last restart every
    numbered line is in the file sink, and each duplicate is a re-read of the same event (same event.id)."""
    per, kills = 40_000, 20
    seed = int(os.environ.get("SHIPPER_TEST_SEED", time.time_ns() % 1_000_000))
    rnd = random.Random(seed)
    d = Daemon(tmp_path, f"""
[input]
batch_max_events = {BATCH_MAX_EVENTS}
[buffer]
type = "disk"
fsync = "interval"
fsync_interval_secs = 1.0
[sinks.out]
type = "file"
path = "{{out}}"
max_bytes = 0
""")
    d.start()
    cmd = counting_loop(per, "payload", burst=2000, pause=1)
    cs = [run_container(cmd, labels=d.labels) for _ in range(3)]
    started = time.monotonic()
    for _ in range(kills):
        time.sleep(rnd.uniform(0.3, 2.0))
        d.kill()
        d.start()
    kill_secs = time.monotonic() - started

    def complete() -> bool:
        got = by_container(read_sink(d.out).events)
        return all(len(set(numbers([e["message"] for e in got[c.name]]))) >= per for c in cs)

    wait_until(complete, 120, f"all {per} lines of each container after {kills} kills", alive=d)
    assert d.stop() == 0
    sink = read_sink(d.out)
    got = by_container(sink.events)
    dups = 0
    for c in cs:
        evs = got[c.name]
        nums = numbers([e["message"] for e in evs])
        assert len(nums) == len(evs), "an event without its number: a line was cut or merged"
        assert set(nums) == set(range(per)), c.name
        first_id: dict[int, str] = {}
        for n, e in zip(nums, evs, strict=True):
            assert first_id.setdefault(n, e["event"]["id"]) == e["event"]["id"], f"{c.name} n={n}: a new event.id"
        assert len(set(first_id.values())) == per, "two different lines share an event.id"
        dups += len(nums) - per
    alive_for = [c.reload() or c.status for c in cs]
    print(f"\nseed={seed} kills={kills} over {kill_secs:.1f}s duplicates={dups} torn_lines={len(sink.torn)} "
          f"container_status={alive_for} "
          f"spool_damage_lines={d.log_text().count('spool damage skipped')}")
    bound = kills * BATCH_MAX_EVENTS * len(cs)
    assert dups <= bound, f"{dups} duplicates > {bound}"
    assert not sink.torn, f"{len(sink.torn)} torn lines in the file sink: {sink.torn[:2]!r}"
    del collections
