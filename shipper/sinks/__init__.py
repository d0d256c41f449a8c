"""Sinks by name, imported only when a config names them, so optional dependencies stay optional."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shipper.errors import ConfigError

if TYPE_CHECKING:
    from shipper.sinks.base import Sink, SinkBase

SINKS = {
    "file": "shipper.sinks.file:FileSink",
    "stdout": "shipper.sinks.stdout:StdoutSink",
    "null": "shipper.sinks.null:NullSink",
    "syslog": "shipper.sinks.syslog.sink:SyslogSink",
    "kafka": "shipper.sinks.kafka.sink:KafkaSink",
    "logstash": "shipper.sinks.logstash.sink:LogstashSink",
}


def sink_class(kind: str, key: str = "type") -> type[Sink]:
    """The Sink class registered as `kind`; a ConfigError naming `key` when there is none."""
    target = SINKS.get(kind)
    if target is None:
        raise ConfigError(key, f"unknown sink type {kind!r} (known: {', '.join(sorted(SINKS))})")
    module, _, attr = target.partition(":")
    try:
        cls: type[Sink] = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(key, f"sink type {kind!r} needs a package that is not installed: {e.name}") from None
    return cls


def sink_config_class(kind: str, key: str = "type") -> type[SinkBase]:
    return sink_class(kind, key).Config
