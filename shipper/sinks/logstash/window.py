"""How many events one Lumberjack window carries, per host, as Filebeat adapts it: a window that was acked
in full lets the next grow by half, up to the maximum; an error or a timeout halves it. A Logstash that
chokes on big windows (slow pipeline, small queue) is sent smaller ones instead of timing out again and
again."""

from __future__ import annotations

import math

START_EVENTS = 10  # Filebeat's first window with slow_start
MIN_EVENTS = 1
GROWTH = 1.5


class AdaptiveWindow:
    def __init__(self, max_events: int, slow_start: bool) -> None:
        self.max = max_events
        self.size = min(START_EVENTS, max_events) if slow_start else max_events

    def grew(self, sent: int) -> None:
        """A window of `sent` events was acked in full. Only a window filled to the current size says the
        size works (a short last window of a request says nothing about it)."""
        if sent < self.size:
            return
        self.size = min(self.max, math.ceil(self.size * GROWTH))

    def shrink(self) -> None:
        """An error or an ACK timeout: half the size, never below one event."""
        self.size = max(MIN_EVENTS, self.size // 2)
