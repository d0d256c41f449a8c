"""The syslog sink's config as the loader builds it: defaults, enums at load, errors naming the key."""

from __future__ import annotations

import pytest

from shipper.sinks.syslog.encode import Facility, Format, Framing, Severity
from shipper.sinks.syslog.sink import SyslogConfig
from shipper.sinks.syslog.transport import Address, parse_address
from shipper.tls import TlsVersion
from tests.unit.sinks.support import SinkTable, assert_documented

TABLE = SinkTable(SyslogConfig, "syslog", "central")
load, error = TABLE.load, TABLE.error


def test_defaults() -> None:
    cfg = load()
    assert cfg.address == ["unix:///dev/log"]
    assert (cfg.format, cfg.framing, cfg.facility, cfg.severity, cfg.stderr_severity) == (
        Format.RFC5424, Framing.OCTET_COUNTING, Facility.LOCAL0, Severity.INFO, Severity.ERR)
    assert (cfg.app_name, cfg.procid, cfg.msgid, cfg.sd_id) == ("{container.name}", "-", "{stream}",
                                                                "docker@32473")
    assert cfg.tls_verify_hostname and cfg.tls_min_version is TlsVersion.V1_2 and not cfg.bom


def test_every_field_is_documented() -> None:
    assert_documented(SyslogConfig)


def test_enums_are_parsed_at_load() -> None:
    cfg = load(address="tcp://logs:601", format="rfc3164", framing="lf", facility="daemon", severity="notice",
               stderr_severity="warning", tls_min_version="1.3", max_message_bytes="8KiB")
    assert cfg.address == ["tcp://logs:601"]
    assert (cfg.format, cfg.framing, cfg.facility, cfg.severity, cfg.stderr_severity) == (
        Format.RFC3164, Framing.LF, Facility.DAEMON, Severity.NOTICE, Severity.WARNING)
    assert cfg.max_message_bytes == 8192
    assert load(severity="error").severity is Severity.ERR


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"facility": "local9"}, "sinks.central.facility", "local0"),
    ({"severity": "loud"}, "sinks.central.severity", "must be one of"),
    ({"format": "rfc5425"}, "sinks.central.format", "rfc5424"),
    ({"framing": "nul"}, "sinks.central.framing", "octet-counting"),
    ({"address": "http://x:1"}, "sinks.central.address", "udp://"),
    ({"address": ["tcp://a:1", "tcp://:2"]}, "sinks.central.address[1]", "no host"),
    ({"address": "unix://relative/path"}, "sinks.central.address", "absolute"),
    ({"address": []}, "sinks.central.address", "at least one"),
    ({"app_name": "{container.nam}"}, "sinks.central.app_name", "unknown field"),
    ({"msgid": "{stream"}, "sinks.central.msgid", "brace"),
    ({"sd_id": "docker"}, "sinks.central.sd_id", "name@enterprise-number"),
    ({"max_message_bytes": 100}, "sinks.central.max_message_bytes", "480"),
    ({"address": "udp://h:514", "max_message_bytes": 70000}, "sinks.central.max_message_bytes", "65507"),
    ({"address": "tls://h", "tls_cert": "/c.pem"}, "sinks.central.tls_key", "go together"),
    ({"address": "tcp://h:514", "tls_ca": "/ca.pem"}, "sinks.central.tls_ca", "no address is tls://"),
    ({"tls_min_version": "1.1"}, "sinks.central.tls_min_version", "'1.2'"),
    ({"write_timeout_secs": 0}, "sinks.central.write_timeout_secs", "positive"),
    ({"adress": "udp://h:1"}, "sinks.central.adress", "unknown key"),
])
def test_errors_name_the_key(table: dict, key: str, words: str) -> None:
    e = error(**table)
    assert e.key == key
    assert words in e.message


def test_address_forms() -> None:
    assert parse_address("udp://10.0.0.1") == Address("udp", "10.0.0.1", 514)
    assert parse_address("tcp://logs.example:601") == Address("tcp", "logs.example", 601)
    assert parse_address("tls://logs.example") == Address("tls", "logs.example", 6514)
    assert parse_address("tcp://[::1]:5514") == Address("tcp", "::1", 5514)
    assert str(parse_address("tcp://[::1]:5514")) == "tcp://[::1]:5514"
    assert parse_address("unix:///dev/log") == Address("unix", path="/dev/log")
    with pytest.raises(ValueError):
        parse_address("tcp://h:99999")


def test_a_list_of_addresses_fails_over_in_order() -> None:
    cfg = load(address=["tls://a:6514", "tls://b:6514"], tls_ca="/etc/ssl/ca.pem")
    assert cfg.address == ["tls://a:6514", "tls://b:6514"]
