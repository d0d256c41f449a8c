"""The config file's sections and how it is loaded: TOML in, frozen typed dataclasses out.

One frozen dataclass per section ([docker], [state], [input], ...), built and checked by `shipper.schema`
(types, enums, sizes, unknown keys, every mistake named by its dotted key). Each [sinks.NAME] table is
checked against its own sink's Config, found through the sink registry (`shipper.sinks`); the keys every
sink has are `shipper.sinks.base.SinkBase`. Imports go one way: this module imports the sinks, never the
reverse.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import socket
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipper.errors import ConfigError
from shipper.schema import build, describe, doc, expand_env
from shipper.sinks import SINKS, sink_config_class
from shipper.sinks.base import SinkBase

# --- the sections -----------------------------------------------------------------------------------------


class Discovery(enum.Enum):
    API = "api"
    FILES = "files"


class ReadMode(enum.Enum):
    AUTO = "auto"
    FILES = "files"
    API = "api"


class StartAt(enum.Enum):
    BEGINNING = "beginning"
    END = "end"


@dataclass(frozen=True)
class DockerConfig:
    host: str = doc("", "Engine API address: unix:///path or tcp://host:port (default: $DOCKER_HOST, "
                        "else unix:///var/run/docker.sock)")
    tls_ca: str = doc("", "CA certificate for a TLS Engine API (default: $DOCKER_CERT_PATH/ca.pem when "
                          "DOCKER_TLS_VERIFY is set)")
    tls_cert: str = doc("", "client certificate for a TLS Engine API")
    tls_key: str = doc("", "client key for a TLS Engine API")
    tls_verify: bool = doc(True, "check the daemon's certificate and host name")
    data_root: str = doc("/var/lib/docker", "Docker's data root, where containers/<id>/<id>-json.log lives")
    discovery: Discovery = doc(Discovery.API, "how containers are found: 'api' (list + /events) or 'files' "
                                              "(scan data_root, no socket needed)")
    read: ReadMode = doc(ReadMode.AUTO, "how logs are read: 'files' (json-file on disk), 'api' (log stream), "
                                        "'auto' (files when readable, else the API)")
    scan_interval_secs: float = doc(1.0, "how often discovery='files' rescans data_root")
    poll_interval_secs: float = doc(0.25, "longest wait before an idle log file is checked again")
    start_at: StartAt = doc(StartAt.BEGINNING, "where to start a log never read before: 'beginning' or 'end'")
    reconnect_max_secs: float = doc(30.0, "longest backoff between attempts to reach a lost Engine API")

    def resolved_host(self) -> str:
        return self.host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def resolved_tls(self) -> tuple[str, str, str]:
        """(ca, cert, key): the keys when set; else, when DOCKER_TLS_VERIFY is set (to anything, as the docker
        CLI reads it), ca.pem, cert.pem and key.pem in $DOCKER_CERT_PATH, or where the docker CLI looks when it
        is unset: $DOCKER_CONFIG, else ~/.docker. Whether the files exist is checked where the client is made
        (shipper.docker.client.endpoint_from_config): a missing one is an error there, never plain HTTP."""
        ca, cert, key = self.tls_ca, self.tls_cert, self.tls_key
        if not (ca or cert) and os.environ.get("DOCKER_TLS_VERIFY"):
            cert_path = (os.environ.get("DOCKER_CERT_PATH") or os.environ.get("DOCKER_CONFIG")
                         or os.path.join(os.path.expanduser("~"), ".docker"))
            ca, cert, key = (os.path.join(cert_path, n) for n in ("ca.pem", "cert.pem", "key.pem"))
        return ca, cert, key

    def validate(self, key: str) -> None:
        host = self.resolved_host()
        if not host.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ConfigError(f"{key}.host", f"must start with unix:// or tcp://, got {host!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{key}.tls_key", "tls_cert and tls_key go together")


def default_state_dir() -> str:
    return "/var/lib/shipper" if os.geteuid() == 0 else os.path.abspath("shipper-state")


@dataclass(frozen=True)
class StateConfig:
    dir: str = doc("", "where offsets and the spool live (default /var/lib/shipper, or ./shipper-state "
                       "when not root)")
    flush_interval_secs: float = doc(1.0, "how often read offsets are saved to disk")

    @property
    def path(self) -> Path:
        return Path(self.dir or default_state_dir())


@dataclass(frozen=True)
class InputConfig:
    max_event_bytes: int = doc(1024 * 1024, "longest event message; longer ones are truncated and flagged")
    read_chunk_bytes: int = doc(256 * 1024, "bytes read from a log file at a time")
    batch_max_events: int = doc(2048, "most events in one batch between stages")

    def validate(self, key: str) -> None:
        if self.max_event_bytes < 1024:
            raise ConfigError(f"{key}.max_event_bytes", "must be at least 1024")
        if self.read_chunk_bytes < 4096:
            raise ConfigError(f"{key}.read_chunk_bytes", "must be at least 4096")
        if self.batch_max_events < 1:
            raise ConfigError(f"{key}.batch_max_events", "must be at least 1")


class MultilineMode(enum.Enum):
    AUTO = "auto"  # built-in detection of Java, Python and Go stack traces
    PATTERN = "pattern"  # a line matching start_pattern starts an event; others continue it
    OFF = "off"


@dataclass(frozen=True)
class MultilineConfig:
    mode: MultilineMode = doc(MultilineMode.AUTO, "'auto' (Java/Python/Go stack traces), 'pattern' or 'off'")
    start_pattern: str = doc("", "with mode='pattern': a regex; a line that matches starts a new event")
    flush_timeout_secs: float = doc(1.0, "an open multi-line event is shipped after this long with no new line")
    max_lines: int = doc(1000, "most lines merged into one event")

    def validate(self, key: str) -> None:
        if self.mode is MultilineMode.PATTERN:
            if not self.start_pattern:
                raise ConfigError(f"{key}.start_pattern", "is required when mode = 'pattern'")
            try:
                re.compile(self.start_pattern)
            except (re.error, OverflowError, RecursionError, ValueError) as e:  # not all are re.error
                raise ConfigError(f"{key}.start_pattern", f"not a valid regex: {type(e).__name__}: {e}") from None


class JsonMode(enum.Enum):
    FIELD = "field"  # parse a JSON log line into the event's `json` field, keep `message` as written
    TEXT = "text"  # leave it as text


@dataclass(frozen=True)
class JsonConfig:
    mode: JsonMode = doc(JsonMode.FIELD, "JSON application logs: 'field' (parse into `json`) or 'text'")
    message_key: str = doc("", "if set and present in the JSON object, its value becomes `message`")


@dataclass(frozen=True)
class SelectConfig:
    include_names: list[str] = doc([], "container name globs to ship (empty: all)")
    exclude_names: list[str] = doc([], "container name globs never to ship")
    include_images: list[str] = doc([], "image globs to ship (empty: all)")
    exclude_images: list[str] = doc([], "image globs never to ship")
    include_labels: list[str] = doc([], "labels 'key' or 'key=value-glob' a container must have one of")
    exclude_labels: list[str] = doc([], "labels 'key' or 'key=value-glob' that exclude a container")
    opt_in: bool = doc(False, "ship only containers labelled shipper.enable=true")
    env_allowlist: list[str] = doc([], "container environment variables to ship (none by default: secrets)")
    include_self: bool = doc(False, "ship the logs of shipper's own container too")


@dataclass(frozen=True)
class HostConfig:
    name: str = doc("", "host.name on every event (default: this machine's host name)")

    @property
    def resolved_name(self) -> str:
        return self.name or socket.gethostname()


class WhenFull(enum.Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class BufferType(enum.Enum):
    MEMORY = "memory"
    DISK = "disk"


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"  # every batch
    INTERVAL = "interval"  # every fsync_interval_secs
    NEVER = "never"  # leave it to the kernel


@dataclass(frozen=True)
class BufferConfig:
    type: BufferType = doc(BufferType.MEMORY, "'memory' (bounded, lost on crash) or 'disk' (durable spool)")
    max_bytes: int = doc(256 * 1024 * 1024, "most bytes buffered (memory: estimated; disk: on disk)")
    max_events: int = doc(200_000, "memory buffer: most events held")
    when_full: WhenFull = doc(WhenFull.BLOCK, "'block' (readers wait; Docker keeps the logs), "
                                              "'drop_oldest' or 'drop_newest'")
    fsync: FsyncPolicy = doc(FsyncPolicy.INTERVAL, "disk: 'always', 'interval' or 'never'")
    fsync_interval_secs: float = doc(1.0, "disk: with fsync='interval', longest time between fsyncs")
    segment_bytes: int = doc(64 * 1024 * 1024, "disk: size at which a spool segment is closed")
    compression: bool = doc(False, "disk: compress records (zlib)")
    retention_secs: float = doc(0.0, "disk: keep delivered events this long for replay (0: delete at once)")
    retention_bytes: int = doc(0, "disk: keep at most this many bytes of delivered events for replay")


@dataclass(frozen=True)
class TelemetryConfig:
    log_level: str = doc("info", "shipper's own log level: debug, info, warning, error")
    log_format: typing.Literal["text", "json"] = doc("text", "shipper's own log lines: 'text' or 'json'")
    stats_interval_secs: float = doc(60.0, "how often a one-line summary of the counters is logged (0: never)")


@dataclass(frozen=True)
class Config:
    docker: DockerConfig = doc(None, "where Docker is and how to read it")
    state: StateConfig = doc(None, "offsets and spool")
    input: InputConfig = doc(None, "reading limits")
    multiline: MultilineConfig = doc(None, "stack trace merging")
    json: JsonConfig = doc(None, "JSON application logs")
    select: SelectConfig = doc(None, "which containers")
    host: HostConfig = doc(None, "this host")
    buffer: BufferConfig = doc(None, "the buffer between reading and sending")
    telemetry: TelemetryConfig = doc(None, "shipper's own logs and counters")
    sinks: dict[str, Any] = doc({}, "where events go: [sinks.NAME] type = ...")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, typing.get_type_hints(Config)[f.name]())


def load_dict(data: dict[str, Any], env: typing.Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML tree; sink sections are checked against their own sink's Config."""
    data = expand_env(data, env=env)
    sinks_raw = data.pop("sinks", None)
    cfg = build(Config, data)
    if sinks_raw is None:
        sinks_raw = {"file": {"type": "file"}}
    if not isinstance(sinks_raw, dict) or not sinks_raw:
        raise ConfigError("sinks", "needs at least one [sinks.NAME] table")
    sinks: dict[str, SinkBase] = {}
    for name, table in sinks_raw.items():
        key = f"sinks.{name}"
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table")
        kind = table.get("type")
        if not isinstance(kind, str):
            raise ConfigError(f"{key}.type", "is required (file, stdout, null, syslog, ...)")
        sinks[name] = build(sink_config_class(kind, f"{key}.type"), table, key)
    object.__setattr__(cfg, "sinks", sinks)
    return cfg


def load(path: str | os.PathLike[str] | None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load a TOML config file; None gives the working default (local Docker to a local file)."""
    if path is None:
        return load_dict({}, env)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    return load_dict(data, env)


def explain() -> str:
    """Every key of every section and sink type, with its default and meaning."""
    out = []
    for f in dataclasses.fields(Config):
        if f.name == "sinks":
            continue
        out.append(f"[{f.name}]  # {f.metadata.get('doc', '')}")
        out += [f"  {k} = {d}  # {t}" for k, d, t in describe(typing.get_type_hints(Config)[f.name])]
    for kind in SINKS:
        try:
            cls = sink_config_class(kind)
        except ConfigError as e:
            out.append(f"[sinks.NAME] type = {kind!r}  # unavailable: {e.message}")
            continue
        out.append(f"[sinks.NAME] type = {kind!r}")
        out += [f"  {k} = {d}  # {t}" for k, d, t in describe(cls) if k != "type"]
    return "\n".join(out)
