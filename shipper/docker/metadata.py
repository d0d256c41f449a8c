"""What discovery learns of a container: its metadata for enrichment, and where and how to read its log.

Three origins give the same `ContainerInfo`: an inspect answer (complete), a `start` event (name, image and
labels only, but available before a short-lived container is gone) and the files dockerd keeps under
`<data_root>/containers/<id>/` (no socket needed). Environment variables can carry secrets, so none is kept
unless the allowlist names it.

Docker's JSON is trusted for its shape only as far as it is checked here: a section that is not an object
(`Config`, `State`, `HostConfig.LogConfig`, an event's `Actor` or `Attributes`) or an id that is not a string
makes the record unreadable (ValueError or TypeError, counted and skipped by the caller); an optional field of
the wrong type (a label value or `Created` that is not a string, `Env` that is not a list, an event time that
cannot be a time) is left out as if it were missing, and said: appended to `problems` when the caller counts
them, else logged here once per field.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from shipper.event import ContainerMeta

log = logging.getLogger("shipper.docker")

# (field, why) of each value left out of one record: of the wrong type, or a time that cannot be one.
Problems = list[tuple[str, str]]

JSON_FILE = "json-file"
DEFAULT_DATA_ROOT = "/var/lib/docker"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: dockerd's "never"
# Attributes Docker adds to container events next to the labels (labels of the same name are shadowed).
EVENT_ATTRS = frozenset({"name", "image", "exitCode", "signal", "oldName", "execID", "execDuration"})
MAX_EVENT_SECS = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second RFC 3339 writes


@dataclass
class ContainerInfo:
    meta: ContainerMeta
    log_driver: str = JSON_FILE
    log_path: str = ""  # json-file path; "" when the driver writes none
    tty: bool = False
    running: bool = True
    created: str = ""  # RFC 3339, for the API reader's first `since`
    started_at: str = ""  # RFC 3339 of the last start; a change means the container was restarted
    auto_remove: bool = False  # `--rm`: the log file is deleted right after the container exits
    # Built from a `start` event alone: log driver, log path and TTY are assumptions (json-file, the default
    # path, no TTY) until an inspect answers. No reader may be built on them: see App._choose.
    guessed: bool = False

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def name(self) -> str:
        return self.meta.name

    def same_as(self, other: ContainerInfo) -> bool:
        """Equal in everything a reader or enrichment uses (timestamps aside: they are hints). A guess is never
        the same as the inspected truth, even when it guessed right: consumers wait for that answer."""
        return (self.meta == other.meta and self.log_driver == other.log_driver
                and self.log_path == other.log_path and self.tty == other.tty
                and self.running == other.running and self.auto_remove == other.auto_remove
                and self.guessed == other.guessed)


def default_log_path(data_root: str, container_id: str) -> str:
    return os.path.join(data_root, "containers", container_id, f"{container_id}-json.log")


def filter_env(env: list[str] | None, allowlist: list[str]) -> dict[str, str]:
    """Only the variables an allowlist glob names: the rest may hold secrets."""
    if not env or not allowlist:
        return {}
    out: dict[str, str] = {}
    for item in env:
        name, sep, value = item.partition("=")
        if sep and any(fnmatch.fnmatchcase(name, pat) for pat in allowlist):
            out[name] = value
    return out


def _log_path(driver: str, log_path: str, data_root: str, container_id: str) -> str:
    if log_path:
        return log_path
    return default_log_path(data_root, container_id) if driver == JSON_FILE else ""


def _wrong(problems: Problems, field: str, value: Any, want: str = "a string") -> None:
    problems.append((field, f"{type(value).__name__}, not {want}"))


def _str(d: dict[str, Any], key: str, problems: Problems, field: str = "") -> str:
    """An optional string: "" when absent or null; left out (and said) when of another type."""
    v = d.get(key)
    if isinstance(v, str):
        return v
    if v is not None:
        _wrong(problems, field or key, v)
    return ""


def _section(d: dict[str, Any], key: str, field: str = "") -> dict[str, Any]:
    """A nested object: {} when absent or null. Of another type the record is not what it should be."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"{field or key} is a {type(v).__name__}, not an object")
    return v


def _str_map(v: Any, field: str, problems: Problems) -> dict[str, str]:
    """Labels or event attributes: a value that is not a string is left out, the others kept."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        _wrong(problems, field, v, "an object")
        return {}
    out = {k: x for k, x in v.items() if isinstance(k, str) and isinstance(x, str)}
    if len(out) != len(v):
        for k, x in v.items():
            if k not in out:
                problems.append((field, f"{str(k)[:40]!r} is a {type(x).__name__}, not a string"))
    return out


def _str_list(v: Any, field: str, problems: Problems) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        _wrong(problems, field, v, "a list")
        return []
    out = [x for x in v if isinstance(x, str)]
    if len(out) != len(v):
        problems.append((field, f"{len(v) - len(out)} items that are not strings"))
    return out


def _required_id(v: Any, field: str) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{field} is {'empty' if isinstance(v, str) else 'a ' + type(v).__name__}, "
                         "not a container id")
    return v


def describe_problems(problems: Problems) -> str:
    """`problems` for a log line: each once, the whole cut at 300 characters."""
    text = "; ".join(f"{field}: {why}" for field, why in dict.fromkeys(problems))
    return text if len(text) <= 300 else text[:297] + "..."


_said: set[tuple[str, str]] = set()  # (source, field): bounded by the fields this module reads


def _say(source: str, cid: str, problems: Problems) -> None:
    """For callers that do not count: each field of each source logged once."""
    new = {(source, field) for field, _ in problems} - _said
    if new:
        _said.update(new)
        log.warning("left out values of the wrong type from a container's %s id=%s dropped=%s (the rest is "
                    "used; logged once per field)", source, cid[:12], describe_problems(problems))


def _from_parts(cid: str, d: dict[str, Any], host_config: dict[str, Any], host: str, env_allowlist: list[str],
                data_root: str, problems: Problems) -> ContainerInfo:
    """`d`: an inspect answer or config.v2.json (they share these keys); `host_config`: its HostConfig."""
    config = _section(d, "Config")
    state = _section(d, "State")
    log_config = _section(host_config, "LogConfig", "HostConfig.LogConfig")
    driver = _str(log_config, "Type", problems, "HostConfig.LogConfig.Type") or JSON_FILE
    started = _str(state, "StartedAt", problems, "State.StartedAt")
    env = _str_list(config.get("Env"), "Config.Env", problems) if env_allowlist else []  # else never read
    meta = ContainerMeta(
        id=cid,
        name=_str(d, "Name", problems).lstrip("/"),
        image=_str(config, "Image", problems, "Config.Image") or _str(d, "Image", problems),
        labels=_str_map(config.get("Labels"), "Config.Labels", problems),
        host=host,
        env=filter_env(env, env_allowlist),
    )
    return ContainerInfo(
        meta=meta,
        log_driver=driver,
        log_path=_log_path(driver, _str(d, "LogPath", problems), data_root, cid),
        tty=bool(config.get("Tty")),
        running=bool(state.get("Running")),
        created=_str(d, "Created", problems),
        started_at="" if started == ZERO_TIME else started,
        auto_remove=bool(host_config.get("AutoRemove")),
    )


def info_from_inspect(d: dict[str, Any], host: str, env_allowlist: list[str],
                      data_root: str = DEFAULT_DATA_ROOT, problems: Problems | None = None) -> ContainerInfo:
    """From `GET /containers/{id}/json`. Raises ValueError (or TypeError) when it cannot be read."""
    if not isinstance(d, dict):
        raise ValueError(f"the answer is a {type(d).__name__}, not an object")
    cid = _required_id(d.get("Id"), "Id")
    own: Problems = [] if problems is None else problems
    info = _from_parts(cid, d, _section(d, "HostConfig"), host, env_allowlist, data_root, own)
    if problems is None and own:
        _say("inspect answer", cid, own)
    return info


def info_from_list(d: dict[str, Any], host: str, data_root: str = DEFAULT_DATA_ROOT) -> ContainerInfo:
    """From one `GET /containers/json` entry: the fallback when inspect fails (no tty, env or log path)."""
    cid = _required_id(d.get("Id"), "Id")
    problems: Problems = []
    names = _str_list(d.get("Names"), "Names", problems)
    info = ContainerInfo(
        meta=ContainerMeta(id=cid, name=names[0].lstrip("/") if names else "", image=_str(d, "Image", problems),
                           labels=_str_map(d.get("Labels"), "Labels", problems), host=host),
        log_path=default_log_path(data_root, cid),
        running=d.get("State") == "running",
    )
    if problems:
        _say("listing", cid, problems)
    return info


def _not_a_time(v: Any) -> str:
    if type(v) in (int, float):
        return f"{v!r:.40} is out of range (1970 to 9999)"
    return f"{type(v).__name__}, not a number"


def event_ns(event: dict[str, Any], problems: Problems | None = None) -> int | None:
    """The event's time in ns since the epoch: `timeNano`, else `time` (seconds); None when it has none.

    A value that cannot be a time (not a number, not finite, before 1970 or after 9999) is ignored as if it
    were missing, and said in `problems`: a start event must not be lost for its time.
    """
    ns = event.get("timeNano")
    if ns is not None:
        if type(ns) is int and 0 <= ns <= MAX_EVENT_SECS * 1_000_000_000:
            return ns
        if problems is not None:
            problems.append(("timeNano", _not_a_time(ns)))
    secs = event.get("time")
    if secs is not None:
        if type(secs) in (int, float) and 0 <= secs <= MAX_EVENT_SECS:  # NaN fails both comparisons
            return int(secs) * 1_000_000_000
        if problems is not None:
            problems.append(("time", _not_a_time(secs)))
    return None


def event_time(event: dict[str, Any], problems: Problems | None = None) -> str:
    """The event's time as RFC 3339 with nanoseconds (what `created` and log `since` expect); "" for none."""
    ns = event_ns(event, problems)
    if ns is None:
        return ""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def event_attributes(actor: dict[str, Any], problems: Problems) -> dict[str, str]:
    """An event actor's attributes (labels, name, image...): those that are not strings left out. Attributes
    that are not an object make the event unreadable."""
    attrs = actor.get("Attributes")
    if attrs is not None and not isinstance(attrs, dict):
        raise ValueError(f"Actor.Attributes is a {type(attrs).__name__}, not an object")
    return _str_map(attrs, "Actor.Attributes", problems)


def info_from_event(event: dict[str, Any], host: str, data_root: str = DEFAULT_DATA_ROOT,
                    base: ContainerInfo | None = None, problems: Problems | None = None) -> ContainerInfo:
    """From a container event: enough to open the log at once, before inspect answers.

    `base` (an earlier inspect, e.g. at `create`) supplies what events lack (tty, driver, env); the event
    supplies name, image and labels. Without a base the json-file driver, its default path and no TTY are
    assumed, and the info says so (`guessed`): inspect corrects or confirms it. Raises ValueError when the
    event names no container.
    """
    own: Problems = [] if problems is None else problems
    actor = event.get("Actor") or {}
    if not isinstance(actor, dict):
        raise ValueError(f"Actor is a {type(actor).__name__}, not an object")
    cid = _required_id(actor.get("ID") or event.get("id"), "Actor.ID")
    attrs = event_attributes(actor, own)
    labels = {k: v for k, v in attrs.items() if k not in EVENT_ATTRS}
    if base is not None:
        # A label literally called "name" or "image" is shadowed in events; the inspected labels are whole.
        labels = {**labels, **base.meta.labels}
    meta = ContainerMeta(
        id=cid,
        name=(attrs.get("name") or (base.meta.name if base else "")).lstrip("/"),
        image=attrs.get("image") or _str(event, "from", own) or (base.meta.image if base else ""),
        labels=labels,
        host=host,
        env=base.meta.env if base else {},
    )
    when = event_time(event, own)
    if problems is None and own:
        _say("event", cid, own)
    if base is not None:
        return replace(base, meta=meta, running=True, started_at=when,
                       log_path=base.log_path or _log_path(base.log_driver, "", data_root, cid))
    return ContainerInfo(meta=meta, log_path=default_log_path(data_root, cid), running=True, created=when,
                         started_at=when, guessed=True)


def info_from_config_files(container_dir: Path, host: str, env_allowlist: list[str],
                           data_root: str | None = None, problems: Problems | None = None) -> ContainerInfo:
    """From `config.v2.json` + `hostconfig.json` as dockerd writes them; no socket needed.

    Raises OSError when a file cannot be read and ValueError when it is not (yet) valid: dockerd rewrites
    these files on every state change, so the caller retries on its next scan.
    """
    container_dir = Path(container_dir)
    root = data_root if data_root is not None else str(container_dir.parent.parent)
    cfg = orjson.loads((container_dir / "config.v2.json").read_bytes())
    try:
        hc: Any = orjson.loads((container_dir / "hostconfig.json").read_bytes())
    except FileNotFoundError:
        hc = {}  # older or hand-made trees: json-file is Docker's default driver
    if not isinstance(cfg, dict) or not isinstance(hc, dict):
        raise ValueError("not a JSON object")
    cid = cfg.get("ID")
    if not isinstance(cid, str) or not cid:
        raise ValueError("config.v2.json has no ID")
    own: Problems = [] if problems is None else problems
    try:
        info = _from_parts(cid, cfg, hc, host, env_allowlist, root, own)
    except (AttributeError, TypeError) as e:  # a shape not checked above
        raise ValueError(f"unexpected shape: {e}") from None
    if problems is None and own:
        _say("config files", cid, own)
    return info


_CONTAINER_ID = re.compile(r"(?:/docker/|/docker-|containers/)([0-9a-f]{64})")


def own_container_id(cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The id of the container shipper itself runs in, if any (cgroup v1 path, else the mount of its
    /etc/hostname under containers/<id>/ for cgroup v2), so its own logs are not shipped in a loop."""
    for path in (cgroup, mountinfo):
        try:
            with open(path) as f:
                m = _CONTAINER_ID.search(f.read())
        except OSError:
            continue
        if m:
            return m.group(1)
    return None
