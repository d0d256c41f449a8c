"""Shared fixtures: real services where they exist. Under CI=true a missing service fails the run."""

from __future__ import annotations

import collections
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shipper

IN_CI = os.environ.get("CI", "").lower() == "true"


class _PurePython(importlib.abc.MetaPathFinder):
    """SHIPPER_PURE_PYTHON=1: the compiled hot-path modules are imported from their .py instead, so the
    fallback that a build without SHIPPER_COMPILE installs is tested too, on the same checkout."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in PURE_MODULES:
            return None
        source = Path(__file__).resolve().parents[1] / (name.replace(".", "/") + ".py")
        return importlib.util.spec_from_file_location(name, source)


PURE_MODULES = set(shipper.HOT_PATH)
if os.environ.get("SHIPPER_PURE_PYTHON") == "1":
    sys.meta_path.insert(0, _PurePython())
TEST_IMAGE = "shipper-test:busybox"
TEST_LABEL = "shipper.test"
SESSION = uuid.uuid4().hex[:12]  # this pytest run's containers carry it, so teardown removes only those
SESSION_LABEL = "shipper.test.session"


def require(what: str, ok: bool, why: str = "") -> None:
    """Skip when a service is missing on a developer machine; fail under CI, never skip silently."""
    if ok:
        return
    msg = f"{what} is not available{': ' + why if why else ''}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: every service must be present)")
    pytest.skip(msg)


def _busybox_tar() -> bytes:
    """A root folder holding /bin/busybox and its applet links, as a tar for `docker import`."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        import subprocess

        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for name in applets:
            if name == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:
        require("dockerd", False, repr(e))
    try:
        client.images.get(TEST_IMAGE)
    except Exception:
        repo, tag = TEST_IMAGE.split(":")
        client.api.import_image_from_data(_busybox_tar(), repository=repo, tag=tag,
                                          changes=["ENV PATH=/bin"])
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"}):
        with contextlib.suppress(Exception):
            c.remove(force=True)


@pytest.fixture
def run_container(docker_client):  # type: ignore[no-untyped-def]
    """Start a test container: run_container("sh -c 'seq 5'", name=..., labels=..., **docker_kwargs)."""
    started = []

    def run(command: str | list[str], **kwargs):  # type: ignore[no-untyped-def]
        labels = {TEST_LABEL: "1", SESSION_LABEL: SESSION, **kwargs.pop("labels", {})}
        kwargs.setdefault("name", f"shipper-test-{uuid.uuid4().hex[:10]}")
        c = docker_client.containers.run(TEST_IMAGE, command, detach=True, labels=labels, **kwargs)
        started.append(c)
        return c

    yield run
    for c in started:
        with contextlib.suppress(Exception):
            c.remove(force=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    d.mkdir()
    yield d


LONG_SEQUENCE = 40  # items; longer lists are compared in summary


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object, right: object) -> list[str] | None:
    """Long lists compared with == are explained by what differs (the first difference, what one holds and
    the other not, what repeats) instead of pytest's full diff, which under CI prints every item twice and
    pushes the test's name out of the part of the log that is kept."""
    if op != "==" or not isinstance(left, list) or not isinstance(right, list):
        return None
    if max(len(left), len(right)) <= LONG_SEQUENCE:
        return None
    first = next((i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b), min(len(left), len(right)))
    lines = [f"two lists differ: {len(left)} items == {len(right)} items, first at index {first}: "
             f"{_around(left, first)} == {_around(right, first)}"]
    try:
        only_left, only_right = _multiset_minus(left, right), _multiset_minus(right, left)
    except TypeError:  # unhashable items: the first difference is all there is
        return lines
    for side, items in (("left", only_left), ("right", only_right)):
        if items:
            lines.append(f"only in {side} ({len(items)}): {_ranges(items)}")
    if not only_left and not only_right:
        lines.append("the same items in another order")
    return lines


def _around(items: list[Any], i: int) -> str:
    return repr(items[max(0, i - 2):i + 3])[:300]


def _multiset_minus(a: list[Any], b: list[Any]) -> list[Any]:
    """The items of `a` that `b` does not hold as often, in `a`'s order."""
    extra = collections.Counter(a) - collections.Counter(b)
    out = []
    for x in a:
        if extra[x] > 0:
            extra[x] -= 1
            out.append(x)
    return out


def _ranges(items: list[Any], limit: int = 12) -> str:
    """Integers as runs (`5..9, 12`), anything else as its first items."""
    if not all(isinstance(x, int) for x in items):
        return repr(items[:limit])[:400] + (" ..." if len(items) > limit else "")
    runs: list[list[int]] = []
    for x in sorted(items):
        if runs and x in (runs[-1][1], runs[-1][1] + 1):
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")
