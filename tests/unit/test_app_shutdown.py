"""Shutdown never hangs on a task that outlives its cancellation: it is named in the log and cancelled again."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shipper.app import _report_stuck_tasks


async def test_a_task_that_swallowed_its_cancel_is_named_and_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the kind of bug that keeps a TaskGroup from exiting
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="reader:stubborn")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()
    _report_stuck_tasks()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert any("task=reader:stubborn" in r.message and "stubborn:" in r.message for r in caplog.records)
