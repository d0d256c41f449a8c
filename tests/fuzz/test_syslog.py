"""Fuzz: the syslog encoder (RFC 5424 / 3164, octet-counting / LF / datagram) on any events."""

from __future__ import annotations

import pytest
from hypothesis import given

from shipper.event import ContainerMeta, Event
from shipper.sinks.syslog.encode import EncoderOptions, Format, encode_event, rfc5424_timestamp
from tests.fuzz import props
from tests.fuzz.strategies import SYSLOG_CASE, budget


@budget(1.5)
@given(SYSLOG_CASE)
def test_messages_parse_back_within_limits(case: props.SyslogCase) -> None:
    props.only_open_bugs(props.check_syslog(case))


@pytest.mark.parametrize("ts", ["2024-13-45T99:99:99Z", "2024-02-30T12:00:00Z", "9999-12-31T23:59:59-01:00"])
def test_bug_impossible_time_is_nilvalue(ts: str) -> None:
    assert rfc5424_timestamp(ts) == "-"


def test_bug_message_never_longer_than_max_bytes() -> None:
    opts = EncoderOptions(format=Format.RFC5424, procid="p" * 128, msgid="m" * 32, app_name="a" * 48)
    meta = ContainerMeta("c" * 64, "web", host="h" * 255)
    msg = encode_event(opts, meta, Event("2024-05-01T12:00:00.000000001Z", "hello"), max_bytes=480)
    assert len(msg) <= 480
