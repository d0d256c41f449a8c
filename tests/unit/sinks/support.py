"""What the sinks' config tests share: a sink's table loaded as `shipper.config` loads it, and its key docs."""

from __future__ import annotations

import dataclasses
from typing import Generic, TypeVar

import pytest

from shipper.config import load_dict
from shipper.errors import ConfigError
from shipper.schema import describe

C = TypeVar("C")


class SinkTable(Generic[C]):
    """`[sinks.NAME]` of type `sink_type`: `load(**table)` the config it builds, `error(**table)` the
    ConfigError it is refused with."""

    def __init__(self, cls: type[C], sink_type: str, name: str) -> None:
        self.cls, self.sink_type, self.name = cls, sink_type, name

    def load(self, **table: object) -> C:
        cfg = load_dict({"sinks": {self.name: {"type": self.sink_type, **table}}}).sinks[self.name]
        assert isinstance(cfg, self.cls)
        return cfg

    def error(self, **table: object) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            self.load(**table)
        return info.value


def assert_documented(cls: type) -> None:
    """Every key of the config class is listed by `check --explain`, each with its doc."""
    rows = describe(cls)
    assert {r[0] for r in rows} >= {f.name for f in dataclasses.fields(cls)}
    assert all(doc for _, _, doc in rows)
