"""Shutdown never hangs on a task that outlives its cancellation: it is named in the log and cancelled again,
and the task doing the shutdown is not."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shipper.app import _report_stuck_tasks


async def stubborn() -> None:
    with contextlib.suppress(asyncio.CancelledError):  # the kind of bug that keeps a TaskGroup from exiting
        await asyncio.sleep(3600)
    await asyncio.sleep(3600)


@pytest.mark.timeout(10)
def test_a_task_that_swallowed_its_cancel_is_named_and_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    """As in `shipper run`: the loop's main task shuts down, waiting in a TaskGroup, and a timer (which runs in
    no task) reports."""
    finished: list[str] = []

    async def shutdown() -> None:
        async with asyncio.TaskGroup() as tg:
            child = tg.create_task(stubborn(), name="reader:stubborn")
            await asyncio.sleep(0.01)
            child.cancel()
            timer = asyncio.get_running_loop().call_later(0.05, _report_stuck_tasks, asyncio.current_task())
        timer.cancel()
        finished.append("shutdown")

    asyncio.run(shutdown())  # the shutdown task was spared: it ends normally, not cancelled
    assert finished == ["shutdown"]
    assert any("task=reader:stubborn" in r.message and "stubborn:" in r.message for r in caplog.records)
    assert not any("task=shutdown" in r.message for r in caplog.records)
