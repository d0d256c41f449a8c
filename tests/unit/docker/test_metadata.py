"""ContainerInfo from inspect answers, events and dockerd's files, as Docker 20.10 writes them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shipper.docker.metadata import (
    ContainerInfo,
    default_log_path,
    filter_env,
    info_from_config_files,
    info_from_event,
    info_from_inspect,
    info_from_list,
)

CID = "e9f14d47885a700a4bf149886dd579b3808d6e8ebfc4764f4d3fa23817cc98c8"
LOG = f"/var/lib/docker/containers/{CID}/{CID}-json.log"

# Trimmed from a real `docker inspect` on Docker 20.10.
INSPECT: dict[str, Any] = {
    "Id": CID,
    "Created": "2026-11-26T21:54:26.869085113Z",
    "State": {"Status": "running", "Running": True, "Pid": 4859, "ExitCode": 0,
              "StartedAt": "2026-11-26T21:54:27.089424486Z", "FinishedAt": "0001-01-01T00:00:00Z"},
    "Image": "sha256:a1ad48481fa45428f6ebc56f32cfc74ecdbe810a3b11c298f69c4219033def3a",
    "LogPath": LOG,
    "Name": "/myprobe-x",
    "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}}, "AutoRemove": False},
    "Config": {"Hostname": "e9f14d47885a", "Tty": False, "Env": ["FOO=bar", "SECRET=s3cr3t", "PATH=/bin"],
               "Cmd": ["sh", "-c", "echo hi; sleep 2"], "Image": "shipper-test:busybox",
               "Labels": {"shipper.test": "1", "com.docker.compose.project": "shop"}},
}

# A real `start` event from /events (Docker 20.10): labels and name/image share Attributes.
START_EVENT: dict[str, Any] = {
    "status": "start", "id": CID, "from": "shipper-test:busybox", "Type": "container", "Action": "start",
    "Actor": {"ID": CID, "Attributes": {"a": "b", "image": "shipper-test:busybox", "name": "probe-rm",
                                        "shipper.test": "1"}},
    "scope": "local", "time": 1795730082, "timeNano": 1795730082051774009,
}


def test_inspect_gives_name_without_slash_image_as_given_and_labels() -> None:
    info = info_from_inspect(INSPECT, "host1", [])
    assert info.meta.id == CID
    assert info.meta.name == "myprobe-x"
    assert info.meta.image == "shipper-test:busybox"
    assert info.meta.labels == {"shipper.test": "1", "com.docker.compose.project": "shop"}
    assert info.meta.host == "host1"
    assert info.meta.compose_project == "shop"
    assert info.log_driver == "json-file"
    assert info.log_path == LOG
    assert info.running is True and info.tty is False and info.auto_remove is False
    assert info.created == "2026-11-26T21:54:26.869085113Z"
    assert info.started_at == "2026-11-26T21:54:27.089424486Z"


def test_environment_is_never_shipped_unless_allowlisted() -> None:
    assert info_from_inspect(INSPECT, "h", []).meta.env == {}
    assert info_from_inspect(INSPECT, "h", ["FO*"]).meta.env == {"FOO": "bar"}
    assert info_from_inspect(INSPECT, "h", ["PATH", "NOPE"]).meta.env == {"PATH": "/bin"}
    assert filter_env(["NOEQUALS", "A=1=2"], ["*"]) == {"A": "1=2"}


def test_log_path_falls_back_to_data_root_for_json_file_only() -> None:
    d = copy.deepcopy(INSPECT)
    d["LogPath"] = ""
    assert info_from_inspect(d, "h", [], data_root="/srv/docker").log_path == \
        f"/srv/docker/containers/{CID}/{CID}-json.log"
    d["HostConfig"]["LogConfig"]["Type"] = "journald"
    info = info_from_inspect(d, "h", [])
    assert info.log_driver == "journald"
    assert info.log_path == ""


def test_tty_stopped_and_never_started() -> None:
    d = copy.deepcopy(INSPECT)
    d["Config"]["Tty"] = True
    d["State"] = {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"}
    d["HostConfig"]["AutoRemove"] = True
    info = info_from_inspect(d, "h", [])
    assert info.tty is True and info.running is False and info.auto_remove is True
    assert info.started_at == ""  # Go's zero time means "never"


def test_start_event_carries_enough_to_open_the_log() -> None:
    info = info_from_event(START_EVENT, "h")
    assert info.meta.name == "probe-rm"
    assert info.meta.image == "shipper-test:busybox"
    assert info.meta.labels == {"a": "b", "shipper.test": "1"}
    assert info.meta.env == {}
    assert info.running is True
    assert info.log_path == default_log_path("/var/lib/docker", CID)
    assert info.created == info.started_at == "2026-11-26T21:54:42.051774009Z"


def test_start_event_over_a_create_time_inspect_keeps_what_events_lack() -> None:
    d = copy.deepcopy(INSPECT)
    d["Config"]["Tty"] = True
    d["LogPath"] = ""  # not set yet at create
    d["State"] = {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"}
    base = info_from_inspect(d, "h", ["FOO"])
    info = info_from_event(START_EVENT, "h", base=base)
    assert info.tty is True
    assert info.meta.env == {"FOO": "bar"}
    assert info.meta.name == "probe-rm"  # the event is newer than the inspect
    assert info.meta.labels["com.docker.compose.project"] == "shop"
    assert info.running is True
    assert info.log_path == LOG
    assert info.created == "2026-11-26T21:54:26.869085113Z"


def test_event_only_attributes_are_not_labels() -> None:
    die = copy.deepcopy(START_EVENT)
    die["Action"] = "die"
    die["Actor"]["Attributes"]["exitCode"] = "0"
    assert "exitCode" not in info_from_event(die, "h").meta.labels


def test_list_entry_fallback() -> None:
    entry = {"Id": CID, "Names": ["/web"], "Image": "nginx:1", "Labels": {"x": "y"}, "State": "exited"}
    info = info_from_list(entry, "h")
    assert (info.meta.name, info.meta.image, info.meta.labels, info.running) == ("web", "nginx:1", {"x": "y"},
                                                                                 False)


def _write(d: Path, cfg: dict[str, Any], hc: dict[str, Any] | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.v2.json").write_text(json.dumps(cfg))
    if hc is not None:
        (d / "hostconfig.json").write_text(json.dumps(hc))
    return d


def _config_v2() -> dict[str, Any]:
    """config.v2.json as dockerd 20.10 wrote it for the container above (trimmed)."""
    return {"StreamConfig": {}, "State": {"Running": True, "Paused": False, "Pid": 4859, "ExitCode": 0,
                                          "StartedAt": "2026-11-26T21:54:27.089424486Z",
                                          "FinishedAt": "0001-01-01T00:00:00Z", "Health": None},
            "ID": CID, "Created": "2026-11-26T21:54:26.869085113Z", "Managed": False, "Path": "sh",
            "Config": copy.deepcopy(INSPECT["Config"]), "Image": INSPECT["Image"],
            "LogPath": LOG, "Name": "/myprobe-x", "Driver": "overlay2", "OS": "linux"}


def test_config_files_match_inspect(tmp_path: Path) -> None:
    d = _write(tmp_path / "containers" / CID, _config_v2(),
               {"LogConfig": {"Type": "json-file", "Config": {}}, "AutoRemove": False})
    from_files = info_from_config_files(d, "host1", ["FOO"])
    from_api = info_from_inspect(INSPECT, "host1", ["FOO"])
    assert from_files == from_api


def test_config_files_in_the_generated_bench_shape(tmp_path: Path) -> None:
    """The shape benchmarks/workload.py writes (no LogPath default needed: it is set)."""
    cid = "ab" * 32
    d = tmp_path / "containers" / cid
    cfg = {"ID": cid, "Name": "/shop-web-1", "Created": "2026-11-26T21:00:00.000000000Z", "Path": "/app/run",
           "Args": [], "Config": {"Hostname": cid[:12], "Image": "registry.example/shop/web:1.0",
                                  "Env": ["APP_ENV=prod", "SERVICE=web", "DB_PASSWORD=hunter2"],
                                  "Labels": {"com.docker.compose.project": "shop",
                                             "com.docker.compose.service": "web"}},
           "Image": "sha256:" + "0" * 64, "State": {"Running": True, "Pid": 1000,
                                                   "StartedAt": "2026-11-26T21:00:00.000000000Z"},
           "Driver": "overlay2", "OS": "linux"}
    _write(d, cfg, {"LogConfig": {"Type": "json-file", "Config": {"max-size": "1000"}}})
    info = info_from_config_files(d, "h", ["APP_*"])
    assert info.meta.name == "shop-web-1"
    assert info.meta.image == "registry.example/shop/web:1.0"
    assert info.meta.env == {"APP_ENV": "prod"}  # DB_PASSWORD never leaves
    assert info.meta.compose_service == "web"
    assert info.log_path == str(tmp_path / "containers" / cid / f"{cid}-json.log")  # from the data root
    assert info.running is True


def test_missing_hostconfig_means_json_file(tmp_path: Path) -> None:
    info = info_from_config_files(_write(tmp_path / "c" / CID, _config_v2(), None), "h", [])
    assert info.log_driver == "json-file"


@pytest.mark.parametrize("content", [b'{"ID": "abc", "Name": "/x", "Con', b"", b"[1, 2]", b'{"Name": "/x"}',
                                     b'{"ID": "x", "Config": "oops"}'])
def test_half_written_or_odd_config_is_a_value_error(tmp_path: Path, content: bytes) -> None:
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True)
    (d / "config.v2.json").write_bytes(content)
    with pytest.raises(ValueError):
        info_from_config_files(d, "h", [])


def test_unreadable_config_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        info_from_config_files(tmp_path / "nope", "h", [])


def test_same_as_ignores_timestamps_only() -> None:
    a = info_from_inspect(INSPECT, "h", [])
    b = ContainerInfo(meta=a.meta, log_driver=a.log_driver, log_path=a.log_path, tty=a.tty, running=a.running,
                      created="other", started_at="other")
    assert a.same_as(b)
    b.tty = True
    assert not a.same_as(b)


def test_own_container_id_from_cgroup_v1_and_mountinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shipper.docker.metadata import own_container_id

    cid = "a" * 64
    v1 = tmp_path / "cgroup"
    v1.write_text(f"12:pids:/docker/{cid}\n11:memory:/docker/{cid}\n")
    assert own_container_id(str(v1), str(tmp_path / "none")) == cid
    v2 = tmp_path / "mountinfo"
    v2.write_text(f"652 630 0:52 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw - ext4 /dev/vda1\n")
    empty = tmp_path / "empty"
    empty.write_text("0::/\n")
    assert own_container_id(str(empty), str(v2)) == cid
    assert own_container_id(str(empty), str(empty)) is None
