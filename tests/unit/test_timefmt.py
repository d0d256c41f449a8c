from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.sinks.syslog.encode import utc_parts
from shipper.timefmt import NS_PER_SEC, parse_ns, second_ns, unix_text

T = 1714557600  # 2024-05-01T10:00:00Z


def test_nanoseconds_are_exact() -> None:
    assert parse_ns("2024-05-01T10:00:00.123456789Z") == T * NS_PER_SEC + 123_456_789
    assert parse_ns("2024-05-01T10:00:00.000000001Z") == T * NS_PER_SEC + 1
    assert parse_ns("2262-04-11T23:47:16.854775807Z") == 2**63 - 1  # where a float has no nanoseconds left
    assert parse_ns("1970-01-01T00:00:00Z") == 0
    assert parse_ns("1969-12-31T23:59:59.999999999Z") == -1


@pytest.mark.parametrize("digits", range(10))
def test_fractions_of_any_length_up_to_nine(digits: int) -> None:
    frac = "123456789"[:digits]
    text = f"2024-05-01T10:00:00{'.' + frac if frac else ''}Z"
    assert parse_ns(text) == T * NS_PER_SEC + int(frac.ljust(9, "0") or 0)


def test_digits_past_the_ninth_are_cut_not_rounded() -> None:
    assert parse_ns("2024-05-01T10:00:00.1234567899999Z") == T * NS_PER_SEC + 123_456_789


@pytest.mark.parametrize("text", [
    "2024-05-01T12:00:00.5+02:00",
    "2024-05-01T04:30:00.5-05:30",
    "2024-05-01T12:00:00.5+0200",  # ISO 8601 without the colon
    "2024-05-01t10:00:00.5z",  # RFC 3339 §5.6: lower case allowed
    "2024-05-01 10:00:00.5Z",  # and a space for the 'T'
    "2024-05-01T10:00:00,5Z",  # ISO 8601 decimal comma
    "2024-05-01T10:00:00.500000000+00:00",
    "2024-05-01T10:00:00.5-00:00",
])
def test_offsets_and_spellings_are_applied(text: str) -> None:
    assert parse_ns(text) == T * NS_PER_SEC + 500_000_000


def test_a_zone_is_required_unless_utc_is_assumed() -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_ns("2024-05-01T10:00:00.5")
    assert parse_ns("2024-05-01T10:00:00.5", assume_utc=True) == T * NS_PER_SEC + 500_000_000


@pytest.mark.parametrize("text", [
    "", "yesterday", "2024-05-01", "2024-05-01T10:00Z", "Z", "2024-05-01T10:00:00.Z",
    "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T10:60:00Z",
    "2024-05-01T10:00:00+24:00", "2024-05-01T10:00:00+02:60", "2024-05-01T10:00:00+2:00",
    "2024-05-01T10:00:00.1_0Z", "2024-05-01T10:00:00.+5Z", "2024-05-01T10:00:00. 5Z",
    "2024-05-01T10:00:00.\u0661\u0662Z", "\u0662024-05-01T10:00:00Z",  # non-ASCII digits
    "2024-05-01T10:00:00Z\n", " 2024-05-01T10:00:00Z", "2024-05-01T10:00:00ZZ", "2024-05-01X10:00:00Z",
    "2024-W18-3T10:00:00Z",  # an ISO week date: datetime.fromisoformat would take it
])
def test_bad_input_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ns(text)
    with pytest.raises(ValueError):
        parse_ns(text, assume_utc=True)


def test_second_ns_reads_the_seconds_prefix_as_utc() -> None:
    assert second_ns("2024-05-01T10:00:00") == T * NS_PER_SEC
    with pytest.raises(ValueError):
        second_ns("2024-05-01 10:00:00")  # only Docker's form: callers fall back to parse_ns
    with pytest.raises(ValueError):
        second_ns("2024-02-30T10:00:00")


def test_unix_text_is_exact() -> None:
    assert unix_text(1795730082051774009) == "1795730082.051774009"
    assert unix_text(5) == "0.000000005"
    assert unix_text(parse_ns("2024-05-01T10:00:00.000000007Z")) == f"{T}.000000007"


instants = st.integers(-(10**9) * NS_PER_SEC, 4 * 10**9 * NS_PER_SEC)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59)  # minutes


def _format(ns: int, offset_min: int, trim: bool) -> str:
    """ns as RFC 3339 in the given offset, formatted independently of the parser (datetime, 9 digits)."""
    secs, frac = divmod(ns, NS_PER_SEC)
    tz = timezone(timedelta(minutes=offset_min))
    local = datetime.fromtimestamp(secs, UTC).astimezone(tz)
    digits = f"{frac:09d}".rstrip("0") if trim else f"{frac:09d}"
    zone = "Z" if offset_min == 0 else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]
    return local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "") + zone


@given(instants, offsets, st.booleans())
def test_round_trip_through_any_offset(ns: int, offset_min: int, trim: bool) -> None:
    assert parse_ns(_format(ns, offset_min, trim)) == ns


@given(instants, offsets)
def test_syslog_fields_agree_with_the_parser(ns: int, offset_min: int) -> None:
    """The syslog encoder's own fast path (fields cut from the text) and the parser read a time alike."""
    parts = utc_parts(_format(ns, offset_min, trim=True))
    assert parts is not None
    secs, frac = divmod(ns, NS_PER_SEC)
    assert parts == (time.strftime("%Y-%m-%d", time.gmtime(secs)),
                     time.strftime("%H:%M:%S", time.gmtime(secs)), f"{frac // 1000:06d}")
