"""The Kafka sink's keys: where records go (brokers, topic, key), what they carry, how the producer batches
and acknowledges, and how it authenticates. Secrets are never config values: the SASL password is read at
start from a file or an environment variable that the config only names, so neither `shipper check
--explain` nor a log line can show it. A TLS or SASL setting that cannot be honoured is a ConfigError."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass

from shipper.errors import ConfigError
from shipper.schema import doc, naming
from shipper.sinks.base import SinkBase
from shipper.sinks.kafka.encode import (
    MIN_MESSAGE_BYTES,
    EncoderOptions,
    Oversize,
    Template,
    ValueFormat,
    check_topic,
)
from shipper.tls import TLS_VERSIONS, TlsClientConfig, check_tls_keys

_BROKER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
MAX_BATCH_BYTES = 64 * 1024 * 1024


class Partitioner(enum.Enum):
    HASH = "hash"  # murmur2 of the key, as Kafka's Java client: one key, one partition (order per container)
    ROUND_ROBIN = "round_robin"  # each run of one container's events to the next partition: spreads the load


class Acks(enum.Enum):
    ALL = "all"  # every in-sync replica has the record
    LEADER = "leader"  # the partition leader has it (lost if it dies before replicating)


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class SaslMechanism(enum.Enum):
    NONE = "none"
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaConfig(SinkBase):
    brokers: list[str] = doc(["127.0.0.1:9092"], "bootstrap brokers, host:port; the rest of the cluster is "
                                                 "learnt from them")
    topic: str = doc("logs", "topic template: literal text and {container.name}, {container.id}, "
                             "{container.image}, {compose.project}, {compose.service}, {host.name}, {stream}, "
                             "{label.NAME}; characters Kafka refuses become '_'")
    default_topic: str = doc("logs", "topic of an event for which a field of `topic` is missing or empty")
    key: str = doc("{container.id}", "record key template (same fields); the hash partitioner puts one key on "
                                     "one partition, so a container's order holds; '' for no key")
    partitioner: Partitioner = doc(Partitioner.HASH, "'hash' (of the key: order per container) or "
                                                     "'round_robin' (throughput: each container run to the next "
                                                     "partition)")
    value: ValueFormat = doc(ValueFormat.ECS, "'ecs' (the ECS JSON document) or 'message' (the raw message; "
                                              "metadata in record headers)")
    acks: Acks = doc(Acks.ALL, "'all' (every in-sync replica) or 'leader'; a record is acked to the buffer "
                               "only once the broker acknowledged it")
    compression: Compression = doc(Compression.ZSTD, "none, gzip, snappy, lz4 or zstd")
    producer_batch_bytes: int = doc(1_000_000, "largest record batch for one partition (Kafka's batch.size); "
                                               "at most the broker's message.max.bytes")
    max_message_bytes: int = doc(1_000_000, "largest record (key, value, headers, uncompressed); a larger event "
                                            "is cut or dropped per `oversize`")
    oversize: Oversize = doc(Oversize.TRUNCATE, "an event over max_message_bytes: 'truncate' (message cut, "
                                                "flagged 'truncated') or 'drop'; counted either way")
    request_timeout_secs: float = doc(30.0, "longest wait for a broker's answer, and for a record to be "
                                            "acknowledged before its send is retried")
    metadata_max_age_secs: float = doc(300.0, "refresh the cluster's metadata (new partitions, leaders) this often")
    enable_idempotence: bool = doc(False, "idempotent producer: no duplicates from the producer's own retries "
                                          "(needs a broker that grants producer ids)")
    client_id: str = doc("shipper", "client id the brokers see")
    max_in_flight: int = doc(2, "requests sent and not yet answered (each spans many partitions); 1 keeps the "
                                "order per container across retries")
    batch_max_events: int = doc(1024, "most events in one request (records are never split)")
    tls: bool = doc(False, "connect with TLS (the tls_* keys apply)")
    tls_ca: str = doc("", "CA bundle that signed the brokers' certificates (default: system roots)")
    tls_cert: str = doc("", "client certificate, for brokers that require mutual TLS")
    tls_key: str = doc("", "the client certificate's private key")
    tls_verify_hostname: bool = doc(True, "check the certificate names the broker (the chain is always checked)")
    tls_min_version: str = doc("1.2", "oldest TLS version allowed: '1.2' or '1.3'")
    sasl_mechanism: SaslMechanism = doc(SaslMechanism.NONE, "none, PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str = doc("", "SASL user name")
    sasl_password_file: str = doc("", "file holding the SASL password (read at start, never shown)")
    sasl_password_env: str = doc("", "environment variable holding the SASL password (read at start)")
    sasl_allow_plaintext: bool = doc(False, "allow SASL PLAIN without TLS (the password crosses the network "
                                            "in clear)")

    def validate(self, key: str) -> None:
        super().validate(key)
        if not self.brokers:
            raise ConfigError(f"{key}.brokers", "needs at least one host:port")
        for i, b in enumerate(self.brokers):
            m = _BROKER.match(b)
            if m is None or not 0 < int(m.group(2)) < 65536:
                raise ConfigError(f"{key}.brokers[{i}]", f"{b!r} is not host:port")
        for name in ("topic", "key"):
            with naming(f"{key}.{name}"):
                Template(getattr(self, name))
        if Template(self.topic).constant:
            with naming(f"{key}.topic"):
                check_topic(self.topic)
        with naming(f"{key}.default_topic"):
            check_topic(self.default_topic)
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= self.producer_batch_bytes:
            raise ConfigError(f"{key}.max_message_bytes",
                              f"must be between {MIN_MESSAGE_BYTES} and producer_batch_bytes "
                              f"({self.producer_batch_bytes})")
        if not MIN_MESSAGE_BYTES <= self.producer_batch_bytes <= MAX_BATCH_BYTES:
            raise ConfigError(f"{key}.producer_batch_bytes", f"must be between {MIN_MESSAGE_BYTES} and "
                                                             f"{MAX_BATCH_BYTES}")
        for name in ("request_timeout_secs", "metadata_max_age_secs"):
            if not 0 < getattr(self, name) <= 86400:
                raise ConfigError(f"{key}.{name}", "must be positive (at most a day)")
        if self.enable_idempotence and self.acks is not Acks.ALL:
            raise ConfigError(f"{key}.enable_idempotence", "needs acks = 'all'")
        self._validate_tls(key)
        self._validate_sasl(key)

    def _validate_tls(self, key: str) -> None:
        if self.tls_min_version not in TLS_VERSIONS:
            raise ConfigError(f"{key}.tls_min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
        check_tls_keys(key, self, self.tls, "tls = false: set tls = true, or remove it")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{key}.{name}", f"no such file: {path}")

    def _validate_sasl(self, key: str) -> None:
        sasl = self.sasl_mechanism is not SaslMechanism.NONE
        given = [n for n in ("sasl_username", "sasl_password_file", "sasl_password_env") if getattr(self, n)]
        if not sasl:
            if given:
                raise ConfigError(f"{key}.{given[0]}", "is set but sasl_mechanism = 'none'")
            return
        if not self.sasl_username:
            raise ConfigError(f"{key}.sasl_username", f"{self.sasl_mechanism.value} needs a user name")
        if bool(self.sasl_password_file) == bool(self.sasl_password_env):
            raise ConfigError(f"{key}.sasl_password_file",
                              "set exactly one of sasl_password_file and sasl_password_env")
        if self.sasl_mechanism is SaslMechanism.PLAIN and not self.tls and not self.sasl_allow_plaintext:
            raise ConfigError(f"{key}.sasl_mechanism", "PLAIN without TLS sends the password in clear: set "
                                                       "tls = true (or sasl_allow_plaintext = true)")
        try:
            self.sasl_password()
        except ValueError as e:
            raise ConfigError(f"{key}.{'sasl_password_file' if self.sasl_password_file else 'sasl_password_env'}",
                              str(e)) from None

    def sasl_password(self) -> str:
        """The password, read now; ValueError (naming where it was looked for, never its value) when absent."""
        if self.sasl_password_file:
            try:
                with open(self.sasl_password_file, encoding="utf-8") as f:
                    text = f.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read {self.sasl_password_file}: {type(e).__name__}") from None
            where = self.sasl_password_file
        else:
            text = os.environ.get(self.sasl_password_env, "")
            where = f"${self.sasl_password_env}"
        if not text:
            raise ValueError(f"the SASL password in {where} is empty or missing")
        return text

    def tls_config(self) -> TlsClientConfig:
        return TlsClientConfig(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key,
                               verify_hostname=self.tls_verify_hostname, min_version=self.tls_min_version)

    def encoder_options(self, host_name: str = "") -> EncoderOptions:
        return EncoderOptions(topic=self.topic, default_topic=self.default_topic, key=self.key, value=self.value,
                              max_message_bytes=self.max_message_bytes, oversize=self.oversize,
                              host_name=host_name)
