"""The Kafka sink's config as the loader builds it: defaults, enums at load, errors naming the key, secrets
that never reach the config or --explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.config import explain
from shipper.sinks.kafka.config import Acks, Compression, KafkaConfig, Partitioner, SaslMechanism
from shipper.sinks.kafka.encode import Oversize, ValueFormat
from shipper.sinks.kafka.sink import KafkaSink
from tests.unit.sinks.support import SinkTable, assert_documented

TABLE = SinkTable(KafkaConfig, "kafka", "bus")
load, error = TABLE.load, TABLE.error


def test_defaults() -> None:
    cfg = load()
    assert cfg.brokers == ["127.0.0.1:9092"]
    assert (cfg.topic, cfg.default_topic, cfg.key) == ("logs", "logs", "{container.id}")
    assert cfg.partitioner is Partitioner.HASH and cfg.value is ValueFormat.ECS
    assert cfg.acks is Acks.ALL and cfg.compression is Compression.ZSTD and cfg.oversize is Oversize.TRUNCATE
    assert cfg.max_in_flight == 2, "Kafka keeps many partitions in flight: more than the engine's default 1"
    assert cfg.batch_max_events == 1024
    assert not cfg.enable_idempotence and not cfg.tls and cfg.sasl_mechanism is SaslMechanism.NONE


def test_every_field_is_documented() -> None:
    assert_documented(KafkaConfig)


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"brokers": []}, "sinks.bus.brokers", "at least one"),
    ({"brokers": ["kafka-1"]}, "sinks.bus.brokers[0]", "host:port"),
    ({"brokers": ["a:9092", "b:99999"]}, "sinks.bus.brokers[1]", "host:port"),
    ({"topic": "logs.{nope}"}, "sinks.bus.topic", "unknown field"),
    ({"topic": "logs/{stream"}, "sinks.bus.topic", "stray brace"),
    ({"topic": "bad topic"}, "sinks.bus.topic", "not a Kafka topic name"),
    ({"default_topic": ""}, "sinks.bus.default_topic", "not a Kafka topic name"),
    ({"key": "{container}"}, "sinks.bus.key", "unknown field"),
    ({"partitioner": "random"}, "sinks.bus.partitioner", "must be one of"),
    ({"compression": "brotli"}, "sinks.bus.compression", "must be one of"),
    ({"acks": "none"}, "sinks.bus.acks", "must be one of"),
    ({"value": "avro"}, "sinks.bus.value", "must be one of"),
    ({"max_message_bytes": 2_000_000}, "sinks.bus.max_message_bytes", "producer_batch_bytes"),
    ({"max_message_bytes": 10}, "sinks.bus.max_message_bytes", "between"),
    ({"request_timeout_secs": 0}, "sinks.bus.request_timeout_secs", "positive"),
    ({"enable_idempotence": True, "acks": "leader"}, "sinks.bus.enable_idempotence", "acks"),
    ({"tls_ca": "/etc/ssl/certs/ca-certificates.crt"}, "sinks.bus.tls_ca", "tls = false"),
    ({"tls": True, "tls_ca": "/nonexistent/ca.pem"}, "sinks.bus.tls_ca", "no such file"),
    ({"tls": True, "tls_cert": "/nonexistent/c.pem"}, "sinks.bus.tls_key", "go together"),
    ({"tls": True, "tls_min_version": "1.1"}, "sinks.bus.tls_min_version", "must be one of"),
    ({"sasl_username": "u"}, "sinks.bus.sasl_username", "sasl_mechanism = 'none'"),
    ({"sasl_mechanism": "SCRAM-SHA-512"}, "sinks.bus.sasl_username", "user name"),
    ({"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"}, "sinks.bus.sasl_password_file", "exactly one"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password_env": "KAFKA_TEST_PW"},
     "sinks.bus.sasl_mechanism", "in clear"),
    ({"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u", "sasl_password_env": "KAFKA_TEST_UNSET"},
     "sinks.bus.sasl_password_env", "empty or missing"),
    ({"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u", "sasl_password_file": "/nonexistent/pw"},
     "sinks.bus.sasl_password_file", "cannot read"),
    ({"linger": 5}, "sinks.bus.linger", "unknown key"),
])
def test_mistakes_name_their_key(table: dict[str, object], key: str, words: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_TEST_PW", "s3cret")
    monkeypatch.delenv("KAFKA_TEST_UNSET", raising=False)
    e = error(**table)
    assert e.key == key, e
    assert words in e.message, e


def test_the_password_comes_from_a_file_or_the_environment_and_is_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2-file\n")
    cfg = load(sasl_mechanism="SCRAM-SHA-512", sasl_username="shipper", sasl_password_file=str(pw), tls=True)
    assert cfg.sasl_password() == "hunter2-file"
    monkeypatch.setenv("KAFKA_PW", "hunter2-env")
    cfg2 = load(sasl_mechanism="PLAIN", sasl_username="shipper", sasl_password_env="KAFKA_PW", tls=True)
    assert cfg2.sasl_password() == "hunter2-env"
    for c in (cfg, cfg2):
        assert "hunter2" not in repr(c)
        opts = KafkaSink.producer_options(type("S", (), {"config": c})())
        assert "hunter2" not in repr(opts)
        assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_plain_username"] == "shipper"
    assert "hunter2" not in explain()
    assert "sasl_password_file" in explain()


def test_security_protocol_follows_tls_and_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PW", "x")
    plain = load()
    sasl = load(sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password_env="KAFKA_PW")
    tls = load(tls=True)
    for cfg, want in ((plain, "PLAINTEXT"), (sasl, "SASL_PLAINTEXT"), (tls, "SSL")):
        opts = KafkaSink.producer_options(type("S", (), {"config": cfg})())
        assert opts["security_protocol"] == want
    opts = KafkaSink.producer_options(type("S", (), {"config": plain})())
    assert opts["acks"] == "all" and opts["compression_type"] == "zstd" and opts["linger_ms"] == 0
