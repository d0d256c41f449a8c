"""The Logstash sink's config as the loader builds it: defaults, hosts, errors naming the key, no secret in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.errors import ConfigError
from shipper.sinks.logstash.config import Host, LogstashConfig, Protocol
from tests.unit.sinks.support import SinkTable, assert_documented

TABLE = SinkTable(LogstashConfig, "logstash", "ls")
load, error = TABLE.load, TABLE.error


def test_defaults() -> None:
    cfg = load()
    assert cfg.protocol is Protocol.BEATS and cfg.hosts == ["localhost:5044"] and not cfg.loadbalance
    assert (cfg.compression_level, cfg.window_max_events, cfg.pipelining, cfg.timeout_secs) == (3, 2048, 2, 30.0)
    assert cfg.host_list() == [Host("localhost", 5044)]


def test_every_field_is_documented() -> None:
    assert_documented(LogstashConfig)


@pytest.mark.parametrize(("protocol", "text", "tls", "want"), [
    ("beats", "ls1", False, Host("ls1", 5044)),
    ("beats", "[::1]:5045", False, Host("::1", 5045)),
    ("json_lines", "ls1", False, Host("ls1", 5000)),
    ("http", "ls1", False, Host("ls1", 8080, "http://ls1:8080/")),
    ("http", "ls1:9000", True, Host("ls1", 9000, "https://ls1:9000/")),
    ("http", "https://ls1/in", False, Host("ls1", 8080, "https://ls1:8080/in")),
])
def test_hosts(protocol: str, text: str, tls: bool, want: Host) -> None:
    assert load(protocol=protocol, hosts=[text], tls=tls).host_list() == [want]


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"protocol": "lumberjack"}, "sinks.ls.protocol", "beats"),
    ({"hosts": []}, "sinks.ls.hosts", "at least one"),
    ({"hosts": ["a:1", "http://b:2"]}, "sinks.ls.hosts[1]", "URL"),
    ({"hosts": ["a:x"]}, "sinks.ls.hosts", "not a host"),
    ({"compression_level": 10}, "sinks.ls.compression_level", "0 and 9"),
    ({"window_max_events": 0}, "sinks.ls.window_max_events", "between"),
    ({"pipelining": 100}, "sinks.ls.pipelining", "between"),
    ({"timeout_secs": 0}, "sinks.ls.timeout_secs", "positive"),
    ({"tls_ca": "/ca.pem"}, "sinks.ls.tls_ca", "tls is off"),
    ({"tls": True, "tls_cert": "/c.pem"}, "sinks.ls.tls_key", "together"),
    ({"tls_min_version": "1.1"}, "sinks.ls.tls_min_version", "1.2"),
    ({"user": "u"}, "sinks.ls.user", "http"),
    ({"protocol": "http", "password": "p"}, "sinks.ls.user", "needs a user"),
    ({"protocol": "http", "user": "u", "password": "p", "password_file": "/p"}, "sinks.ls.password_file", "not both"),
    ({"protocol": "http", "headers": {"X Bad": "1"}}, "sinks.ls.headers.X Bad", "header"),
    ({"protocol": "http", "hosts": ["http://a:1"], "tls": True}, "sinks.ls.hosts", "http://"),
    ({"windw_max_events": 1}, "sinks.ls.windw_max_events", "unknown key"),
])
def test_mistakes_name_their_key(table: dict[str, object], key: str, words: str) -> None:
    e = error(**table)
    assert e.key == key and words in e.message, e


def test_the_password_stays_out_of_reprs_and_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-from-file\nignored\n")
    cfg = load(protocol="http", user="shipper", password_file=str(secret))
    assert cfg.read_password() == "s3cret-from-file"
    cfg = load(protocol="http", user="shipper", password="s3cret-inline")
    assert "s3cret" not in repr(cfg) and cfg.read_password() == "s3cret-inline"


def test_check_reads_the_password_file(tmp_path: Path) -> None:
    from shipper.sinks.base import SinkContext
    from shipper.sinks.logstash.sink import LogstashSink
    from shipper.telemetry.metrics import Metrics

    cfg = load(protocol="http", user="u", password_file=str(tmp_path / "missing"))
    sink = LogstashSink(cfg, SinkContext("ls", tmp_path, "h", Metrics()))
    with pytest.raises(ConfigError) as info:
        sink.preflight()
    assert info.value.key == "sinks.ls.password_file"
