"""The [admin] section: where the admin HTTP server (/metrics, /health, /ready, /status, the status page)
listens, and how it is protected.

Loopback by default. Any other address must be served over TLS (`tls_cert` + `tls_key`) or be explicitly
declared plain (`allow_insecure = true`): a config that would expose the status page unencrypted by accident
is refused at start, naming the key. A bearer token, when set, is required for everything but /health (a
load balancer or orchestrator probes /health without credentials).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from shipper.errors import ConfigError
from shipper.schema import doc

DEFAULT_ADDRESS = "127.0.0.1:9125"
ADMIN_RETRY_SECS = 30.0  # an admin address in use is tried again this often


def split_address(address: str, key: str = "admin.address") -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ConfigError naming `key` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be host:port (e.g. {DEFAULT_ADDRESS}), or \"\" to turn the server off; "
                               f"got {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ConfigError(key, f"needs a host: 0.0.0.0:{port} for every interface, 127.0.0.1:{port} for this "
                               f"machine only")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminConfig:
    address: str = doc(DEFAULT_ADDRESS, "host:port of the admin HTTP server (/metrics, /health, /status, the "
                                        "status page); \"\" turns it off")
    tls_cert: str = doc("", "serve the admin server over TLS with this certificate (PEM)")
    tls_key: str = doc("", "the private key of tls_cert")
    allow_insecure: bool = doc(False, "allow plain HTTP on an address that is not loopback")
    token_file: str = doc("", "a file holding a bearer token required for everything but /health")
    token_env: str = doc("", "an environment variable holding that token (token_file wins)")

    def validate(self, key: str) -> None:
        prefix = f"{key}." if key else ""
        if not self.address:
            return
        host, _ = split_address(self.address, f"{prefix}address")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ConfigError(f"{prefix}{missing}", "tls_cert and tls_key go together")
        if not is_loopback(host) and not self.tls_cert and not self.allow_insecure:
            raise ConfigError(f"{prefix}address", f"{self.address} is reachable from other machines: set "
                                                  f"tls_cert and tls_key, or allow_insecure = true to serve "
                                                  f"plain HTTP there")
        for name in ("tls_cert", "tls_key", "token_file"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{prefix}{name}", f"cannot read {path}")
        if self.token_env and not self.token_file and not os.environ.get(self.token_env):
            raise ConfigError(f"{prefix}token_env", f"${self.token_env} is not set or empty: the admin server "
                                                    f"would run without the token it was meant to require")

    def token(self) -> str:
        """The bearer token, or "" when none is configured. An empty token file is an error (fail closed)."""
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as f:
                text = f.read().strip()
            if not text:
                raise ConfigError("admin.token_file", f"{self.token_file} is empty")
            return text
        if self.token_env:
            text = os.environ.get(self.token_env, "").strip()
            if not text:
                raise ConfigError("admin.token_env", f"${self.token_env} is not set or empty")
            return text
        return ""
