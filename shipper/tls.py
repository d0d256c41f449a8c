"""TLS client contexts: one way to build them for every connection shipper makes (syslog, the Engine API).

The server's chain is always checked (CERT_REQUIRED), against the configured CA bundle or else the system's
roots; only the Docker client may turn that off, because `docker.tls_verify = false` (the docker CLI's
--tls without --tlsverify) asks for exactly that. Checking the host name is separate: a receiver known by
IP with a certificate that does not name it can keep the chain check and drop the name check.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from typing import Literal, Protocol

from shipper.errors import ConfigError

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsVersion(enum.Enum):
    """The oldest TLS version a sink allows (its tls_min_version key): one of TLS_VERSIONS."""

    V1_2 = "1.2"
    V1_3 = "1.3"


class TlsFileError(ValueError):
    """A CA bundle, certificate or key that cannot be loaded; `field` says which: 'ca' or 'cert' (with key)."""

    def __init__(self, field: Literal["ca", "cert"], message: str) -> None:
        super().__init__(message)
        self.field = field


def client_context(ca: str = "", cert: str = "", key: str = "", *, verify_hostname: bool = True,
                   min_version: str = "1.2", verify: bool = True) -> ssl.SSLContext:
    """A client context trusting `ca` (else the system's roots), presenting `cert`/`key` when given.

    `verify=False` accepts any server certificate (no chain, no name check): for Docker's tls_verify only.
    Raises TlsFileError for a file that cannot be loaded, ValueError for an unknown `min_version`.
    """
    if min_version not in TLS_VERSIONS:
        raise ValueError(f"unknown TLS version {min_version!r} (one of {', '.join(TLS_VERSIONS)})")
    try:
        ctx = ssl.create_default_context(cafile=ca or None)  # CERT_REQUIRED and check_hostname set
    except (OSError, ssl.SSLError) as e:
        raise TlsFileError("ca", f"cannot load CA certificate {ca!r}: {e}") from e
    ctx.minimum_version = TLS_VERSIONS[min_version]
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise TlsFileError("cert", f"cannot load client certificate {cert!r} / key {key!r}: {e}") from e
    if not verify:
        ctx.check_hostname = False  # before verify_mode: CERT_NONE is refused while names are checked
        ctx.verify_mode = ssl.CERT_NONE
    elif not verify_hostname:
        ctx.check_hostname = False
    return ctx


@dataclass(frozen=True)
class TlsClientConfig:
    """What a network sink needs for TLS; embed it in a sink's config and call `context()` at start."""

    ca: str = ""  # CA bundle that signed the server's certificate; empty: the system's roots
    cert: str = ""  # client certificate, for servers that require mutual TLS
    key: str = ""  # its private key (empty: in the certificate file)
    verify_hostname: bool = True  # the certificate must name the host (the chain is checked regardless)
    server_name: str = ""  # name to send (SNI) and check when it differs from the host connected to
    min_version: str = "1.2"  # oldest TLS version allowed: "1.2" or "1.3"

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key, verify_hostname=self.verify_hostname,
                              min_version=self.min_version)

    def hostname(self, host: str) -> str:
        """The name to send and check when connecting to `host`."""
        return self.server_name or host


class TlsKeys(Protocol):
    """The tls_* keys every network sink's config has (some add tls_server_name)."""

    @property
    def tls_ca(self) -> str: ...
    @property
    def tls_cert(self) -> str: ...
    @property
    def tls_key(self) -> str: ...


def check_tls_keys(key: str, table: TlsKeys, tls_on: bool, off: str) -> None:
    """A sink's tls_* keys taken together: tls_cert and tls_key go together, and tls_ca, tls_cert and
    tls_server_name are refused while TLS is off (a key that does nothing is a mistake); `off` says why it is,
    following 'is set but'."""
    if bool(table.tls_cert) != bool(table.tls_key):
        raise ConfigError(f"{key}.tls_key" if table.tls_cert else f"{key}.tls_cert",
                          "tls_cert and tls_key go together")
    if not tls_on:
        for name in ("tls_ca", "tls_cert", "tls_server_name"):
            if getattr(table, name, ""):
                raise ConfigError(f"{key}.{name}", f"is set but {off}")
