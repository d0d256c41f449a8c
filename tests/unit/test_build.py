"""The compiled hot path: built when asked for, never stale, and the pure-Python fallback the same."""

from __future__ import annotations

import os
from pathlib import Path

import shipper
from shipper.sources.jsonfile import lines
from shipper.transforms import assemble

ROOT = Path(__file__).resolve().parents[2]


def test_the_hot_path_is_compiled_when_the_build_asked_for_it() -> None:
    """CI installs with SHIPPER_COMPILE=1 and runs the suite compiled, then the unit tests of the compiled
    modules again as pure Python (SHIPPER_PURE_PYTHON=1): each run must be what it says."""
    if os.environ.get("SHIPPER_PURE_PYTHON") == "1":
        assert not shipper.compiled() and assemble.__file__.endswith(".py") and lines.__file__.endswith(".py")
    elif os.environ.get("SHIPPER_COMPILE") == "1":
        assert shipper.compiled(), f"SHIPPER_COMPILE=1, yet {assemble.__file__} is imported"
        assert not lines.__file__.endswith(".py"), lines.__file__


def test_a_compiled_module_is_not_older_than_its_source() -> None:
    """An extension built in place is imported before the .py beside it: after an edit it must be rebuilt
    (`SHIPPER_COMPILE=1 pip install --no-build-isolation -e .`), or the edit would silently not run."""
    for name in shipper.HOT_PATH:
        source = ROOT / (name.replace(".", "/") + ".py")
        assert source.exists(), name
        for built in source.parent.glob(source.stem + ".*.so"):
            assert built.stat().st_mtime >= source.stat().st_mtime, f"{built.name} is older than {source.name}"
