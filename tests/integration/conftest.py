from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.integration.harness import RUNNING
from tests.integration.rsyslog import Rsyslog
from tests.integration.rsyslog import available as rsyslog_available


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a shipper running into the next test."""
    yield
    for s in list(RUNNING):
        RUNNING.discard(s)
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture
def rsyslog_tcp() -> Iterator[Rsyslog]:
    """A real rsyslogd with one plain TCP input, not started: each test decides when it is up."""
    require("rsyslogd", rsyslog_available(), "apt-get install rsyslog")
    r = Rsyslog(inputs=("tcp",))
    yield r
    r.close()
