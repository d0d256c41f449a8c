"""One suite every sink passes (after Vector's run_and_assert_sink_compliance): each case drives the real
sink through the real engine (buffer, cursor, SinkRunner) and asserts on what ARRIVED at its destination:
the file's JSON lines, stdout's JSON lines, the records a real rsyslogd wrote; the null sink can only be
counted (shipper_events_sent_total). Faults are injected by wrappers around the real sink (tests/contract/
faults.py); whatever is delivered, the real sink delivers.

A sink type registered in shipper.sinks.SINKS without a harness in tests/contract/harness.py fails here.
"""

from __future__ import annotations

import asyncio
import copy
import time

import pytest

from shipper.sinks import SINKS
from shipper.sinks.base import Sink, pick
from tests.contract.faults import FailFirstSend, Hold, PartialOnce, RejectPoison, Slow, Stuck
from tests.contract.harness import HARNESSES, Harness
from tests.contract.rig import (
    MakeRig,
    Rig,
    arrivals_by_container,
    assert_once,
    make_batch,
    make_batches,
    messages,
    request_messages,
    tally,
    total,
)


def sent(rig: Rig) -> int:
    return int(rig.metrics.get("shipper_events_sent_total", sink=rig.name))


def test_every_registered_sink_has_a_harness() -> None:
    """Kafka, Logstash, ...: a sink cannot be added to SINKS without joining this suite."""
    missing = sorted(set(SINKS) - set(HARNESSES))
    assert not missing, f"sinks without a compliance harness in tests/contract/harness.py: {missing}"
    stale = sorted(set(HARNESSES) - set(SINKS))
    assert not stale, f"harnesses for sinks that are not registered: {stale}"


# --- 1. delivered once --------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_every_event_is_delivered_exactly_once(harness: Harness, rig_any: Rig, in_flight: int) -> None:
    h, rig = harness, rig_any
    metas = h.containers(3)
    batches = make_batches(metas, 24, 3)
    await rig.push(batches[:12])
    _, task = rig.start(h.make(batch_max_events=8, max_in_flight=in_flight))
    await rig.push(batches[12:])  # some while the runner already sends
    await rig.drained()
    await h.wait_count(total(batches))
    await rig.stop(task)

    assert_once(h, batches)
    assert sent(rig) == total(batches)
    if h.exact and in_flight == 1:  # one request at a time: the order of each container's events holds
        for meta in metas:
            assert arrivals_by_container(h, meta) == messages([b for b in batches if b.container is meta])
    assert rig.released() == list(range(24))
    assert rig.safe == list(range(24)), "every checkpoint released once, in order"
    if rig.kind == "disk":  # and the spool remembers it across a restart: nothing is handed out again
        await rig.reopen()
        assert rig.cursor.pending() == 0
        assert rig.cursor.acked == rig.seq(23)


# --- 2. encode is pure; a retry resends the same request ----------------------------------------------


async def test_encode_is_pure(harness: Harness) -> None:
    h = harness
    a, b = h.containers(2)
    batches = [make_batch(a, 0, 3), make_batch(b, 1, 2), make_batch(a, 2, 4)]
    kept = copy.deepcopy(batches)
    sink = h.make()
    first = h.wire(sink.encode(batches))
    assert first and all(first)
    h.wire(sink.encode([make_batch(b, 3, 4), make_batch(a, 4, 1)]))  # caches now hold other containers
    again = sink.encode(batches)
    assert h.wire(again) == first, "encoding the same batches twice gave other bytes"
    assert again.events == 9
    assert h.wire(h.make().encode(batches)) == first, "a restarted sink encodes other bytes"
    assert batches == kept, "encode changed its input"
    # a subset (what a Partial leaves to retry) carries what encoding those events alone would
    for indices in ([1, 4, 8], [0], list(range(9))):
        sub = sink.subset(again, indices)
        assert sub.events == len(indices)
        assert request_messages(sub) == [messages(batches)[i] for i in indices]
        assert h.wire(sub) == h.wire(sink.encode(pick(batches, indices)))
    assert h.wire(again) == first, "subset changed the request it was taken from"


async def test_a_retried_request_resends_the_same_request(harness: Harness, rig: Rig) -> None:
    h = harness
    batches = make_batches(h.containers(2), 4, 3)
    await rig.push(batches)
    sink = FailFirstSend(h.make(batch_max_events=100), h.wire)
    _, task = rig.start(sink)
    await rig.drained()
    await h.wait_count(total(batches))
    await rig.stop(task)

    assert len(sink.sends) == 2, [request_messages(r) for r in sink.sends]
    failed, retried = sink.sends
    assert retried.batches == failed.batches
    assert h.wire(retried) == sink.first_wire, "the retry sent other bytes than the failed send"
    assert rig.metrics.get("shipper_sink_retries_total", sink=rig.name) == 1
    assert_once(h, batches)
    assert rig.safe == list(range(4))


# --- 3. partial, then the rest retried ---------------------------------------------------------------


@pytest.mark.parametrize("order", ["ascending", "descending"])
async def test_a_partial_send_retries_only_the_rest(harness: Harness, rig: Rig, order: str,
                                                    request: pytest.FixtureRequest) -> None:
    """Partial.retry is a sequence of indices with no order promised (Kafka reports failed partitions as it
    finds them; the runner hands them to subset() as they came): either way the rest arrives once, in its
    own order."""
    h = harness
    batches = make_batches(h.containers(3), 6, 3)
    await rig.push(batches)  # one request of all 18 events
    sink = PartialOnce(h.make(batch_max_events=100), descending=order == "descending")
    _, task = rig.start(sink)
    await rig.drained()
    await h.wait_count(total(batches))
    await rig.stop(task)

    all_msgs = messages(batches)
    assert len(sink.sends) == 2
    first, retry = sink.sends
    assert first.events == 18 and retry.events == 9
    assert sink.retried == all_msgs[1::2] and sink.delivered == all_msgs[0::2]
    assert request_messages(retry) == sink.retried
    assert h.wire(retry) == h.wire(sink.inner.encode(pick(batches, range(1, 18, 2)))), \
        "the retried request does not carry what encoding the rest would"
    assert_once(h, batches)
    assert sent(rig) == 18
    if h.exact:  # the delivered part, then the retried part, each in the request's order
        assert [a.message for a in h.arrived()] == sink.delivered + sink.retried
    assert rig.safe == list(range(6))


# --- 4. refused for good: counted, passed ------------------------------------------------------------


@pytest.mark.parametrize("how", ["fatal", "partial"])
async def test_a_rejected_event_is_counted_and_passed(harness: Harness, rig: Rig, how: str) -> None:
    h = harness
    metas = h.containers(2)
    batches = make_batches(metas, 7, 2)
    batches[3] = make_batch(metas[1], 3, 1)  # alone in its batch: a FatalSinkError drops a whole request
    poison = batches[3].events[0].message
    await rig.push(batches)
    # fatal: one batch a request, so only the poison's request is refused; partial: requests of 2 batches
    sink = RejectPoison(h.make(batch_max_events=1 if how == "fatal" else 3), poison, whole=how == "fatal")
    _, task = rig.start(sink)
    await rig.drained()
    await h.wait_count(total(batches) - 1)
    await rig.stop(task)

    assert len(sink.rejected) == 1, "a request refused for good was sent again"
    assert poison in request_messages(sink.rejected[0])
    assert_once(h, batches, absent=[poison])
    assert rig.metrics.get("shipper_events_dropped_total", reason="sink_rejected", where=rig.name) == 1
    assert sent(rig) == total(batches) - 1
    assert rig.safe == list(range(7)), "the checkpoint did not move past the rejected event"
    assert rig.cursor.pending() == 0


# --- 5. a stuck request holds back no other, and no checkpoint past it --------------------------------


async def test_a_stuck_request_does_not_block_the_others(harness: Harness, rig_any: Rig) -> None:
    h, rig = harness, rig_any
    batches = make_batches(h.containers(3), 10, 2)
    stuck_msgs = messages(batches[1:2])
    others = [b for k, b in enumerate(batches) if k != 1]
    sink = Stuck(h.make(max_in_flight=4, batch_max_events=2), stuck_msgs[0])
    await rig.push(batches)
    runner, task = rig.start(sink)
    await rig.until(lambda: set(range(10)) - {1} <= set(rig.acked()), what="every other request acked")
    assert await h.wait_count(total(others)) == total(others)

    if h.exact:
        counts = tally(h, batches)
        assert all(counts[m] == 1 for m in messages(others))
        assert not any(counts[m] for m in stuck_msgs)
    assert sink.failures >= 1
    assert runner.state in ("retrying", "failing")
    await asyncio.sleep(0.1)  # keep failing a while: the low-water mark must not move meanwhile
    assert rig.released() == [0], "a checkpoint past the stuck request was released"
    if rig.kind == "memory":
        assert rig.safe == [0]
    assert rig.cursor.pending() == total(batches) - total(batches[:1])

    sink.release()
    await rig.drained()
    await h.wait_count(total(batches))
    await rig.stop(task)
    assert_once(h, batches)
    assert rig.released() == list(range(10))
    assert rig.safe == list(range(10))
    assert runner.state == "up"


# --- 6. a restart repeats at most what was in flight --------------------------------------------------


@pytest.mark.parametrize(("kind", "restart"), [("memory", "runner"), ("disk", "runner"), ("disk", "process")])
async def test_a_restart_repeats_at_most_what_was_in_flight(harness: Harness, make_rig: MakeRig, kind: str,
                                                             restart: str) -> None:
    """Cancelled with requests in flight (one not sent yet, two sent but never answered), then a new
    SinkRunner on the same cursor (restart = runner), or on the spool closed and opened again (process)."""
    h = harness
    rig = await make_rig(kind)
    batches = make_batches(h.containers(3), 12, 2)
    sink = Hold(h.make(max_in_flight=4, batch_max_events=2), before=set(messages(batches[3:4])),
                after=set(messages(batches[7:9])))
    await rig.push(batches)
    runner, task = rig.start(sink)
    done = [k for k in range(12) if k not in (3, 7, 8)]
    await rig.until(lambda: len(sink.held) == 3 and set(done) <= set(rig.acked()) and runner.in_flight == 3,
                    what="3 held, the rest acked")
    assert rig.acked() == done, "a request still in flight counts as acked"
    # delivered so far: everything but batch 3 (null counts only what was answered: not 7 and 8 either)
    arrived_before = total(batches) - 2 if h.exact else total(batches) - 6
    assert await h.wait_count(arrived_before) == arrived_before
    in_flight = sum(r.events for r in sink.held)
    assert in_flight == 6
    unacked = [k for k in range(12) if k > rig.released()[-1]]  # past the low-water mark: what a ledger keeps
    assert unacked == list(range(3, 12))
    await rig.stop(task)

    if restart == "runner":
        bound, may_repeat = in_flight, messages(batches[3:4] + batches[7:9])
        new = sink.inner  # as App's supervisor restarts a failed runner: the same sink
    else:
        bound, may_repeat = total(batches[3:]), messages(batches[3:])
        await sink.inner.close()
        await rig.reopen()
        new = h.make(max_in_flight=4, batch_max_events=2)
    _, task = rig.start(new)
    await rig.drained()
    await h.wait_count(total(batches))
    await rig.stop(task)

    if h.exact:
        counts = tally(h, batches)
        assert all(counts[m] >= 1 for m in messages(batches)), "an event was lost across the restart"
        repeated = {m: c - 1 for m, c in counts.items() if c > 1}
        assert sum(repeated.values()) <= bound, f"{sum(repeated.values())} repeated, at most {bound} may be"
        assert set(repeated) <= set(may_repeat), f"repeated what was not in flight: {set(repeated) - set(may_repeat)}"
        assert all(counts[m] == 1 for m in messages(batches[3:4])), "the request held before sending went twice"
    else:
        assert total(batches) <= h.count() <= total(batches) + bound
    assert rig.cursor.pending() == 0
    assert rig.released() == list(range(12))


# --- 7. shutdown drains what is in flight, then saves offsets -----------------------------------------


async def shutdown(rig: Rig, task: asyncio.Task[None], sink: Sink, deadline_secs: float) -> int:
    """What App does at shutdown (App.run, App._drain, App._close): wait until the cursor has nothing
    pending or the deadline passed, cancel the runner, close the sink, close the buffer. Returns the events
    still pending when the runner was cancelled."""
    end = time.monotonic() + deadline_secs
    while time.monotonic() < end and rig.cursor.pending():
        await asyncio.sleep(0.05)
    pending = rig.cursor.pending()
    await rig.stop(task)
    await sink.close()
    await rig.buffer.close()
    return pending


@pytest.mark.parametrize("deadline", ["ample", "too_short"])
async def test_shutdown_drains_in_flight_requests_before_saving_offsets(harness: Harness, rig_any: Rig,
                                                                        deadline: str) -> None:
    h, rig = harness, rig_any
    batches = make_batches(h.containers(2), 12, 2)
    at_close: list[list[int]] = []
    # six requests of 4 events, two in flight, each held `delay` by a slow receiver
    delay = 0.08 if deadline == "ample" else 0.2
    sink = Slow(h.make(max_in_flight=2, batch_max_events=4), delay, lambda: at_close.append(rig.released()))
    _, task = rig.start(sink)
    await rig.push(batches)
    if deadline == "ample":
        pending = await shutdown(rig, task, sink, 3.0)
    else:  # the first request is through, five are left, two of them in flight: 0.05 s cannot drain that
        await rig.until(lambda: len(rig.released()) >= 2, what="the first request released")
        pending = await shutdown(rig, task, sink, 0.05)
    assert len(at_close) == 1
    released = at_close[0]
    assert released == list(range(len(released))), "checkpoints released out of order"
    if deadline == "ample":
        assert pending == 0
        await h.wait_count(total(batches))
        assert_once(h, batches)
        assert released == list(range(12)), "the sink was closed before every checkpoint was released"
        assert rig.safe == list(range(12))
    else:
        assert 0 < pending < total(batches), f"the deadline was meant to cut the drain short ({pending} pending)"
        done = batches[:len(released)]
        assert 0 < len(done) < 12
        await h.wait_count(total(done))
        if h.exact:
            counts = tally(h, batches)
            unsent = [m for m in messages(batches) if not counts[m]]
            assert unsent, "everything arrived: the test did not cut anything short"
            assert all(counts[m] == 1 for m in messages(done)), "a checkpoint was released before its events arrived"
        else:
            assert sent(rig) >= total(done)
        if rig.kind == "memory":
            assert rig.safe == released
    if rig.kind == "disk":  # what the spool saved: the next process hands out exactly what was not released
        await rig.reopen()
        assert rig.cursor.pending() == total(batches[len(released):])
        if len(released) < 12:
            lease = await rig.cursor.read(1000, 1 << 30)
            assert messages(lease.batches) == messages(batches[len(released):])
