"""The Logstash sink's keys: a frozen config checked at load, every mistake naming its key, and the hosts it
names parsed once."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shipper.errors import ConfigError
from shipper.schema import doc, parse_each
from shipper.sinks.base import SinkBase
from shipper.tls import TLS_VERSIONS, TlsClientConfig, TlsVersion, check_tls_keys


class Protocol(enum.Enum):
    BEATS = "beats"  # Lumberjack v2: Logstash's beats input, acknowledged per window
    JSON_LINES = "json_lines"  # Logstash's tcp input, codec json_lines: no acknowledgement of its own
    HTTP = "http"  # Logstash's http input: a response per request


# Logstash's beats input listens on 5044 by convention; its http input defaults to 8080; its tcp input has
# no default, 5000 is what its documentation's examples use.
DEFAULT_PORTS = {Protocol.BEATS: 5044, Protocol.JSON_LINES: 5000, Protocol.HTTP: 8080}
MAX_WINDOW_EVENTS = 1 << 20
MAX_RETRY_AFTER_SECS = 3600.0


@dataclass(frozen=True)
class Host:
    """One Logstash endpoint: host and port, and for http the URL to post to."""

    host: str
    port: int
    url: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host(text: str, protocol: Protocol, tls: bool, path: str = "/") -> Host:
    """`host:port` (port optional), `[v6]:port`; for http also `http://…` or `https://…` URLs."""
    has_scheme = "://" in text
    if has_scheme and protocol is not Protocol.HTTP:
        raise ValueError(f"give host:port, not a URL ({text!r}); a URL is for protocol = \"http\" only")
    try:
        parts = urlsplit(text if has_scheme else f"//{text}")
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a host: {text!r} ({e})") from None
    if not parts.hostname:
        raise ValueError(f"no host in {text!r}")
    if parts.query or parts.fragment or (not has_scheme and parts.path):
        raise ValueError(f"unexpected path, '?' or '#' in {text!r}")
    port = port or DEFAULT_PORTS[protocol]
    if protocol is not Protocol.HTTP:
        return Host(parts.hostname, port)
    scheme = parts.scheme.lower() if has_scheme else ("https" if tls else "http")
    if scheme not in ("http", "https"):
        raise ValueError(f"must be http:// or https://, got {text!r}")
    if scheme == "http" and tls:
        raise ValueError(f"tls = true but {text!r} is http://")
    netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Host(parts.hostname, port, f"{scheme}://{netloc}:{port}{parts.path or path}")


@dataclass(frozen=True)
class LogstashConfig(SinkBase):
    protocol: Protocol = doc(Protocol.BEATS, "'beats' (Lumberjack v2, acknowledged), 'json_lines' (tcp input, "
                                             "codec json_lines) or 'http' (http input, NDJSON)")
    hosts: list[str] = doc(["localhost:5044"], "host:port of every Logstash (http: also http(s):// URLs); "
                                               "ports default to 5044 beats, 5000 json_lines, 8080 http")
    loadbalance: bool = doc(False, "spread windows over every healthy host; false: one host at a time, in "
                                   "order, failing over to the next")
    compression_level: int = doc(3, "beats: zlib level of each window's compressed frame, 0 (plain JSON frames) "
                                    "to 9; http: gzip level when gzip = true")
    window_max_events: int = doc(2048, "beats: most events in one window (Filebeat's bulk_max_size)")
    slow_start: bool = doc(False, "beats: start each host's window at 10 events and grow it, instead of at "
                                  "window_max_events")
    pipelining: int = doc(2, "beats: windows sent on one connection ahead of their ACKs (0 waits for each ACK "
                             "before the next window, like 1)")
    timeout_secs: float = doc(30.0, "beats: longest wait for any ACK (keep-alives count) while a window is "
                                    "out; json_lines: for the receiver's TCP to acknowledge anything; http: "
                                    "for a response")
    connect_timeout_secs: float = doc(10.0, "longest wait to connect (TLS handshake included)")
    backoff_init_secs: float = doc(1.0, "first wait before a failed host is tried again while others work")
    backoff_max_secs: float = doc(60.0, "longest wait before a failed host is tried again")
    tls: bool = doc(False, "connect with TLS (http: https:// URLs also turn it on)")
    tls_ca: str = doc("", "CA bundle that signed Logstash's certificate (default: the system's roots)")
    tls_cert: str = doc("", "client certificate, for an input with ssl_client_authentication = required")
    tls_key: str = doc("", "the client certificate's private key")
    tls_verify_hostname: bool = doc(True, "check that the certificate names the host (the chain is always "
                                          "checked)")
    tls_server_name: str = doc("", "name to send (SNI) and check, when it differs from the host")
    tls_min_version: TlsVersion = doc(TlsVersion.V1_2, "oldest TLS version allowed: '1.2' or '1.3'")
    path: str = doc("/", "http: the path posted to, for hosts given as host:port")
    user: str = doc("", "http: basic auth user")
    password: str = field(default="", repr=False, metadata={
        "doc": "http: basic auth password (prefer password_file, or ${ENV_VAR}); never logged"})
    password_file: str = doc("", "http: file holding the basic auth password (its first line)")
    headers: dict[str, str] = doc({}, "http: headers added to every request")
    gzip: bool = doc(False, "http: gzip each request's body (Content-Encoding: gzip)")
    retry_after_max_secs: float = doc(300.0, "http: longest Retry-After honoured (a 429 or 503 saying longer "
                                             "waits this long)")
    beat: str = doc("filebeat", "@metadata.beat, what a Filebeat pipeline's index name is built from")
    beat_version: str = doc("8.15.0", "@metadata.version (a Filebeat pipeline's index names use it)")
    labels_dedot: bool = doc(True, "write label keys with '_' for '.', as Filebeat's docker input does "
                                   "(com_docker_compose_project)")

    def validate(self, key: str) -> None:
        super().validate(key)
        if not self.hosts:
            raise ConfigError(f"{key}.hosts", "needs at least one host")
        parse_each(f"{key}.hosts", self.hosts, self._parse_host)
        if not 0 <= self.compression_level <= 9:
            raise ConfigError(f"{key}.compression_level", "must be between 0 and 9")
        if not 1 <= self.window_max_events <= MAX_WINDOW_EVENTS:
            raise ConfigError(f"{key}.window_max_events", f"must be between 1 and {MAX_WINDOW_EVENTS}")
        if not 0 <= self.pipelining <= 64:
            raise ConfigError(f"{key}.pipelining", "must be between 0 and 64")
        for name in ("timeout_secs", "connect_timeout_secs", "backoff_init_secs", "backoff_max_secs"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{key}.{name}", "must be positive")
        if self.backoff_init_secs > self.backoff_max_secs:
            raise ConfigError(f"{key}.backoff_init_secs", "must be at most backoff_max_secs")
        if not 0 <= self.retry_after_max_secs <= MAX_RETRY_AFTER_SECS:
            raise ConfigError(f"{key}.retry_after_max_secs", f"must be between 0 and {MAX_RETRY_AFTER_SECS:g}")
        check_tls_keys(key, self, self.uses_tls, "tls is off (tls = true, or https:// hosts)")
        if self.protocol is not Protocol.HTTP:
            for name in ("user", "password", "password_file", "headers", "gzip"):
                if getattr(self, name):
                    raise ConfigError(f"{key}.{name}", 'is for protocol = "http" only')
        if self.password and self.password_file:
            raise ConfigError(f"{key}.password_file", "give password or password_file, not both")
        if (self.password or self.password_file) and not self.user:
            raise ConfigError(f"{key}.user", "a password needs a user")
        for name in self.headers:
            if not name or any(c in name for c in ":\r\n ") or any(c in self.headers[name] for c in "\r\n"):
                raise ConfigError(f"{key}.headers.{name}", "not a valid header name or value")
        if not self.beat:
            raise ConfigError(f"{key}.beat", "must not be empty")

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(h.strip().lower().startswith("https://") for h in self.hosts)

    def host_list(self, only: int | None = None) -> list[Host]:
        texts = self.hosts if only is None else [self.hosts[only]]
        return [self._parse_host(t) for t in texts]

    def _parse_host(self, text: str) -> Host:
        return parse_host(text.strip(), self.protocol, self.tls, self.path)

    def tls_config(self) -> TlsClientConfig:
        assert self.tls_min_version.value in TLS_VERSIONS
        return TlsClientConfig(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key,
                               verify_hostname=self.tls_verify_hostname, server_name=self.tls_server_name,
                               min_version=self.tls_min_version.value)

    def read_password(self) -> str:
        """The basic auth password: `password`, else the first line of `password_file` (read at start, so a
        rotated secret is picked up by a restart or reload)."""
        if self.password_file:
            with open(self.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        return self.password
