"""Many containers at once, CI-sized: the soak of benchmarks/soak.py made small enough for every CI run.

- a fleet: 40 containers x 20 lines/s x 30 s (24,000 numbered lines), discovery = "api" and the default
  reader (read = "auto": the json-files), every line exactly once, shipper's CPU and RSS printed;
- churn: 200 containers started with `--rm` over 60 s, 5 lines each, removed by dockerd as soon as they
  exit: every line exactly once.

The full-size runs (200 x 50 lines/s x 10 min, 2,000 churned, json-file and API readers compared) are
`python benchmarks/soak.py`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SESSION, SESSION_LABEL, TEST_LABEL
from tests.integration.harness import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
soak: Any = importlib.import_module("soak")

pytestmark = pytest.mark.docker


def soak_args(**kw: Any) -> argparse.Namespace:
    defaults = {"containers": 40, "rate": 20, "duration": 30.0, "churn": 200, "churn_lines": 5,
                "sample_secs": 2.0, "drain_timeout": 60.0, "keep": False}
    return argparse.Namespace(**(defaults | kw))


@pytest.fixture
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`shipper run` children import this checkout, whatever `pip install -e` points at on a shared machine."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def report(r: Any) -> str:
    u = r.usage
    first, last, top = u.rss_mb("shipper")
    dockerd = (f"; dockerd CPU {u.cpu('dockerd'):.1f}s ({u.cpu_pct('dockerd'):.0f}% of a core)"
               if "dockerd" in u.pids else "")
    return (f"\n{r.kind}: {r.containers} containers, {r.lines:,} lines in {r.secs:.0f}s (last ones {r.drain_secs:.1f}s "
            f"after the containers were done): missing {r.missing}, duplicates {r.duplicates}; shipper CPU "
            f"{u.cpu('shipper'):.1f}s ({u.cpu_pct('shipper'):.0f}% of a core), RSS MiB first/last/max "
            f"{first:.0f}/{last:.0f}/{top:.0f}{dockerd}")


def check(r: Any) -> None:
    missing = dict(list(r.missing_by_container.items())[:10])
    assert r.missing == 0, f"{r.missing} of {r.lines} lines missing: {missing}\n" + "\n".join(r.log_errors[:10])
    assert r.duplicates == 0, f"{r.duplicates} lines shipped twice"
    assert r.delivered == r.lines
    assert not r.log_errors, "\n".join(r.log_errors[:10])


@pytest.mark.timeout(150)
def test_forty_containers_for_thirty_seconds(tmp_path: Path, docker_client: Any, this_checkout: None) -> None:
    r = soak.one_run("fleet", "auto", soak_args(), tmp_path, lambda s: None,
                     extra_labels={TEST_LABEL: "1", SESSION_LABEL: SESSION}, client=docker_client)
    print(report(r))
    check(r)


@pytest.mark.timeout(150)
def test_two_hundred_short_lived_containers_in_a_minute(tmp_path: Path, docker_client: Any,
                                                        this_checkout: None) -> None:
    r = soak.one_run("churn", "auto", soak_args(duration=60.0), tmp_path, lambda s: None,
                     extra_labels={TEST_LABEL: "1", SESSION_LABEL: SESSION}, client=docker_client)
    print(report(r))
    check(r)
