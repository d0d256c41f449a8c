"""Fixtures of the unit tests that run `shipper` as a process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.daemon import Daemon


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """The daemons a test started (append each), killed at its end whatever happened."""
    made: list[Daemon] = []
    yield made
    for d in made:
        d.kill()
