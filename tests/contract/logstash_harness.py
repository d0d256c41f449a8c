"""The Logstash sink in the compliance suite, over its beats protocol (the one with acknowledgements) to the
Lumberjack test server (tests/integration/lumberjack.py), which records each event of a window once it has
read the window whole. Its own loop runs in a thread, so reading back needs no await. json_lines and http are
tested against real receivers in tests/integration/test_logstash.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipper.sinks.base import Request
from shipper.telemetry.metrics import Metrics
from tests.contract.harness import Arrival, Harness
from tests.integration.lumberjack import LumberjackServer


class LogstashHarness(Harness):
    name = "logstash"

    def __init__(self, tmp_path: Path, metrics: Metrics, request: Any) -> None:
        super().__init__(tmp_path, metrics, request)
        self.server = LumberjackServer().start_thread()

    def table(self) -> dict[str, Any]:
        return {"hosts": [self.server.address], "timeout_secs": 5.0, "connect_timeout_secs": 2.0,
                "window_max_events": 64}

    def arrived(self) -> list[Arrival]:
        return [Arrival(e["message"], e["container"]["name"], e["event"]["id"]) for e in self.server.events]

    def wire(self, request: Request) -> list[bytes]:
        return list(request.payload.docs)

    async def close(self) -> None:
        await super().close()
        self.server.stop_thread()
