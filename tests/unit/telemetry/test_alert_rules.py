"""deploy/prometheus/: the example alert rules load in promtool, fire in its rule tests, and name only metrics
shipper declares."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from shipper.telemetry.metrics import HELP
from tests.conftest import require

DIR = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULES = DIR / "shipper-alerts.yml"


def promtool() -> str:
    path = shutil.which("promtool") or ""
    require("promtool", bool(path), "apt-get install prometheus")
    return path


def test_rules_load() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_fire_as_meant() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(DIR / "shipper-alerts.test.yml")], capture_output=True,
                         text=True, timeout=60, cwd=DIR)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_name_declared_metrics() -> None:
    names = set(re.findall(r"\b(shipper_[a-z_]+)", RULES.read_text()))
    assert names
    undeclared = sorted(n for n in names if re.sub(r"_(bucket|count|sum)$", "", n) not in HELP)
    assert not undeclared, undeclared
