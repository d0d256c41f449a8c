"""The status page of a real daemon, rendered by a real headless Chromium while containers log: the DOM it
builds has a row per container and per sink and charts with lines drawn; a screenshot is kept as an artifact
(status-page.png under the test's temp dir)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.admin_support import AdminShipper

pytestmark = pytest.mark.docker
SCRIPT = "i=0; while true; do echo \"hello $i\"; i=$((i+1)); usleep 20000; done"
NULL_SINK = '\n[sinks.discard]\ntype = "null"\n'


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    require("chromium", bool(path), "apt-get install chromium")
    return path


def headless(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium as root in a container-like host: no sandbox, no GPU; virtual time lets the page's script run
    (and its first refresh) before the DOM is dumped."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=4000", *args], capture_output=True, text=True, timeout=120)


class Dom(HTMLParser):
    """The rows (tr with data-name) and chart lines (polyline with points) of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, set[str]] = {"container": set(), "sink": set()}
        self.lines: list[tuple[str, int]] = []  # (series, points)
        self.svgs = 0
        self.health = ""
        self._in_health = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") in self.rows:
            self.rows[str(a["class"])].add(str(a.get("data-name")))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "polyline":
            self.lines.append((str(a.get("data-series")), len(str(a.get("points") or "").split())))
        self._in_health = a.get("id") == "health"

    def handle_data(self, data: str) -> None:
        if self._in_health:
            self.health += data.strip()
            self._in_health = False


def test_page_in_headless_chromium(tmp_path: Path, run_container: Any) -> None:
    browser = chromium()
    d = AdminShipper(tmp_path, NULL_SINK).start()
    d.wait_admin()
    names = {run_container(["sh", "-c", SCRIPT], labels=d.labels).name for _ in range(2)}
    d.until(lambda: {c["name"] for c in d.status()["containers"]} >= names, 30, "both containers read")
    d.until(lambda: len(d.status()["history"]["in"]) >= 3, 30, "three samples of history")

    out = headless(browser, "--dump-dom", d.base + "/")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = Dom()
    dom.feed(out.stdout)
    assert dom.rows["container"] >= names, dom.rows
    assert dom.rows["sink"] == {"out", "discard"}
    assert dom.health == "healthy"
    assert dom.svgs == 3  # events/s per sink (2) and buffer fill
    drawn = [s for s, n in dom.lines if n >= 2]
    assert drawn.count("in") == 2 and drawn.count("out") == 2 and "fill" in drawn, dom.lines

    shot = tmp_path / "status-page.png"
    out = headless(browser, "--window-size=1100,1300", f"--screenshot={shot}", d.base + "/")
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert d.stop() == 0
