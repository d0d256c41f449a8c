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
import sys
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shipper.errors import ConfigError
from shipper.schema import (
    EnvText,
    build,
    doc,
    env_keys,
    env_overlay,
    expand_env,
    explain_table,
    named_variables,
    set_overlay,
    set_path,
    to_toml_table,
    toml_key,
    toml_value,
)
from shipper.sinks import SINKS, sink_config_class
from shipper.sinks.base import SinkBase
from shipper.telemetry.config import AdminConfig

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
    scan_interval_secs: float = doc(1.0, "how often discovery='files' rescans data_root", low=0.05, high=3600)
    poll_interval_secs: float = doc(0.25, "longest wait before an idle log file is checked again", low=0.01,
                                    high=60)
    read_coalesce_secs: float = doc(0.005, "a log being written wakes its reader at most this often (rotations "
                                           "at once; a write to a quiet log at once too); 0: at every write",
                                    low=0, high=1)
    start_at: StartAt = doc(StartAt.BEGINNING, "where to start a log never read before: 'beginning' or 'end'")
    reconnect_max_secs: float = doc(30.0, "longest backoff between attempts to reach a lost Engine API",
                                    low=0.1, high=3600)

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
        where = f"{key}.host" if self.host else "DOCKER_HOST"
        if host.startswith("unix://") and not host[len("unix://"):]:
            raise ConfigError(where, "unix:// needs a socket path")
        if not host.startswith("unix://"):
            u = urlsplit(host)
            try:
                u.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
            except ValueError:
                raise ConfigError(where, f"{host!r}: the port must be a number from 1 to 65535") from None
            if not u.hostname:
                raise ConfigError(where, f"{host!r} names no host (tcp://host:port)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{key}.tls_key", "tls_cert and tls_key go together")


SYSTEM_STATE_DIR = "/var/lib/shipper"


def default_state_dir() -> str:
    """/var/lib/shipper as root or when this user may write it (the container image's user owns it), else
    ./shipper-state."""
    if os.geteuid() == 0 or os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
        return SYSTEM_STATE_DIR
    return os.path.abspath("shipper-state")


@dataclass(frozen=True)
class StateConfig:
    dir: str = doc("", "where offsets and the spool live (default /var/lib/shipper when root or when it "
                       "is writable, else ./shipper-state)")
    flush_interval_secs: float = doc(1.0, "how often read offsets are saved to disk", low=0.05, high=3600)

    @property
    def path(self) -> Path:
        return Path(self.dir or default_state_dir())


@dataclass(frozen=True)
class InputConfig:
    max_event_bytes: int = doc(1024 * 1024, "longest event message; longer ones are truncated and flagged",
                               low=1024, high=256 * 1024 * 1024)
    read_chunk_bytes: int = doc(256 * 1024, "bytes read from a log file at a time", low=4096, high=64 * 1024 * 1024)
    batch_max_events: int = doc(2048, "most events in one batch between stages", low=1, high=1_000_000)

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
    flush_timeout_secs: float = doc(1.0, "an open multi-line event is shipped after this long with no new line",
                                    low=0.01, high=3600)
    max_lines: int = doc(1000, "most lines merged into one event", low=1, high=1_000_000)

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
    name: str = doc("", "host.name on every event (default: name_file when set; in a container, the Docker "
                        "host's name from the Engine API; else this machine's host name)")
    name_file: str = doc("", "read host.name from this file, e.g. the host's /etc/hostname mounted into "
                             "shipper's container (for discovery = 'files', which has no Engine API to ask)")

    @property
    def resolved_name(self) -> str:
        if self.name:
            return self.name
        if self.name_file:
            try:
                with open(self.name_file, encoding="utf-8") as f:
                    name = f.read().strip()
            except OSError as e:
                raise ConfigError("host.name_file", f"cannot read {self.name_file}: {e.strerror or e}") from None
            if not name:
                raise ConfigError("host.name_file", f"{self.name_file} is empty")
            return name
        return socket.gethostname()


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


MEMORY_BUFFER_BYTES = 16 * 1024 * 1024
DISK_BUFFER_BYTES = 256 * 1024 * 1024
MIN_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class BufferConfig:
    type: BufferType = doc(BufferType.MEMORY, "'memory' (bounded, lost on crash) or 'disk' (durable spool)")
    max_bytes: int = doc(0, "most bytes buffered: memory: what the events take in memory (0: 16 MiB); disk: "
                            "on disk (0: 256 MiB)", low=0, high=2**50)
    max_events: int = doc(200_000, "memory buffer: most events held", low=1, high=100_000_000)
    when_full: WhenFull = doc(WhenFull.BLOCK, "'block' (readers wait; Docker keeps the logs), "
                                              "'drop_oldest' or 'drop_newest'")
    fsync: FsyncPolicy = doc(FsyncPolicy.INTERVAL, "disk: 'always', 'interval' or 'never'")
    fsync_interval_secs: float = doc(1.0, "disk: with fsync='interval', longest time between fsyncs",
                                     low=0.01, high=3600)
    segment_bytes: int = doc(64 * 1024 * 1024, "disk: size at which a spool segment is closed", low=1024,
                             high=2**32)
    compression: bool = doc(False, "disk: compress records (zlib)")
    retention_secs: float = doc(0.0, "disk: keep delivered events this long for replay (0: delete at once)")
    retention_bytes: int = doc(0, "disk: keep at most this many bytes of delivered events for replay")
    shutdown_drain_secs: float = doc(10.0, "at a stop, longest wait for the sinks to deliver what is buffered "
                                           "(a second SIGTERM or Ctrl-C cuts it short); then offsets are saved",
                                     high=3600)

    def validate(self, key: str) -> None:
        if 0 < self.max_bytes < MIN_BUFFER_BYTES:
            raise ConfigError(f"{key}.max_bytes", f"must be 0 (the default for the type) or at least "
                                                  f"{MIN_BUFFER_BYTES} bytes")

    @property
    def limit_bytes(self) -> int:
        """max_bytes, or the default for the buffer's type: the memory buffer's is small, since a smaller one
        costs no throughput (readers wait sooner; Docker's files hold the rest) and bounds the RSS; a disk
        spool's rides out a long outage."""
        if self.max_bytes:
            return self.max_bytes
        return MEMORY_BUFFER_BYTES if self.type is BufferType.MEMORY else DISK_BUFFER_BYTES


LogLevel = typing.Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class TelemetryConfig:
    log_level: LogLevel = doc("info", "shipper's own log level: 'debug', 'info', 'warning' or 'error'")
    log_format: typing.Literal["text", "json"] = doc("text", "shipper's own log lines: 'text' or 'json'")
    stats_interval_secs: float = doc(60.0, "how often a one-line summary of the counters is logged (0: never)",
                                     high=86400)
    docker_ping_interval_secs: float = doc(5.0, "how often the Docker daemon is pinged and its state read for "
                                                "the metrics and /status (0: never)")

    def validate(self, key: str) -> None:
        if 0 < self.stats_interval_secs < 0.1:
            raise ConfigError(f"{key}.stats_interval_secs", "must be 0 (never) or at least 0.1")


MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class PipelineConfig:
    workers: int = doc(1, "processes that read and ship, each a whole pipeline (readers, buffer, sinks) for its "
                          "share of the containers, split by container id; 0: one per CPU core (at most 8)",
                       high=64)

    def resolved_workers(self) -> int:
        """`workers`, with 0 read as the cores this process may use (at most MAX_AUTO_WORKERS)."""
        if self.workers:
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(cores, MAX_AUTO_WORKERS))


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
    admin: AdminConfig = doc(None, "the admin HTTP server: /metrics, /health, /ready, /status, the status page")
    pipeline: PipelineConfig = doc(None, "how many processes share the work")
    sinks: dict[str, Any] = doc({}, "where events go: [sinks.NAME] type = ...")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, typing.get_type_hints(Config)[f.name]())


ENV_PREFIX = "SHIPPER"  # SHIPPER_<SECTION>_<KEY>, SHIPPER_SINKS_<NAME>_<KEY>
CONFIG_ENV = "SHIPPER_CONFIG"  # names the config file when --config is not given
SINKS_ENV = f"{ENV_PREFIX}_SINKS_"
DEFAULT_SINKS = {"file": {"type": "file"}}


def _creates_sinks(env: typing.Mapping[str, str], overrides: typing.Sequence[str]) -> bool:
    return any(k.startswith(SINKS_ENV) and k.endswith("_TYPE") for k in env) or any(
        o.partition("=")[0].strip().startswith("sinks.") and o.partition("=")[0].strip().endswith(".type")
        for o in overrides)


def _sink_env(sinks: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    """SHIPPER_SINKS_<NAME>_<KEY> over the [sinks.NAME] tables. `_TYPE` creates the sink when the file has
    none of that name (named in lower case). A name may hold underscores: the longest sink name that leaves
    a key of that sink's Config wins, so any sink's keys work without the sink declaring anything."""
    names = {n.upper(): n for n in sinks}
    ours = sorted(k for k in env if k.startswith(SINKS_ENV))
    for var in ours:
        if var.endswith("_TYPE") and len(var) > len(SINKS_ENV) + len("_TYPE"):
            up = var[len(SINKS_ENV):-len("_TYPE")]
            name = names.setdefault(up, up.lower())
            table = sinks.setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"sinks.{name}", "must be a table")
            table["type"] = EnvText(env[var], var)
    for var in ours:
        rest = var[len(SINKS_ENV):]
        candidates = sorted((up for up in names if rest.startswith(up + "_")), key=len, reverse=True)
        for up in candidates:
            name = names[up]
            table = sinks[name]
            if not isinstance(table, dict):
                raise ConfigError(f"sinks.{name}", "must be a table")
            kind = table.get("type")
            if not isinstance(kind, str):
                raise ConfigError(f"sinks.{name}.type", f"is required (set {SINKS_ENV}{up}_TYPE)")
            keys = env_keys(sink_config_class(str(kind), f"sinks.{name}.type"), "")
            path = keys.get(rest[len(up) + 1:])
            if path is not None:
                set_path(table, path, EnvText(env[var], var))
                break
        else:
            if candidates:
                name = names[candidates[0]]
                kind = sinks[name].get("type")
                known = ", ".join(sorted(f"{SINKS_ENV}{candidates[0]}_{k}" for k in
                                         env_keys(sink_config_class(str(kind)), "")))
                raise ConfigError(var, f"sink {name} (type {kind}) has no such key (known: {known})")
            raise ConfigError(var, f"names no sink: set {SINKS_ENV}<NAME>_TYPE to create one (sinks so far: "
                                   f"{', '.join(sorted(sinks)) or 'none'})")


def load_dict(data: dict[str, Any], env: typing.Mapping[str, str] | None = None,
              overrides: typing.Sequence[str] = ()) -> Config:
    """Validate a parsed TOML tree with the environment (`SHIPPER_<SECTION>_<KEY>`, `SHIPPER_SINKS_<NAME>_<KEY>`)
    and `--set section.key=value` over it, in that order; sinks are checked against their own sink's Config.
    `env` defaults to the process environment ({} for none)."""
    env = os.environ if env is None else env
    data = expand_env(data, env=env)
    named = named_variables(data) | named_variables({k.lower(): v for k, v in env.items()})  # *_env values
    env_overlay(data, Config, env, ENV_PREFIX, skip=("sinks",), ignore=named)
    sinks_raw = data.get("sinks")
    if sinks_raw is None and not _creates_sinks(env, overrides):
        sinks_raw = data["sinks"] = {n: dict(t) for n, t in DEFAULT_SINKS.items()}
    if any(k.startswith(SINKS_ENV) for k in env):
        if sinks_raw is None:
            sinks_raw = data["sinks"] = {}
        if not isinstance(sinks_raw, dict):
            raise ConfigError("sinks", "needs at least one [sinks.NAME] table")
        _sink_env(sinks_raw, {k: v for k, v in env.items() if k not in named})
    set_overlay(data, overrides)
    sinks_raw = data.pop("sinks", None)
    cfg = build(Config, data)
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
        sinks[name] = build(sink_config_class(str(kind), f"{key}.type"), table, key)
    object.__setattr__(cfg, "sinks", sinks)
    return cfg


def config_path(path: str | os.PathLike[str] | None, env: typing.Mapping[str, str] | None = None
                ) -> str | os.PathLike[str] | None:
    """The file to read: `path`, else $SHIPPER_CONFIG, else None (the built-in default); '-' is stdin."""
    env = os.environ if env is None else env
    return path if path is not None else (env.get(CONFIG_ENV) or None)


def load(path: str | os.PathLike[str] | None, env: typing.Mapping[str, str] | None = None,
         overrides: typing.Sequence[str] = ()) -> Config:
    """Load a TOML config file ('-': standard input; None: $SHIPPER_CONFIG, else none), then the environment
    and `overrides` over it; no file and no environment give the working default (local Docker to a local
    file)."""
    path = config_path(path, env)
    if path is None:
        return load_dict({}, env, overrides)
    try:
        if str(path) == "-":
            data = tomllib.loads(sys.stdin.read())
        else:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{'standard input' if str(path) == '-' else path}: not valid TOML: {e}") from None
    return load_dict(data, env, overrides)


def _section_classes() -> list[tuple[str, type, str]]:
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name], f.metadata.get("doc", "")) for f in dataclasses.fields(Config)
            if f.name != "sinks"]


def explain() -> str:
    """Every key of every section and sink type, with its default, meaning and environment variable, as TOML
    that loads (sink tables are named after their type)."""
    out = ["# shipper: every key with its default. Each key can also be set by the environment variable named",
           "# beside it (typed like the file: numbers, sizes such as 64MiB, durations such as 30s, true/false,",
           "# lists as a,b,c or a TOML array) or by --set section.key=value: the file, then the environment,",
           "# then --set. SHIPPER_CONFIG names the file. A sink is created by SHIPPER_SINKS_<NAME>_TYPE.", ""]
    for name, cls, text in _section_classes():
        out.append(f"# {text}")
        out += explain_table(cls, name, f"{ENV_PREFIX}_{name.upper()}")
        out.append("")
    for kind in SINKS:
        try:
            cls = sink_config_class(kind)
        except ConfigError as e:
            out += [f"# [sinks.{kind}]: unavailable: {e.message}", ""]
            continue
        out += explain_table(cls, f"sinks.{kind}", f"{SINKS_ENV}<NAME>", values={"type": toml_value(kind)})
        out.append("")
    return "\n".join(out)


def print_config(cfg: Config) -> str:
    """The effective config (file, environment and --set applied) as TOML, secrets masked."""
    out: list[str] = []
    resolved = {"state": dataclasses.replace(cfg.state, dir=str(cfg.state.path)),  # the defaults, spelled out
                "docker": dataclasses.replace(cfg.docker, host=cfg.docker.resolved_host())}
    for name, _, _ in _section_classes():
        out += to_toml_table(resolved.get(name, getattr(cfg, name)), name)
        out.append("")
    for name, sc in cfg.sinks.items():
        out += to_toml_table(sc, f"sinks.{toml_key(name)}")
        out.append("")
    return "\n".join(out)
