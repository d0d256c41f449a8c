"""RFC 3339 times as shipper meets them: Docker's log timestamps, inspect times, positions, replay windows.

One parser, `parse_ns`, exact to the nanosecond (Docker writes nine fraction digits; a float or `datetime`,
with microseconds, cannot hold them). It accepts RFC 3339 with its §5.6 note (lower-case 't'/'z', a space
for 'T') and two ISO 8601 spellings other writers use (',' before the fraction, an offset without ':');
fraction digits past the ninth are cut, never rounded, as everywhere else in shipper.

Docker's own form, "2006-01-02T15:04:05.999999999Z", takes a fast path: it is parsed once per log entry,
and the seconds part is shared by every entry of the same second, so it is cached (`second_ns`).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

NS_PER_SEC = 1_000_000_000
# groups: date, clock, fraction digits (or None), zone ('Z', 'z', '+hh:mm', '-hhmm'; None when absent)
RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:[.,](\d+))?([Zz]|[+-]\d\d:?\d\d)?", re.ASCII)
_SECOND = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", re.ASCII)
_SCALE = tuple(10 ** (9 - n) for n in range(10))  # ns per unit of an n-digit fraction
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SEC = timedelta(seconds=1)


@functools.lru_cache(maxsize=8192)
def second_ns(prefix: str) -> int:
    """'YYYY-MM-DDThh:mm:ss', read as UTC -> ns since the epoch; cached because a batch shares its seconds."""
    m = _SECOND.fullmatch(prefix)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {prefix!r}")
    y, mo, d, h, mi, s = map(int, m.groups())
    try:
        dt = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError as e:  # a day or hour that does not exist
        raise ValueError(f"not an RFC 3339 time: {prefix!r} ({e})") from None
    return (dt - _EPOCH) // _ONE_SEC * NS_PER_SEC


def parse_ns(text: str, *, assume_utc: bool = False) -> int:
    """An RFC 3339 time -> ns since the epoch, exactly; ValueError when it is not one.

    A time without a zone is ambiguous and refused, unless `assume_utc` (what a person types on a command
    line, or a writer that leaves the 'Z' out) reads it as UTC.
    """
    if text[-1:] == "Z":  # Docker's form: the 19 characters before the fraction checked by second_ns
        n = len(text)
        if 21 < n <= 30 and text[19] == "." and text[10] == "T":
            frac = text[20:-1]
            if frac.isdigit() and frac.isascii():  # int() alone would take '_', '+' and spaces too
                return second_ns(text[:19]) + int(frac) * _SCALE[n - 21]
        elif n == 20 and text[10] == "T":
            return second_ns(text[:19])
    m = RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, clock, frac, zone = m.groups()
    ns = second_ns(text[:19] if text[10] == "T" else f"{date}T{clock}")
    if frac:
        if len(frac) > 9:
            frac = frac[:9]
        ns += int(frac) * _SCALE[len(frac)]
    if zone is None:
        if not assume_utc:
            raise ValueError(f"no time zone ('Z' or an offset) in {text!r}")
    elif zone != "Z" and zone != "z":
        hh, mm = int(zone[1:3]), int(zone[-2:])
        if hh > 23 or mm > 59:
            raise ValueError(f"not a UTC offset: {zone!r} in {text!r}")
        offset = (hh * 3600 + mm * 60) * NS_PER_SEC
        ns += -offset if zone[0] == "+" else offset  # local time minus its offset is UTC
    return ns


def unix_text(ns: int) -> str:
    """ns since the epoch as Unix seconds with nine fraction digits: the form of dockerd's `since`/`until`
    that is exact and needs no zone (dockerd reads a zone-less RFC 3339 time in its own local time)."""
    secs, frac = divmod(ns, NS_PER_SEC)
    return f"{secs}.{frac:09d}"
