"""ContainerInfo from inspect answers, events and dockerd's files, as Docker 20.10 writes them."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from shipper.config import Config, HostConfig
from shipper.docker import discovery, metadata
from shipper.docker.client import DockerClient
from shipper.docker.discovery import EVENTS_INVALID, ApiDiscovery
from shipper.docker.metadata import (
    ContainerInfo,
    Problems,
    default_log_path,
    event_ns,
    event_time,
    filter_env,
    info_from_config_files,
    info_from_event,
    info_from_inspect,
    info_from_list,
)
from shipper.telemetry.metrics import Metrics

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


# --- Docker JSON of the wrong type: a field left out and said, the record used; an id refused ----------


@pytest.fixture
def fresh_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """metadata logs each dropped field once per process: start from none said."""
    monkeypatch.setattr(metadata, "_said", set())


@pytest.mark.parametrize("when", [{"time": 10**17}, {"time": -(10**17)}, {"time": 1e300}, {"time": float("nan")},
                                  {"time": float("inf")}, {"time": "1795730082"}, {"time": True},
                                  {"timeNano": 10**30}, {"timeNano": -1}, {"timeNano": 1.5e18},
                                  {"timeNano": [1]}])
def test_an_event_time_that_cannot_be_a_time_is_left_out_and_said(when: dict[str, Any]) -> None:
    problems: Problems = []
    assert event_ns(when, problems) is None
    assert event_time(when) == ""
    assert [field for field, _ in problems] == list(when)


def test_a_bad_time_nano_falls_back_to_the_seconds() -> None:
    problems: Problems = []
    assert event_time({"timeNano": 10**30, "time": 1795730082}, problems) == "2026-11-26T21:54:42.000000000Z"
    assert problems == [("timeNano", "1000000000000000000000000000000 is out of range (1970 to 9999)")]
    assert event_time({"time": 253_402_300_799}) == "9999-12-31T23:59:59.000000000Z"  # the last one written
    assert event_time({"timeNano": 0}) == "1970-01-01T00:00:00.000000000Z"
    assert event_time({}) == ""


def test_start_event_with_an_impossible_time_is_used_without_it(fresh_said: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    ev = copy.deepcopy(START_EVENT)
    del ev["timeNano"]
    ev["time"] = 10**17
    info = info_from_event(ev, "h")
    assert info.meta.name == "probe-rm" and info.running and info.guessed
    assert info.created == info.started_at == ""
    info_from_event(ev, "h")
    said = [r for r in caplog.records if "wrong type" in r.message]
    assert len(said) == 1 and "time: 100000000000000000 is out of range" in said[0].getMessage()


def test_event_fields_of_the_wrong_type_are_left_out_and_listed() -> None:
    ev = {"Action": "start", "from": 5, "time": 1795730082,
          "Actor": {"ID": CID, "Attributes": {"name": "x", "tier": 1, "ok": "yes", "image": None}}}
    problems: Problems = []
    info = info_from_event(ev, "h", problems=problems)
    assert (info.meta.name, info.meta.image, info.meta.labels) == ("x", "", {"ok": "yes"})
    assert info.created == "2026-11-26T21:54:42.000000000Z"
    assert sorted(field for field, _ in problems) == ["Actor.Attributes", "Actor.Attributes", "from"]
    assert ("Actor.Attributes", "'tier' is a int, not a string") in problems


@pytest.mark.parametrize("actor", [{"ID": 5}, {"ID": ""}, {}])
def test_an_event_without_a_string_id_is_refused(actor: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"Actor\.ID"):
        info_from_event({"Action": "start", "Actor": actor}, "h")


def _untyped_inspect() -> dict[str, Any]:
    d = copy.deepcopy(INSPECT)
    d["Created"] = 5
    d["LogPath"] = 5
    d["Name"] = ["/x"]
    d["State"]["StartedAt"] = 1795730082
    d["Config"]["Env"] = "FOO=bar"
    d["Config"]["Image"] = {"name": "x"}
    d["Config"]["Labels"]["tier"] = 1
    d["HostConfig"]["LogConfig"]["Type"] = 7
    return d


def _assert_untyped_dropped(info: ContainerInfo, problems: Problems, log_path: str) -> None:
    assert info.meta.id == CID
    assert info.meta.name == ""
    assert info.meta.image == INSPECT["Image"]  # the top-level one, when Config.Image cannot be used
    assert info.meta.labels == {"shipper.test": "1", "com.docker.compose.project": "shop"}
    assert info.meta.env == {}
    assert info.created == info.started_at == ""
    assert info.log_driver == "json-file"  # as if absent: Docker's default
    assert info.log_path == log_path
    assert info.running is True
    assert sorted(field for field, _ in problems) == [
        "Config.Env", "Config.Image", "Config.Labels", "Created", "HostConfig.LogConfig.Type", "LogPath", "Name",
        "State.StartedAt"]


def test_inspect_fields_of_the_wrong_type_are_left_out_and_listed() -> None:
    problems: Problems = []
    info = info_from_inspect(_untyped_inspect(), "h", ["FOO"], problems=problems)
    _assert_untyped_dropped(info, problems, LOG)


def test_config_file_fields_of_the_wrong_type_are_left_out_and_listed(tmp_path: Path) -> None:
    d = _untyped_inspect()
    cfg = {**_config_v2(), **{k: d[k] for k in ("Created", "LogPath", "Name", "Config")}}
    cfg["State"]["StartedAt"] = 1795730082
    problems: Problems = []
    info = info_from_config_files(_write(tmp_path / "containers" / CID, cfg, d["HostConfig"]), "h", ["FOO"],
                                  problems=problems)
    _assert_untyped_dropped(info, problems, str(tmp_path / "containers" / CID / f"{CID}-json.log"))


def test_without_a_problems_list_dropped_fields_are_logged_once_per_field(
        fresh_said: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "shipper.docker")
    for _ in range(3):
        info_from_inspect(_untyped_inspect(), "h", ["FOO"])
    said = [r.getMessage() for r in caplog.records if "wrong type" in r.message]
    assert len(said) == 1
    assert "inspect answer" in said[0] and "'tier' is a int, not a string" in said[0]


def test_env_is_not_read_unless_an_allowlist_asks_for_it() -> None:
    d = copy.deepcopy(INSPECT)
    d["Config"]["Env"] = "FOO=bar"
    problems: Problems = []
    assert info_from_inspect(d, "h", [], problems=problems).meta.env == {}
    assert problems == []
    d["Config"]["Env"] = ["FOO=bar", 5, None]
    assert info_from_inspect(d, "h", ["FOO"], problems=problems).meta.env == {"FOO": "bar"}
    assert problems == [("Config.Env", "2 items that are not strings")]


@pytest.mark.parametrize("doc", [{"Id": 5}, {"Id": ""}, {"Id": ["c" * 64]}, {}, [], "x",
                                 {"Id": CID, "Config": "oops"}, {"Id": CID, "HostConfig": {"LogConfig": [1]}}])
def test_an_inspect_answer_without_a_string_id_or_with_a_section_not_an_object_is_refused(doc: Any) -> None:
    with pytest.raises(ValueError):
        info_from_inspect(doc, "h", [])


def test_list_entry_of_the_wrong_types() -> None:
    info = info_from_list({"Id": CID, "Names": [5], "Image": 1, "Labels": {"x": 2, "y": "z"}}, "h")
    assert (info.meta.name, info.meta.image, info.meta.labels) == ("", "", {"y": "z"})
    with pytest.raises(ValueError):
        info_from_list({"Id": 5}, "h")


# --- ApiDiscovery's event handler: counted in shipper_docker_events_invalid_total, never stopped ---------


def _api(m: Metrics) -> ApiDiscovery:
    return ApiDiscovery(cast(DockerClient, object()), Config(host=HostConfig(name="h")), m)


def test_a_start_event_with_an_impossible_time_starts_the_container_and_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    disc = _api(m)
    for n, when in enumerate(({"time": 10**17}, {"time": 1e300}, {"timeNano": -5})):
        ev = {"Type": "container", "Action": "start", "Actor": {"ID": f"{n:064x}", "Attributes": {"name": "x"}},
              **when}
        changes, inspect = disc._on_event_safe(ev)
        assert [(c.kind, c.id) for c in changes] == [("start", f"{n:064x}")] and inspect == f"{n:064x}"
        assert changes[0].info is not None and changes[0].info.started_at == ""
        assert m.get(EVENTS_INVALID) == n + 1  # once per event, though its time is read twice
    assert disc._since is None  # where a resubscription resumes is never moved by such a time
    said = [r.getMessage() for r in caplog.records if "wrong type" in r.message]
    assert len(said) == 2  # once per field: time, then timeNano
    assert "time: 100000000000000000 is out of range" in said[0]


def test_wrong_typed_rename_and_ids_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    disc = _api(m)
    disc._on_event_safe({"Action": "start", "Actor": {"ID": CID, "Attributes": {"name": "web"}}, "time": 1})
    changes, _ = disc._on_event_safe({"Action": "rename", "Actor": {"ID": CID, "Attributes": {"name": 5}}})
    assert changes == [] and disc.known[CID].meta.name == "web"
    assert m.get(EVENTS_INVALID) == 1
    assert disc._on_event_safe({"Action": "start", "Actor": {"ID": 5}}) == ([], "")
    assert m.get(EVENTS_INVALID) == 2
    assert disc._on_event_safe({"Action": "start"}) == ([], "")  # names no container: nothing to count
    assert m.get(EVENTS_INVALID) == 2


def test_no_exception_from_one_event_stops_the_handler(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> ContainerInfo:
        raise OSError(75, "Value too large for defined data type")

    m = Metrics()
    disc = _api(m)
    monkeypatch.setattr(discovery, "info_from_event", broken)
    for n in range(2):
        assert disc._on_event_safe({"Action": "start", "Actor": {"ID": f"{n:064x}"}}) == ([], "")
    assert m.get(EVENTS_INVALID) == 2
    said = [r for r in caplog.records if "skipped a Docker event" in r.message]
    assert len(said) == 1 and said[0].exc_info is not None  # not a shape error: its traceback is kept
    monkeypatch.undo()
    changes, _ = disc._on_event_safe({"Action": "start", "Actor": {"ID": CID}, "time": 1})
    assert [c.kind for c in changes] == ["start"]
