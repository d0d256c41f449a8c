"""Capped exponential backoff with full jitter: the one retry pacing every part of shipper uses.

Attempt n waits uniform(floor, ceiling), ceiling = min(cap, initial * 2**(n-1)) ("full jitter" in the AWS
Architecture Blog's "Exponential Backoff And Jitter"). Drawing from the whole range, not a band near the
ceiling, is what spreads many shippers apart when one dockerd or receiver comes back: they would otherwise
retry in step and knock it over again. `floor` is for callers whose retry does real work even when it
fails at once (a full listing, a traceback in the log): the delay never drops below it, so they cannot spin.
"""

from __future__ import annotations

import asyncio
import random

_MAX_DOUBLINGS = 60  # 2**60 is past any cap; more would overflow the float product


class Backoff:
    """Delays for consecutive failed attempts; `reset()` after a success starts from `initial` again."""

    def __init__(self, initial: float, cap: float, *, floor: float = 0.0) -> None:
        if initial <= 0 or cap < 0 or floor < 0:
            raise ValueError(f"backoff needs initial > 0, cap >= 0, floor >= 0 (got {initial}, {cap}, {floor})")
        self.initial = initial
        self.cap = cap
        self.floor = floor
        self.attempt = 0  # failed attempts since the last reset: the one next_delay() was last called for

    @property
    def ceiling(self) -> float:
        """The largest delay of the current attempt (that of the first attempt before any)."""
        n = min(max(self.attempt, 1) - 1, _MAX_DOUBLINGS)
        return max(self.floor, min(self.cap, self.initial * 2**n))

    def next_delay(self) -> float:
        """Count one more failed attempt and return how long to wait before the next."""
        self.attempt += 1
        return random.uniform(self.floor, self.ceiling)

    def reset(self) -> None:
        self.attempt = 0


async def pause(delay: float) -> None:
    """Sleep `delay` before a retry, unless this task was cancelled meanwhile.

    Python 3.11's `asyncio.wait_for` loses a cancellation that arrives as the call it waits on finishes: it
    returns that call's result or raises its error instead (CPython gh-86296). A retry loop that catches the
    error (aiokafka connecting, say) would then retry for ever, and whoever cancelled it waits for ever. The
    task still counts the request (`cancelling()`), so it is honoured here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(delay)
