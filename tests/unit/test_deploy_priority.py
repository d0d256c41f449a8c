"""deploy/: shipper runs below the applications' CPU priority, so a container that logs fast is not slowed
by shipper reading it (benchmarks/app_cost_bench.py measures that). systemd accepts the unit with these keys:
tests/integration/test_unit_file.py runs `systemd-analyze verify` and `security` on it."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD_DEFAULT_CPU_WEIGHT = 100  # what docker.service and the containers' scopes get
DOCKER_DEFAULT_CPU_SHARES = 1024


def unit_settings() -> dict[str, str]:
    out = {}
    for raw in (DEPLOY / "shipper.service").read_text().splitlines():
        key, sep, value = raw.partition("=")
        if sep and not raw.startswith(("#", ";")):
            out[key.strip()] = value.strip()
    return out


def test_the_unit_weighs_less_than_the_applications_and_runs_niced() -> None:
    s = unit_settings()
    assert 1 <= int(s["CPUWeight"]) < SYSTEMD_DEFAULT_CPU_WEIGHT
    assert 0 < int(s["Nice"]) <= 19
    assert s["CPUSchedulingPolicy"] == "batch"  # waking up, it does not preempt an application or dockerd


def test_compose_gives_shipper_fewer_cpu_shares_than_a_default_container() -> None:
    svc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["shipper"]
    assert 2 <= int(svc["cpu_shares"]) < DOCKER_DEFAULT_CPU_SHARES
