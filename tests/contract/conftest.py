"""Fixtures of the sink compliance suite: one harness per registered sink type, the buffers, rsyslogd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shipper.sinks import SINKS
from shipper.telemetry.metrics import Metrics
from tests.conftest import require
from tests.contract.harness import HARNESSES, Harness
from tests.contract.rig import MakeRig, Rig
from tests.integration.rsyslog import Rsyslog, available


def require_rsyslog() -> None:
    """As the integration tests do: skip on a developer machine without rsyslogd, fail under CI=true."""
    require("rsyslogd", available(), "apt-get install rsyslog")


@pytest.fixture(scope="session")
def rsyslog() -> Iterator[Rsyslog]:
    require_rsyslog()
    r = Rsyslog(inputs=("tcp",))
    r.start()
    yield r
    r.close()


def _sink_params() -> list[object]:
    """Every registered sink type, whether or not it has a harness (the fixture fails for one that has not)."""
    return [pytest.param(name, id=name, marks=HARNESSES[name].marks if name in HARNESSES else ())
            for name in sorted(SINKS)]


@pytest.fixture(params=_sink_params())
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    name: str = request.param
    if name not in HARNESSES:
        pytest.fail(f"sink type {name!r} is registered in shipper.sinks.SINKS but has no harness in "
                    "tests/contract/harness.py: every sink must pass the compliance suite")
    h = HARNESSES[name](tmp_path, Metrics(), request)
    yield h
    await h.close()


@pytest.fixture(params=["memory", "disk"])
def buffer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_rig(harness: Harness, tmp_path: Path) -> AsyncIterator[MakeRig]:
    """Opens rigs for the sink under test on a buffer of the kind asked; closes them after the test."""
    rigs: list[Rig] = []

    async def make(kind: str) -> Rig:
        r = Rig(harness, kind, tmp_path / f"buffer{len(rigs)}")
        rigs.append(r)
        await r.open()
        return r

    yield make
    for r in rigs:
        await r.close()


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    """A memory buffer feeding the sink under test (tests that vary the buffer use `rig_any`)."""
    return await make_rig("memory")


@pytest.fixture
async def rig_any(make_rig: MakeRig, buffer_kind: str) -> Rig:
    """The sink under test fed by each kind of buffer: memory, and a disk spool in a tmp dir."""
    return await make_rig(buffer_kind)
