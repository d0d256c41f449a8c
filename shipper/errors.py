"""One tree of errors, so callers decide by class whether to retry.

    ShipperError
    ├── ConfigError            bad config; names the key (fatal, at start or reload)
    ├── DockerError            Engine API failure
    │   ├── DockerUnavailable  socket unreachable, stream broken (retriable)
    │   └── ContainerGone      the container was removed (final for that container)
    ├── SinkError              raised by Sink.send
    │   ├── RetryableSinkError the batch may succeed later: the runner backs off and retries
    │   └── FatalSinkError     the batch can never succeed (rejected, unencodable): counted, dropped, acked
    └── SpoolError             the disk buffer cannot be used
        └── SpoolCorrupt       a record failed its check (counted; the rest is delivered)
"""

from __future__ import annotations


class ShipperError(Exception):
    """Base of every error shipper raises on purpose."""

    retriable: bool = False


class ConfigError(ShipperError):
    """A config value is missing, unknown or malformed; `key` is its dotted path."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class DockerError(ShipperError):
    """The Docker Engine API answered with an error."""


class DockerUnavailable(DockerError):
    """The Engine API cannot be reached now; try again later."""

    retriable = True


class ContainerGone(DockerError):
    """The container no longer exists."""


class SinkError(ShipperError):
    """A sink could not deliver a batch."""


class RetryableSinkError(SinkError):
    """Delivery failed for a reason that may pass (connection refused, timeout)."""

    retriable = True


class FatalSinkError(SinkError):
    """Delivery can never succeed for this batch; retrying would only block the ones behind it."""


class SpoolError(ShipperError):
    """The disk buffer cannot be opened or written."""


class SpoolCorrupt(SpoolError):
    """A spool record failed its length or CRC check."""
