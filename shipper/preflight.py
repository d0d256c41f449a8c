"""What `shipper check` verifies beyond the config's shape, and what `shipper run` verifies before it starts.

`preflight(cfg)` (no network): the state dir can be created and written, the Engine API endpoint is
resolved (its TLS files loaded), discovery = 'files' can list Docker's containers, host.name_file reads,
the admin server's certificate loads, every sink can be built and its TLS files load, the file sink's
folder can be written. A config that passes has nothing left that makes `run` fail at start; `run` calls
the same function first and exits 2 with the message instead of retrying forever. `connect(cfg)` (`check
--connect`, like `filebeat test output`): asks dockerd for its version and name, and starts and
health-checks every sink once, each with a verdict. Each problem is a ConfigError naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shipper.config import Config, Discovery
from shipper.errors import ConfigError
from shipper.sinks import sink_class
from shipper.sinks.base import SinkBase, SinkContext
from shipper.telemetry.metrics import Metrics
from shipper.tls import TlsClientConfig, TlsFileError, client_context

CONNECT_TIMEOUT_SECS = 15.0
STATE_DIR_MODE = 0o700  # offsets, spool and the file sink's default output: owner only, as Docker's own logs


def may(path: str | os.PathLike[str], mode: int) -> bool:
    """os.access by the effective ids and capabilities (AT_EACCESS): a non-root user holding CAP_DAC_READ_SEARCH
    (the container image's) may read what plain access(), which asks for the real ids without capabilities,
    says it may not."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: Path, key: str) -> None:
    """`path` is a folder shipper can write (a file is created in it and removed), or can be created."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(key, f"{path} is not a folder")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".shipper-check-", dir=path)
        except OSError as e:
            raise ConfigError(key, f"{path} is not writable: {e.strerror or e}") from None
        os.close(fd)
        os.unlink(tmp)
        return
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise ConfigError(key, f"{path} cannot be created: {parent} is not a folder")
    if not may(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{path} cannot be created: {parent} is not writable "
                               f"({os.strerror(errno.EACCES).lower()})")
    try:  # a read-only file system passes access() for root: try it
        fd, tmp = tempfile.mkstemp(prefix=".shipper-check-", dir=parent)
    except OSError as e:
        raise ConfigError(key, f"{path} cannot be created in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def make_state_dir(path: Path) -> None:
    """The state dir, created owner-only (0700) with its missing parents; one that exists is left as it is."""
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)


def _check_docker(cfg: Config) -> None:
    if cfg.docker.discovery is Discovery.API:
        from shipper.docker.client import endpoint_from_config

        endpoint_from_config(cfg.docker)  # ports, TLS settings, TLS files loaded: ConfigError naming the key
        return
    containers = Path(cfg.docker.data_root) / "containers"
    if not may(containers, os.R_OK | os.X_OK):
        why = "no such folder" if not containers.exists() else "not readable by this user"
        raise ConfigError("docker.data_root", f"discovery = 'files' lists {containers}: {why} (mount Docker's "
                                              f"data root read-only there, or set docker.data_root)")


def _check_admin(cfg: Config) -> None:
    """The admin server's certificate loads and its token reads (its own validate checks the rest)."""
    admin = getattr(cfg, "admin", None)
    if admin is None or not getattr(admin, "address", ""):
        return
    cert, key = str(getattr(admin, "tls_cert", "") or ""), str(getattr(admin, "tls_key", "") or "")
    if cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("admin.tls_cert", f"cannot load the admin server's certificate {cert!r} / key "
                                                f"{key!r}: {e}") from None
    token = getattr(admin, "token", None)
    if callable(token):
        try:
            token()
        except OSError as e:
            raise ConfigError("admin.token_file", f"cannot read {getattr(admin, 'token_file', '')}: "
                                                  f"{e.strerror or e}") from None


def _tls_fields(sc: Any, key: str) -> list[tuple[str, str, str, str]]:
    """(key prefix, ca, cert, key) for every TLS setting a sink's config holds: `tls_ca`/`tls_cert`/`tls_key`
    keys, or an embedded TlsClientConfig; found by name, so a sink declares nothing for this check."""
    found = []
    ca, cert, pkey = (str(getattr(sc, f"tls_{n}", "") or "") for n in ("ca", "cert", "key"))
    if ca or cert:
        found.append((f"{key}.tls_", ca, cert, pkey))
    for f in dataclasses.fields(sc):
        value = getattr(sc, f.name)
        if isinstance(value, TlsClientConfig) and (value.ca or value.cert):
            found.append((f"{key}.{f.name}.", value.ca, value.cert, value.key))
    return found


def check_sink(name: str, sc: SinkBase, cfg: Config, host: str) -> None:
    key = f"sinks.{name}"
    for prefix, ca, cert, pkey in _tls_fields(sc, key):
        try:
            client_context(ca, cert, pkey)
        except TlsFileError as e:
            raise ConfigError(f"{prefix}{e.field}", str(e)) from None
    try:
        sink = sink_class(sc.type, f"{key}.type")(sc, SinkContext(name, cfg.state.path, host, Metrics()))
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise ConfigError(key, f"cannot be set up: {e}") from None
    hook = getattr(sink, "preflight", None)  # a sink may check more (optional, no network)
    if callable(hook):
        try:
            hook()
        except ConfigError:
            raise
        except (ValueError, OSError) as e:
            raise ConfigError(key, str(e)) from None
    if sc.type == "file":
        path = Path(getattr(sc, "path", "") or cfg.state.path / "events.jsonl")
        if path.exists() and not path.is_dir():
            if not may(path, os.W_OK):
                raise ConfigError(f"{key}.path", f"{path} is not writable by this user")
        else:
            check_writable_dir(path.parent, f"{key}.path")


def preflight(cfg: Config) -> list[ConfigError]:
    """Everything `run` would trip on at start, without touching the network; [] when all is well."""
    problems: list[ConfigError] = []

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ConfigError as e:
            problems.append(e)
            return None

    attempt(check_writable_dir, cfg.state.path, "state.dir")
    attempt(_check_docker, cfg)
    attempt(_check_admin, cfg)
    host = attempt(lambda: cfg.host.resolved_name) or "localhost"
    for name, sc in cfg.sinks.items():
        attempt(check_sink, name, sc, cfg, host)
    return problems


# --- check --connect --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    target: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.target}: {'ok' if self.ok else 'FAILED'}: {self.detail}"


def _refused(cert: str, alert: str) -> str:
    which = f"tls_cert={cert}" if cert else "none was presented: set tls_cert and tls_key"
    return f"refused shipper's client certificate ({which}): {alert}"


def _why(e: BaseException, cert: str | None = None) -> str:
    from shipper.docker.client import CERT_REFUSED_ALERTS, cert_refused_alert

    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    said = text.upper().replace(" ", "_")  # a sink may say the TLS error in its message, with no cause kept
    alert = cert_refused_alert(e) or next((a for a in CERT_REFUSED_ALERTS if a in said), "")
    if alert:
        text += f" (the other side {_refused(cert, alert)})" if cert is not None else \
            f" (the other side refused shipper's client certificate: {alert})"
    return text


async def _docker_verdict(cfg: Config) -> Verdict:
    if cfg.docker.discovery is Discovery.FILES:
        root = Path(cfg.docker.data_root) / "containers"
        try:
            n = sum(1 for p in root.iterdir() if (p / "config.v2.json").exists())
        except OSError as e:
            return Verdict(f"docker (files {root})", False, e.strerror or str(e))
        return Verdict(f"docker (files {root})", True, f"{n} containers")
    from shipper.docker.client import DockerClient, endpoint_from_config

    target = f"docker ({cfg.docker.resolved_host()})"
    try:
        client = DockerClient(endpoint_from_config(cfg.docker))
    except ConfigError as e:
        return Verdict(target, False, str(e))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECS):
            v = await client.version()
            info = await client._json("GET", "/info", versioned=False)  # the client has no info()
        name = info.get("Name", "?") if isinstance(info, dict) else "?"
        return Verdict(target, True, f"Docker {v.get('Version', '?')} (API {v.get('ApiVersion', '?')}) "
                                     f"on host {name}")
    except Exception as e:
        if isinstance(e, TimeoutError):
            return Verdict(target, False, f"no answer in {CONNECT_TIMEOUT_SECS:.0f}s")
        return Verdict(target, False, _why(e))
    finally:
        await client.close()


_TLS_SCHEMES = ("tls", "relp+tls", "https", "ssl", "sasl_ssl")
PROBE_READ_SECS = 1.0  # how long a TLS probe waits for the server to refuse the certificate after the handshake


def _tls_targets(sc: Any) -> list[tuple[str, int]]:
    """(host, port) of every address a sink's config names that is reached over TLS: a tls-like scheme, or any
    address when its `tls` key is true. Found by the usual key names (address, brokers, hosts), so a sink
    declares nothing for `check --connect` to probe it."""
    targets = []
    for field in ("address", "addresses", "brokers", "hosts"):
        value = getattr(sc, field, None)
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            scheme, sep, rest = str(text).rpartition("://") if "://" in str(text) else ("", "", str(text))
            if not (scheme.lower() in _TLS_SCHEMES or (getattr(sc, "tls", False) is True and sep == "")):
                continue
            u = urlsplit(f"x://{rest}")
            with contextlib.suppress(ValueError):
                if u.hostname and u.port:
                    targets.append((u.hostname, u.port))
    return targets


async def _tls_probe(sc: Any) -> str:
    """'' when every TLS address of the sink keeps the connection after the handshake; else what it said.
    With TLS 1.3 a server checks the client certificate after the client thinks the handshake is done, so a
    refused (or missing) certificate only shows as an alert on the first read: the sink's own health check,
    which connects and sends nothing, would call the server reachable."""
    targets = _tls_targets(sc)
    if not targets:
        return ""
    ca, cert, key = (str(getattr(sc, f"tls_{n}", "") or "") for n in ("ca", "cert", "key"))
    verify_name = bool(getattr(sc, "tls_verify_hostname", True))
    server_name = str(getattr(sc, "tls_server_name", "") or "")
    ctx = client_context(ca, cert, key, verify_hostname=verify_name)
    for host, port in targets:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name or host), 10)
        except Exception as e:
            return f"{host}:{port}: {_why(e)}"
        try:
            await asyncio.wait_for(reader.read(1), PROBE_READ_SECS)
        except TimeoutError:
            pass
        except Exception as e:
            from shipper.docker.client import cert_refused_alert

            if cert_refused_alert(e):
                return f"{host}:{port} {_refused(cert, cert_refused_alert(e))}"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return ""


async def _sink_verdict(name: str, sc: SinkBase, cfg: Config, host: str) -> Verdict:
    target = f"sink {name} ({sc.type})"
    try:
        sink = sink_class(sc.type)(sc, SinkContext(name, cfg.state.path, host, Metrics()))
    except Exception as e:
        return Verdict(target, False, _why(e))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECS):
            await sink.start()
            await sink.healthcheck()
            refused = await _tls_probe(sc)
        if refused:
            return Verdict(target, False, refused)
        return Verdict(target, True, "started and answered its health check")
    except TimeoutError:
        return Verdict(target, False, f"no answer in {CONNECT_TIMEOUT_SECS:.0f}s")
    except Exception as e:
        return Verdict(target, False, _why(e, str(getattr(sc, "tls_cert", "") or "")))
    finally:
        with contextlib.suppress(Exception):  # closing a sink that never started may fail: the verdict stands
            await sink.close()


async def connect(cfg: Config) -> list[Verdict]:
    """Try Docker and every sink once, at the same time; a verdict each."""
    try:
        host = cfg.host.resolved_name
    except ConfigError:
        host = "localhost"
    jobs = [_docker_verdict(cfg), *(_sink_verdict(n, sc, cfg, host) for n, sc in cfg.sinks.items())]
    return list(await asyncio.gather(*jobs))
