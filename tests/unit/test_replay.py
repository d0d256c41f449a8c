from __future__ import annotations

import io

import pytest

from shipper.config import load_dict
from shipper.errors import ConfigError
from shipper.replay import Progress, parse_time, spool_dir

NOW = 1_795_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-26T10:00:00Z", 1795687200.0),
    ("2026-11-26T10:00:00.5Z", 1795687200.5),
    ("2026-11-26T10:00:00.123456789Z", 1795687200.123456),
    ("2026-11-26T11:00:00+01:00", 1795687200.0),
    ("2026-11-26T10:00:00", 1795687200.0),  # no offset: UTC
])
def test_rfc3339_forms(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "ago"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
                                           ("1.5h", 5400)])
def test_relative_forms(text: str, ago: float) -> None:
    assert parse_time(text, now=NOW) == NOW - ago


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "2026-13-01T00:00:00Z", ""])
def test_bad_times_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


def test_replay_needs_the_disk_spool() -> None:
    with pytest.raises(ConfigError) as e:
        spool_dir(load_dict({}, env={}))
    assert e.value.key == "buffer.type"
    cfg = load_dict({"buffer": {"type": "disk"}, "state": {"dir": "/s"}}, env={})
    assert spool_dir(cfg) == "/s/spool"


def test_progress_draws_only_on_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(10, out)
    p.update(5, force=True)
    assert out.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    p = Progress(10, tty)
    p.update(5, force=True)
    assert "5/10 events" in tty.getvalue() and "50.0%" in tty.getvalue()
