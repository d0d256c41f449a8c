"""The command line's way to the running daemon's admin server, shared by `shipper status` and `shipper reload`.

The daemon is found through the config's [admin] section (address, TLS, token), so a command needs the same
config file as the daemon. An address bound to every interface (0.0.0.0, ::) is reached on loopback. With TLS
the daemon's own certificate (`tls_cert`) is the trust anchor: a server showing another is refused, as is a
token the server does not accept (fail closed: nothing is sent in plain text to a TLS address).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import orjson

from shipper.telemetry.config import AdminConfig, split_address


class NotRunning(Exception):
    """The admin server did not answer: the daemon is not running, or not at that address."""


class NoAnswer(NotRunning):
    """The admin server took the request but gave no answer in time."""


class TokenRefused(NotRunning):
    """The admin server answered 401: the token in the config is not the daemon's."""


def admin_url(cfg: AdminConfig, path: str) -> str:
    host, port = split_address(cfg.address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if cfg.tls_cert else 'http'}://{host}:{port}{path}"


def client_tls(cfg: AdminConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls_cert)  # the daemon's own certificate, pinned
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a CA-issued leaf is its own anchor here
    ctx.check_hostname = False  # the address may be 0.0.0.0; the pinned certificate is what is checked
    return ctx


def call(cfg: AdminConfig, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of any answer the admin server gives, errors included ({} for a body that is
    not a JSON object). NotRunning when nothing answers there (NoAnswer: connected, but no answer within
    `timeout`); TokenRefused on 401; ConfigError when the configured token cannot be read."""
    url = admin_url(cfg, path)
    headers = {"Accept": "application/json"}
    token = cfg.token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, headers=headers, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=client_tls(cfg)) as resp:
            return resp.status, _doc(resp.read())
    except TimeoutError:
        raise NoAnswer(f"{url} did not answer within {timeout:.0f}s") from None
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise TokenRefused(f"{url} refused the token (401): check [admin] token_file / token_env") from None
        return e.code, _doc(e.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise NotRunning(f"the daemon is not running, or its admin server is not at {url} ([admin] address in "
                         f"the config): {reason}") from None


def _doc(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
