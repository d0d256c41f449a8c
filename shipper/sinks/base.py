"""The one interface every sink implements.

A sink turns records into a request once (`encode`, pure: the same batches give the same bytes) and sends
it (`send`), as Vector's request builder and service do. `send` returns None once the whole request is
delivered as far as its protocol can tell, a `Partial` when some events were delivered and others must be
retried or were refused (a Beats window acked in part, Kafka partitions failing alone), or raises
`RetryableSinkError` (the runner backs off and sends the same request again) or `FatalSinkError` (it can
never succeed: counted as dropped, reason logged). Retries, backoff, requests in flight and buffer acks
live in `shipper.sinks.runner`, not here. Several requests may be in flight at once (`max_in_flight`): a
sink that holds one connection serialises its writes itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from shipper.errors import ConfigError
from shipper.event import Batch
from shipper.schema import doc
from shipper.telemetry.metrics import Metrics


@dataclass(frozen=True)
class SinkContext:
    """What a sink may know about the daemon around it."""

    name: str
    state_dir: Path
    host_name: str
    metrics: Metrics


@dataclass(slots=True)
class Request:
    """What one send carries: the batches (events numbered 0.. in their order) and their encoding."""

    batches: list[Batch]
    payload: Any
    events: int = 0

    def __post_init__(self) -> None:
        if not self.events:
            self.events = sum(len(b.events) for b in self.batches)


@dataclass(frozen=True, slots=True)
class Partial:
    """Some events of a request were delivered: `retry` (indices into the request's events) must be sent
    again, `rejected` never will be (counted as dropped with `reason`); every other event was delivered."""

    retry: Sequence[int] = ()
    rejected: Sequence[int] = ()
    reason: str = ""


def pick(batches: Sequence[Batch], indices: Sequence[int]) -> list[Batch]:
    """The batches holding only the events at `indices` (numbered across `batches`, ascending)."""
    out: list[Batch] = []
    wanted = iter(sorted(indices))
    want = next(wanted, None)
    base = 0
    for b in batches:
        n = len(b.events)
        keep = []
        while want is not None and want < base + n:
            keep.append(b.events[want - base])
            want = next(wanted, None)
        if keep:
            out.append(b if len(keep) == n else Batch(b.container, keep, b.checkpoint))
        base += n
    return out


@dataclass(frozen=True)
class SinkBase:
    """Keys every sink has; a sink's own Config subclasses this."""

    type: str = doc("", "the sink kind: file, stdout, null, syslog, ...")
    batch_max_events: int = doc(2048, "most events in one request (records are never split: one batch may "
                                      "pass it)")
    batch_max_bytes: int = doc(4 * 1024 * 1024, "most buffered bytes in one request")
    linger_secs: float = doc(0.01, "longest wait for more events while a request is not full")
    max_in_flight: int = doc(1, "requests sent and not yet answered; 1 keeps the order per container")
    retry_initial_secs: float = doc(0.5, "first wait after a failed send")
    retry_max_secs: float = doc(30.0, "longest wait between retries")
    max_unexpected_errors: int = doc(5, "a request failing this many times with an unexpected error (a bug, "
                                        "not an outage) is given up: counted, logged, left to replay")
    healthcheck: bool = doc(True, "check the destination at start; a failed check is logged and retried")

    def validate(self, key: str) -> None:
        for name, low, high in (("batch_max_events", 1, 1_000_000), ("batch_max_bytes", 1024, 1 << 30),
                                ("max_in_flight", 1, 1024), ("max_unexpected_errors", 1, 1_000_000)):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"{key}.{name}", f"must be between {low} and {high}")
        if not 0 <= self.linger_secs <= 60:
            raise ConfigError(f"{key}.linger_secs", "must be between 0 and 60")
        if not 0 < self.retry_initial_secs <= self.retry_max_secs:
            raise ConfigError(f"{key}.retry_initial_secs", "must be positive and at most retry_max_secs")


class Sink(ABC):
    Config: ClassVar[type[SinkBase]] = SinkBase

    def __init__(self, config: SinkBase, context: SinkContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or files. Any exception is retried by the runner."""

    @abstractmethod
    def encode(self, batches: list[Batch]) -> Request:
        """Build the request for these batches; pure, so a retry resends exactly the same bytes."""

    def subset(self, request: Request, indices: Sequence[int]) -> Request:
        """The request for some of `request`'s events (what a Partial left to retry). Encodes them again;
        a sink whose encoding is per event slices it instead."""
        return self.encode(pick(request.batches, indices))

    @abstractmethod
    async def send(self, request: Request) -> Partial | None:
        """Deliver `request`: None when all of it was delivered, a Partial, or raise a SinkError."""

    async def healthcheck(self) -> None:  # noqa: B027 - optional hook
        """Raise when the destination cannot be reached."""

    def details(self) -> dict[str, object]:
        """What the sink alone knows about its state (one entry a host, ...), shown in /status beside the
        runner's figures; plain JSON values only."""
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release what start() opened."""
