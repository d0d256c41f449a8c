"""What discovery learns of a container: its metadata for enrichment, and where and how to read its log.

Three origins give the same `ContainerInfo`: an inspect answer (complete), a `start` event (name, image and
labels only, but available before a short-lived container is gone) and the files dockerd keeps under
`<data_root>/containers/<id>/` (no socket needed). Environment variables can carry secrets, so none is kept
unless the allowlist names it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from shipper.event import ContainerMeta

JSON_FILE = "json-file"
DEFAULT_DATA_ROOT = "/var/lib/docker"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: dockerd's "never"
# Attributes Docker adds to container events next to the labels (labels of the same name are shadowed).
EVENT_ATTRS = frozenset({"name", "image", "exitCode", "signal", "oldName", "execID", "execDuration"})


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


def _from_parts(cid: str, name: str, config: dict[str, Any], state: dict[str, Any],
                host_config: dict[str, Any], log_path: str, created: str, image_fallback: str, host: str,
                env_allowlist: list[str], data_root: str) -> ContainerInfo:
    log_config = host_config.get("LogConfig") or {}
    driver = log_config.get("Type") or JSON_FILE
    started = state.get("StartedAt") or ""
    meta = ContainerMeta(
        id=cid,
        name=name.lstrip("/"),
        image=config.get("Image") or image_fallback,
        labels=dict(config.get("Labels") or {}),
        host=host,
        env=filter_env(config.get("Env"), env_allowlist),
    )
    return ContainerInfo(
        meta=meta,
        log_driver=driver,
        log_path=_log_path(driver, log_path, data_root, cid),
        tty=bool(config.get("Tty")),
        running=bool(state.get("Running")),
        created=created,
        started_at="" if started == ZERO_TIME else started,
        auto_remove=bool(host_config.get("AutoRemove")),
    )


def info_from_inspect(d: dict[str, Any], host: str, env_allowlist: list[str],
                      data_root: str = DEFAULT_DATA_ROOT) -> ContainerInfo:
    """From `GET /containers/{id}/json`."""
    return _from_parts(d["Id"], d.get("Name") or "", d.get("Config") or {}, d.get("State") or {},
                       d.get("HostConfig") or {}, d.get("LogPath") or "", d.get("Created") or "",
                       d.get("Image") or "", host, env_allowlist, data_root)


def info_from_list(d: dict[str, Any], host: str, data_root: str = DEFAULT_DATA_ROOT) -> ContainerInfo:
    """From one `GET /containers/json` entry: the fallback when inspect fails (no tty, env or log path)."""
    names = d.get("Names") or [""]
    cid = d["Id"]
    return ContainerInfo(
        meta=ContainerMeta(id=cid, name=names[0].lstrip("/"), image=d.get("Image") or "",
                           labels=dict(d.get("Labels") or {}), host=host),
        log_path=default_log_path(data_root, cid),
        running=d.get("State") == "running",
    )


def event_time(event: dict[str, Any]) -> str:
    """The event's time as RFC 3339 with nanoseconds (what `created` and log `since` expect)."""
    ns = event.get("timeNano")
    if not isinstance(ns, int):
        ns = int(event.get("time") or 0) * 1_000_000_000
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def info_from_event(event: dict[str, Any], host: str, data_root: str = DEFAULT_DATA_ROOT,
                    base: ContainerInfo | None = None) -> ContainerInfo:
    """From a container event: enough to open the log at once, before inspect answers.

    `base` (an earlier inspect, e.g. at `create`) supplies what events lack (tty, driver, env); the event
    supplies name, image and labels. Without a base the json-file driver, its default path and no TTY are
    assumed, and the info says so (`guessed`): inspect corrects or confirms it.
    """
    actor = event.get("Actor") or {}
    cid = actor.get("ID") or event["id"]
    attrs: dict[str, str] = actor.get("Attributes") or {}
    labels = {k: v for k, v in attrs.items() if k not in EVENT_ATTRS}
    if base is not None:
        # A label literally called "name" or "image" is shadowed in events; the inspected labels are whole.
        labels = {**labels, **base.meta.labels}
    meta = ContainerMeta(
        id=cid,
        name=(attrs.get("name") or (base.meta.name if base else "")).lstrip("/"),
        image=attrs.get("image") or event.get("from") or (base.meta.image if base else ""),
        labels=labels,
        host=host,
        env=base.meta.env if base else {},
    )
    when = event_time(event)
    if base is not None:
        return replace(base, meta=meta, running=True, started_at=when,
                       log_path=base.log_path or _log_path(base.log_driver, "", data_root, cid))
    return ContainerInfo(meta=meta, log_path=default_log_path(data_root, cid), running=True, created=when,
                         started_at=when, guessed=True)


def info_from_config_files(container_dir: Path, host: str, env_allowlist: list[str],
                           data_root: str | None = None) -> ContainerInfo:
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
    try:
        return _from_parts(cid, cfg.get("Name") or "", cfg.get("Config") or {}, cfg.get("State") or {}, hc,
                           cfg.get("LogPath") or "", cfg.get("Created") or "", cfg.get("Image") or "", host,
                           env_allowlist, root)
    except (AttributeError, TypeError) as e:  # a field of the wrong type
        raise ValueError(f"unexpected shape: {e}") from None


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
