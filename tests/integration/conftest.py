from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import RUNNING


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a shipper running into the next test."""
    yield
    for s in list(RUNNING):
        RUNNING.discard(s)
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
