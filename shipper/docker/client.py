"""A small Docker Engine API client on aiohttp: the few calls a log shipper needs, with errors it can act on.

Every failure to reach the daemon (socket missing, refused, reset, stream cut) becomes `DockerUnavailable`,
which callers retry; an HTTP error becomes `DockerError` carrying the daemon's own message, and a 404 on a
container becomes `ContainerGone`.

API version: negotiated once per connection from `GET /version`, as the docker CLI does: the daemon's
ApiVersion capped at the newest version this client was written against. A fixed version would break both
ways: daemons from Engine 29 on refuse anything below 1.44, and old daemons refuse newer versions. The few
endpoints used here have only grown fields since 1.24, the floor. After a connection failure the version is
asked again, since dockerd may have been upgraded while it was down.

Streaming calls (events, follow logs) have no total or read timeout: a quiet container or a quiet host is
normal. Only connecting is bounded; a dead peer on a quiet stream is found by the caller's periodic `ping()`.

TLS fails closed, as the docker CLI does: with DOCKER_TLS_VERIFY set and DOCKER_CERT_PATH unset the files
are looked for in the CLI's own folder (~/.docker), and a file that is not there is a ConfigError naming the
key or variable, never a fallback to plain HTTP; so is any TLS setting that cannot be honoured (TLS asked
for over a unix socket, tls_verify = false with no TLS to apply it to). A daemon that refuses shipper's
client certificate (a TLS alert: bad certificate, certificate required, unknown CA...) raises
`ClientCertRefused`, so the caller can say exactly that rather than "unreachable".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from shipper.config import DockerConfig
from shipper.errors import ConfigError, ContainerGone, DockerError, DockerUnavailable
from shipper.telemetry.metrics import Metrics
from shipper.timefmt import unix_text
from shipper.tls import TlsFileError, client_context

log = logging.getLogger("shipper.docker")

MIN_API_VERSION = "1.24"
MAX_API_VERSION = "1.47"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=None)
MAX_EVENT_LINE = 1024 * 1024  # an event longer than this is not an event: the stream is broken

Filters = Mapping[str, list[str] | str]


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        raise DockerError(f"daemon reported an unreadable API version {v!r}") from None


def negotiate_version(server: str, server_min: str = "") -> str:
    """The version to speak: the daemon's, capped at ours; refused when the daemon is too old."""
    if _version_tuple(server) < _version_tuple(MIN_API_VERSION):
        raise DockerError(f"Docker API {server} is too old: shipper needs {MIN_API_VERSION} or newer")
    chosen = min(server, MAX_API_VERSION, key=_version_tuple)
    if server_min and _version_tuple(chosen) < _version_tuple(server_min):
        chosen = server_min  # a daemon newer than this client: speak its oldest supported version
    return chosen


def format_since(value: str | float | int | None) -> str | None:
    """`since`/`until` as dockerd reads them: Unix seconds (with an optional 9-digit fraction), RFC 3339."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:.9f}"


since_from_ns = unix_text  # `since`/`until` from ns: exact Unix seconds


def build_ssl_context(ca: str, cert: str, key: str, verify: bool,
                      names: dict[str, str] | None = None) -> ssl.SSLContext:
    """TLS as the docker CLI does it: our CA (or the system's), an optional client certificate;
    `verify=False` (docker.tls_verify) encrypts without checking the daemon's certificate at all.
    `names` maps 'ca'/'cert' to what an error names (a key, or the environment variable it came from)."""
    try:
        return client_context(ca, cert, key, verify=verify)
    except TlsFileError as e:
        raise ConfigError((names or {}).get(e.field, f"docker.tls_{e.field}"), str(e)) from None


@dataclass(frozen=True)
class TlsSettings:
    """The TLS a Docker endpoint is to use, resolved from the keys and Docker's environment variables."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True
    origin: str = ""  # "" (none asked for), "keys" (docker.tls_*), or the environment variable that asked
    cert_dir: str = ""  # the folder the files came from, when from the environment

    @property
    def wanted(self) -> bool:
        return bool(self.origin)

    def name_of(self, field: str) -> str:
        """What an error about `field` ('ca', 'cert', 'key') names: the key, or the variable behind it."""
        if self.origin == "keys":
            return f"docker.tls_{field}"
        return "DOCKER_CERT_PATH" if os.environ.get("DOCKER_CERT_PATH") else self.origin


def _cert_dir() -> str:
    return (os.environ.get("DOCKER_CERT_PATH") or os.environ.get("DOCKER_CONFIG")
            or os.path.join(os.path.expanduser("~"), ".docker"))


def tls_settings(cfg: DockerConfig) -> TlsSettings:
    """The keys win; then DOCKER_TLS_VERIFY (verify, files from DOCKER_CERT_PATH or ~/.docker, all three
    required, as the docker CLI reads them); then DOCKER_TLS (TLS without verifying the daemon, the CLI's
    --tls: a client certificate from the same folder when one is there)."""
    if cfg.tls_ca or cfg.tls_cert:
        ca, cert, key = cfg.resolved_tls()
        return TlsSettings(ca, cert, key, cfg.tls_verify, "keys")
    if os.environ.get("DOCKER_TLS_VERIFY"):
        ca, cert, key = cfg.resolved_tls()
        return TlsSettings(ca, cert, key, cfg.tls_verify, "DOCKER_TLS_VERIFY", _cert_dir())
    if os.environ.get("DOCKER_TLS"):
        d = _cert_dir()
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        if not (os.path.isfile(cert) and os.path.isfile(key)):
            cert = key = ""
        return TlsSettings("", cert, key, False, "DOCKER_TLS", d)
    return TlsSettings(verify=cfg.tls_verify)


def _check_tls_files(t: TlsSettings) -> None:
    """Every file asked for exists, or a ConfigError says which one and why it was asked for."""
    for field, path in (("ca", t.ca), ("cert", t.cert), ("key", t.key)):
        if not path or os.path.isfile(path):
            continue
        if t.origin == "keys":
            raise ConfigError(t.name_of(field), f"open {path}: no such file")
        where = (f"DOCKER_CERT_PATH={os.environ['DOCKER_CERT_PATH']}" if os.environ.get("DOCKER_CERT_PATH")
                 else f"DOCKER_CERT_PATH is unset, so the docker CLI's folder {t.cert_dir} is used")
        raise ConfigError(t.name_of(field),
                          f"{t.origin} is set, so the Engine API is reached over TLS with ca.pem, cert.pem and "
                          f"key.pem from {t.cert_dir} ({where}): open {path}: no such file. Put the files "
                          f"there, point DOCKER_CERT_PATH at them, or set docker.tls_ca, tls_cert and tls_key; "
                          f"shipper never falls back to plain HTTP")


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: a base URL, and a unix socket path when the transport is one."""

    base_url: str
    unix_path: str = ""
    ssl: ssl.SSLContext | None = None
    client_cert: str = ""  # the client certificate presented over TLS ("" for none), for messages


def endpoint_from_config(cfg: DockerConfig) -> Endpoint:
    """Where and how to connect. Raises ConfigError for whatever cannot be honoured: a TLS file that is not
    there, TLS over a unix socket, tls_verify = false with no TLS; never falls back to plain HTTP."""
    host = cfg.resolved_host()
    t = tls_settings(cfg)
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not path:
            raise ConfigError("docker.host", "unix:// needs a socket path")
        if t.wanted:
            raise ConfigError("docker.tls_ca" if t.origin == "keys" else t.origin,
                              f"TLS is asked for ({'docker.tls_*' if t.origin == 'keys' else t.origin}) but "
                              f"the Engine API is the unix socket {path}, which shipper reaches without TLS: "
                              f"point docker.host (or DOCKER_HOST) at the daemon's TLS port, or drop the TLS "
                              f"setting")
        return Endpoint("http://docker", unix_path=path)
    u = urlsplit(host)
    if u.scheme not in ("tcp", "http", "https") or not u.hostname:
        raise ConfigError("docker.host", f"cannot read {host!r} (unix:///path or tcp://host:port)")
    secure = u.scheme == "https" or t.wanted
    if not secure and not cfg.tls_verify:
        raise ConfigError("docker.tls_verify", f"false turns off checking the daemon's certificate on a TLS "
                                               f"connection, but {host} would be plain HTTP (no tls_ca, "
                                               f"tls_cert or DOCKER_TLS_VERIFY): for TLS without client "
                                               f"certificates write the host as https://HOST:PORT")
    port = u.port or (2376 if secure else 2375)  # Docker's conventional ports
    hostname = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    base = f"{'https' if secure else 'http'}://{hostname}:{port}"
    if not secure:
        return Endpoint(base)
    _check_tls_files(t)
    ctx = build_ssl_context(t.ca, t.cert, t.key, t.verify,
                            {"ca": t.name_of("ca"), "cert": t.name_of("cert")})
    return Endpoint(base, ssl=ctx, client_cert=t.cert)


def split_json_lines(buf: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Complete newline-terminated lines of `buf + chunk`, and the unfinished rest."""
    data = buf + chunk if buf else chunk
    end = data.rfind(b"\n")
    if end < 0:
        return [], data
    return [ln for ln in data[:end].split(b"\n") if ln.strip()], data[end + 1:]


def _unavailable(where: str, e: BaseException) -> DockerUnavailable:
    return DockerUnavailable(f"Docker API unreachable ({where}): {type(e).__name__}: {e}")


class ClientCertRefused(DockerUnavailable):
    """The daemon's TLS stack sent an alert about shipper's client certificate: it was never connected.
    Still retried (the daemon's CA or shipper's files may be fixed), but said for what it is."""

    def __init__(self, message: str, alert: str, cert: str) -> None:
        super().__init__(message)
        self.alert = alert  # e.g. "SSLV3_ALERT_BAD_CERTIFICATE"
        self.cert = cert  # the certificate presented ("" for none)


# Alerts a TLS server sends about the client's certificate (OpenSSL reasons, received from the peer). A
# failure to verify the *daemon's* certificate is local (SSLCertVerificationError) and not among them.
CERT_REFUSED_ALERTS = ("ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA",
                       "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED",
                       "ALERT_UNSUPPORTED_CERTIFICATE")


def cert_refused_alert(e: BaseException) -> str:
    """The alert, when `e` (or what caused it) is the peer refusing our certificate; "" otherwise."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ssl.SSLError):
            reason = str(getattr(x, "reason", "") or "")
            text = reason or str(x).upper().replace(" ", "_")
            for alert in CERT_REFUSED_ALERTS:
                if alert in text:
                    return reason or alert
        todo += [x.__cause__, x.__context__, getattr(x, "os_error", None)]
        todo += [a for a in getattr(x, "args", ()) if isinstance(a, BaseException)]
    return ""


class EventStream:
    """An open `/events` stream: subscribed once this object exists; iterate for one dict per event.

    Iteration ends when dockerd closes the stream (it restarts, or `until` passed); a cut connection raises
    `DockerUnavailable`. A line that is not JSON is skipped, counted and logged once.
    """

    def __init__(self, resp: aiohttp.ClientResponse, metrics: Metrics | None) -> None:
        self._resp = resp
        self._metrics = metrics
        self._warned = False
        date = resp.headers.get("Date")
        self.server_time: float | None = None  # the daemon's clock when subscribing (whole seconds)
        if date:
            try:
                self.server_time = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                self.server_time = None

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        buf = b""
        try:
            async for chunk in self._resp.content.iter_any():
                lines, buf = split_json_lines(buf, chunk)
                for line in lines:
                    try:
                        ev = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        self._invalid(line)
                        continue
                    if isinstance(ev, dict):
                        yield ev
                    else:
                        self._invalid(line)
                if len(buf) > MAX_EVENT_LINE:
                    raise DockerUnavailable(f"event stream sent {len(buf)} bytes without a newline")
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _unavailable("event stream", e) from e
        finally:
            self._resp.release()

    def _invalid(self, line: bytes) -> None:
        if self._metrics is not None:
            self._metrics.inc("shipper_docker_events_invalid_total")
        if not self._warned:
            self._warned = True
            log.warning("skipped an unreadable Docker event sample=%r (counted in "
                        "shipper_docker_events_invalid_total; logged once per stream)", line[:120])

    def close(self) -> None:
        self._resp.close()

    def abort(self, reason: str) -> None:
        """End the stream from outside: its reader gets DockerUnavailable (closing the session alone would
        leave it waiting forever for data that cannot come)."""
        self._resp.content.set_exception(ConnectionResetError(reason))
        self._resp.close()


class LogStream:
    """An open `/containers/{id}/logs` response: iterate for raw byte chunks of the stream as sent.

    Without a TTY the bytes are Docker's multiplexed frames (8-byte header: stream, 0, 0, 0, big-endian
    length); with a TTY they are the raw terminal output. Chunks do not respect frame boundaries.
    """

    def __init__(self, resp: aiohttp.ClientResponse, chunk_bytes: int) -> None:
        self._resp = resp
        self._chunk = chunk_bytes
        self.content_type = resp.headers.get("Content-Type", "")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(self._chunk):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _unavailable("log stream", e) from e
        finally:
            self._resp.release()

    def close(self) -> None:
        self._resp.close()

    def abort(self, reason: str) -> None:
        """As EventStream.abort."""
        self._resp.content.set_exception(ConnectionResetError(reason))
        self._resp.close()


class DockerClient:
    """One connection pool to one dockerd. Create it anywhere; the session opens on the first call."""

    def __init__(self, endpoint: Endpoint, *, metrics: Metrics | None = None, api_version: str = "") -> None:
        self.endpoint = endpoint
        self._metrics = metrics
        self._fixed_version = api_version
        self._prefix = f"/v{api_version}" if api_version else ""
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._streams: weakref.WeakSet[EventStream | LogStream] = weakref.WeakSet()  # open ones, for close()

    @classmethod
    def from_config(cls, cfg: DockerConfig, metrics: Metrics | None = None) -> DockerClient:
        return cls(endpoint_from_config(cfg), metrics=metrics)

    @property
    def api_version(self) -> str:
        """The negotiated version ("" before the first call)."""
        return self._prefix[2:]

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no pool limit: every followed log stream holds a connection for as long as its container runs
            connector: aiohttp.BaseConnector
            if self.endpoint.unix_path:
                connector = aiohttp.UnixConnector(path=self.endpoint.unix_path, limit=0)
            else:
                connector = aiohttp.TCPConnector(ssl=self.endpoint.ssl if self.endpoint.ssl else False, limit=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT)
        return self._session

    async def close(self) -> None:
        """Close the connections, and end every stream still open on them: their readers get
        DockerUnavailable and reconnect (through whichever client is current), instead of hanging on a
        connection that closing the session does not wake them from."""
        for stream in list(self._streams):
            stream.abort("the Docker API client was closed")
        self._streams.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _raw(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                   stream: bool = False) -> aiohttp.ClientResponse:
        url = self.endpoint.base_url + path
        try:
            return await self._get_session().request(
                method, url, params=params, timeout=STREAM_TIMEOUT if stream else REQUEST_TIMEOUT)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            if not self._fixed_version:
                self._prefix = ""  # ask again: dockerd may come back as another version
            alert = cert_refused_alert(e) if self.endpoint.ssl is not None else ""
            if alert:
                cert = self.endpoint.client_cert
                raise ClientCertRefused(f"the Docker daemon refused shipper's client certificate ({alert}; "
                                        f"docker.tls_cert={cert or '(none sent)'})", alert, cert) from e
            raise _unavailable(f"{method} {path}", e) from e

    async def _versioned(self) -> str:
        if self._prefix:
            return self._prefix
        async with self._lock:
            if not self._prefix:
                v = await self._json("GET", "/version", versioned=False)
                if not isinstance(v, dict) or not isinstance(v.get("ApiVersion"), str):
                    raise DockerError(f"GET /version: unexpected answer {v!r:.200}")
                self._prefix = "/v" + negotiate_version(v["ApiVersion"], str(v.get("MinAPIVersion") or ""))
                log.debug("Docker API version negotiated version=%s server=%s", self._prefix[2:],
                          v["ApiVersion"])
        return self._prefix

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       stream: bool = False, versioned: bool = True,
                       gone_on_404: bool = False) -> aiohttp.ClientResponse:
        prefix = await self._versioned() if versioned else ""
        resp = await self._raw(method, prefix + path, params=params, stream=stream)
        if resp.status < 400:
            return resp
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            body = b""
        finally:
            resp.release()
        message = body.decode("utf-8", "replace").strip()
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                message = parsed["message"]
        except orjson.JSONDecodeError:
            pass
        if resp.status == 404 and gone_on_404:
            raise ContainerGone(message or f"{path}: not found")
        raise DockerError(f"{method} {path}: HTTP {resp.status}: {message}")

    async def _json(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    versioned: bool = True, gone_on_404: bool = False) -> Any:
        resp = await self._request(method, path, params=params, versioned=versioned, gone_on_404=gone_on_404)
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _unavailable(f"{method} {path}", e) from e
        finally:
            resp.release()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise DockerError(f"{method} {path}: answer is not JSON: {body[:200]!r}") from None

    # --- the API ------------------------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when dockerd answers; raises DockerUnavailable when it cannot be reached."""
        resp = await self._request("GET", "/_ping", versioned=False)
        resp.release()
        return True

    async def version(self) -> dict[str, Any]:
        v = await self._json("GET", "/version", versioned=False)
        return v if isinstance(v, dict) else {}

    async def list_containers(self, all: bool = True, filters: Filters | None = None) -> list[dict[str, Any]]:
        params = {"all": "1" if all else "0"}
        if filters:
            params["filters"] = _filters(filters)
        out = await self._json("GET", "/containers/json", params=params)
        if not isinstance(out, list):
            raise DockerError(f"GET /containers/json: expected a list, got {type(out).__name__}")
        return out

    async def inspect(self, container_id: str) -> dict[str, Any]:
        """Raises ContainerGone when no such container exists (any more)."""
        out = await self._json("GET", f"/containers/{quote(container_id, safe='')}/json", gone_on_404=True)
        if not isinstance(out, dict):
            raise DockerError(f"inspect {container_id}: expected an object, got {type(out).__name__}")
        return out

    async def open_events(self, since: str | float | int | None = None,
                          until: str | float | int | None = None,
                          filters: Filters | None = None) -> EventStream:
        """Subscribe to `/events`; events that happen after this returns are delivered, none is missed."""
        params: dict[str, str] = {}
        if (s := format_since(since)) is not None:
            params["since"] = s
        if (u := format_since(until)) is not None:
            params["until"] = u
        if filters:
            params["filters"] = _filters(filters)
        stream = EventStream(await self._request("GET", "/events", params=params, stream=True), self._metrics)
        self._streams.add(stream)
        return stream

    async def events(self, since: str | float | int | None = None, filters: Filters | None = None,
                     until: str | float | int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Stream events as dicts, one per event (the request is made on the first iteration)."""
        stream = await self.open_events(since=since, until=until, filters=filters)
        try:
            async for ev in stream:
                yield ev
        finally:
            stream.close()

    async def open_logs(self, container_id: str, *, follow: bool, since: str | float | int | None = None,
                        until: str | float | int | None = None, timestamps: bool = True, stdout: bool = True,
                        stderr: bool = True, tail: str | None = None,
                        chunk_bytes: int = 256 * 1024) -> LogStream:
        """Open a container's log stream; raises ContainerGone when the container does not exist."""
        params = {"follow": _b(follow), "timestamps": _b(timestamps), "stdout": _b(stdout),
                  "stderr": _b(stderr)}
        if (s := format_since(since)) is not None:
            params["since"] = s
        if (u := format_since(until)) is not None:
            params["until"] = u
        if tail is not None:
            params["tail"] = tail
        resp = await self._request("GET", f"/containers/{quote(container_id, safe='')}/logs", params=params,
                                   stream=True, gone_on_404=True)
        stream = LogStream(resp, chunk_bytes)
        self._streams.add(stream)
        return stream

    async def logs(self, container_id: str, *, follow: bool, since: str | float | int | None = None,
                   until: str | float | int | None = None, timestamps: bool = True, stdout: bool = True,
                   stderr: bool = True, tail: str | None = None,
                   chunk_bytes: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Raw chunks of the log stream (multiplexed frames unless the container has a TTY)."""
        stream = await self.open_logs(container_id, follow=follow, since=since, until=until,
                                      timestamps=timestamps, stdout=stdout, stderr=stderr, tail=tail,
                                      chunk_bytes=chunk_bytes)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            stream.close()


def _b(v: bool) -> str:
    return "1" if v else "0"


def _filters(filters: Filters) -> str:
    return json.dumps({k: [v] if isinstance(v, str) else list(v) for k, v in filters.items()})
