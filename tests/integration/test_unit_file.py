"""deploy/shipper.service: systemd accepts it, and its sandbox keeps `systemd-analyze security` at 4.0 or less.

Both run offline on the unit file (no systemd needed as PID 1); with CI=true a missing systemd-analyze fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "shipper.service"
MAX_EXPOSURE = 4.0


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    require("systemd-analyze", exe is not None)
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_unit_verifies() -> None:
    r = _analyze("verify", str(UNIT))
    assert r.returncode == 0, r.stderr
    assert not r.stderr.strip(), r.stderr  # verify prints warnings (unknown keys, bad values) and still exits 0


def test_unit_security_exposure_is_low() -> None:
    r = _analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


@pytest.mark.parametrize("line", ["ExecReload=", "UMask=0077", "StateDirectory=shipper", "StateDirectoryMode=0700",
                                  "CapabilityBoundingSet=CAP_DAC_READ_SEARCH", "SystemCallFilter=@system-service",
                                  "RestartPreventExitStatus=2", "ExecStartPre=/usr/bin/env shipper check",
                                  "KillMode=mixed"])
def test_unit_has(line: str) -> None:
    """What the README promises of the unit: reload by SIGHUP, owner-only files, one capability, no restart loop
    on a config error (exit 2), the config checked before start, and SIGTERM to the supervisor only."""
    assert any(raw.startswith(line) for raw in UNIT.read_text().splitlines())


NON_ROOT_DROP_IN = ["DynamicUser=yes", "AmbientCapabilities=CAP_DAC_READ_SEARCH",
                    "Environment=SHIPPER_DOCKER_DISCOVERY=files"]


def test_the_non_root_variant_verifies_and_scores_lower(tmp_path: Path) -> None:
    """The drop-in the README gives for running without root (discovery = "files", one capability)."""
    text = UNIT.read_text().replace("User=root\n", "\n".join(NON_ROOT_DROP_IN) + "\n")
    assert "DynamicUser=yes" in text
    unit = tmp_path / "shipper.service"
    unit.write_text(text)
    r = _analyze("verify", str(unit))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = _analyze("security", "--offline=yes", "--no-pager", str(unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, r.stdout
