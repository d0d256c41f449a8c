"""A config given by environment variables (or --set) is the same config as the TOML file that says the same.

Env names come from the dataclasses (SHIPPER_<SECTION>_<KEY>, SHIPPER_SINKS_<NAME>_<KEY>), so every section and
every registered sink type is covered without listing keys here: a sink added later is tested by the same code.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from shipper.config import Config, explain, load, load_dict, print_config
from shipper.errors import ConfigError
from shipper.schema import MASK, env_keys, env_overlay, named_variables, toml_value
from shipper.sinks import SINKS, sink_config_class

ROOT = Path(__file__).resolve().parents[2]

# A value of every kind, different from the default where the type allows, that passes validation.
SECTIONS: dict[str, dict[str, Any]] = {
    "docker": {"host": "tcp://10.1.2.3:2375", "discovery": "files", "scan_interval_secs": 2.5,
               "tls_verify": True, "data_root": "/srv/docker"},
    "state": {"dir": "/srv/shipper state", "flush_interval_secs": 0.5},
    "input": {"max_event_bytes": 2 * 1024 * 1024, "read_chunk_bytes": 65536},
    "multiline": {"mode": "pattern", "start_pattern": r"^\d{4}-", "max_lines": 50},
    "select": {"include_names": ["web-*", "api"], "exclude_labels": ["tier=db", "x"], "opt_in": True},
    "host": {"name": "node-7"},
    "buffer": {"type": "disk", "max_bytes": 1 << 30, "when_full": "drop_oldest", "retention_secs": 600.0,
               "compression": True, "shutdown_drain_secs": 3.0},
    "telemetry": {"log_level": "debug", "log_format": "json", "stats_interval_secs": 0.0},
}


def env_text(v: Any) -> str:
    """How a person writes `v` in an environment variable."""
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list) and all(isinstance(x, str) and "," not in x and x.strip() == x and x for x in v):
        return ",".join(v)
    if isinstance(v, list | dict) or dataclasses.is_dataclass(v):
        return toml_value(v)
    return str(v)


def flatten(table: dict[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}_{k.upper()}"))
        else:
            out[f"{prefix}_{k.upper()}"] = env_text(v)
    return out


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def test_every_section_from_env_equals_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml_text({**SECTIONS, "sinks.out": {"type": "file", "path": "/srv/out.jsonl", "max_files": 2}}))
    from_file = load(f, env={})
    env = {k: v for name, table in SECTIONS.items() for k, v in flatten(table, f"SHIPPER_{name.upper()}").items()}
    env |= {"SHIPPER_SINKS_OUT_TYPE": "file", "SHIPPER_SINKS_OUT_PATH": "/srv/out.jsonl",
            "SHIPPER_SINKS_OUT_MAX_FILES": "2"}
    from_env = load(None, env=env)
    assert from_env == from_file
    assert from_env.buffer.max_bytes == 1 << 30 and from_env.select.include_names == ["web-*", "api"]


def _defaults_of(cls: type) -> dict[str, Any]:
    """A table of every key of a sink's Config at its default (nested tables included): valid by construction."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        v = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if v is None:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = _defaults_of(hints[f.name])
        else:
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
    return out


@pytest.mark.parametrize("kind", sorted(SINKS))
def test_every_key_of_every_sink_type_is_settable_from_env(kind: str) -> None:
    """Each sink's keys, at values its Config accepts, given as SHIPPER_SINKS_MY_SINK_<KEY> (a name with an
    underscore, created by _TYPE) build the same sink as the TOML table."""
    try:
        cls = sink_config_class(kind)
    except ConfigError as e:
        pytest.skip(f"sink type {kind} is not installed here: {e}")
    table = _defaults_of(cls) | {"type": kind}
    try:
        want = load_dict({"sinks": {"my_sink": table}}, env={})
    except ConfigError as e:  # a sink whose defaults need one more key (a broker list, a topic)
        pytest.skip(f"{kind} needs keys without defaults: {e}")
    env = flatten(table, "SHIPPER_SINKS_MY_SINK")
    got = load_dict({}, env=env)
    assert got.sinks == want.sinks
    assert set(env_keys(cls, "")) >= {k.upper() for k in table}


def test_env_overrides_the_file_and_set_overrides_env(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[buffer]\nmax_events = 10\n[sinks.out]\ntype = "syslog"\naddress = "udp://a:514"\n')
    cfg = load(f, env={"SHIPPER_BUFFER_MAX_EVENTS": "20", "SHIPPER_SINKS_OUT_ADDRESS": "tcp://b:514,tcp://c:514"})
    assert cfg.buffer.max_events == 20
    assert cfg.sinks["out"].address == ["tcp://b:514", "tcp://c:514"]  # type: ignore[attr-defined]
    cfg = load(f, env={"SHIPPER_BUFFER_MAX_EVENTS": "20"}, overrides=["buffer.max_events=30",
                                                                       "sinks.extra.type=stdout"])
    assert cfg.buffer.max_events == 30 and set(cfg.sinks) == {"out", "extra"}


def test_shipper_config_names_the_file_and_dash_reads_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[host]\nname = "from-file"\n')
    assert load(None, env={"SHIPPER_CONFIG": str(f)}).host.name == "from-file"
    monkeypatch.setattr(sys, "stdin", io.StringIO('[host]\nname = "from-stdin"\n'))
    assert load("-", env={}).host.name == "from-stdin"


def test_env_types_like_the_file() -> None:
    cfg = load_dict({}, env={"SHIPPER_BUFFER_RETENTION_SECS": "10m", "SHIPPER_BUFFER_MAX_BYTES": "64MiB",
                             "SHIPPER_SELECT_OPT_IN": "yes", "SHIPPER_SELECT_INCLUDE_NAMES": '["a,b", "c"]',
                             "SHIPPER_BUFFER_SEGMENT_BYTES": "1_048_576"})
    assert cfg.buffer.retention_secs == 600.0 and cfg.buffer.max_bytes == 64 * 1024 * 1024
    assert cfg.select.opt_in is True and cfg.select.include_names == ["a,b", "c"]
    assert cfg.buffer.segment_bytes == 1 << 20


def test_dollar_var_in_the_file_is_typed_by_its_key() -> None:
    cfg = load_dict({"buffer": {"retention_secs": "${R}", "compression": "${C:-true}"}}, env={"R": "600"})
    assert cfg.buffer.retention_secs == 600.0 and cfg.buffer.compression is True


@pytest.mark.parametrize(("env", "var"), [
    ({"SHIPPER_BUFFER_RETENTION_SECS": "soon"}, "SHIPPER_BUFFER_RETENTION_SECS"),
    ({"SHIPPER_SELECT_OPT_IN": "maybe"}, "SHIPPER_SELECT_OPT_IN"),
    ({"SHIPPER_BUFFER_MAX_BITES": "1"}, "SHIPPER_BUFFER_MAX_BITES"),
    ({"SHIPPER_SINKS_NOPE_PATH": "/x"}, "SHIPPER_SINKS_NOPE_PATH"),
    ({"SHIPPER_SINKS_OUT_TYPE": "file", "SHIPPER_SINKS_OUT_PTH": "/x"}, "SHIPPER_SINKS_OUT_PTH"),
])
def test_a_bad_variable_is_named(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict({}, env=env)
    assert var in str(e.value)


def test_variables_that_are_not_keys_are_left_alone() -> None:
    cfg = load_dict({}, env={"SHIPPER_CONFIG": "/x", "SHIPPER_TEST_SEED": "3", "SHIPPER_FUZZ_EXAMPLES": "9"})
    assert list(cfg.sinks) == ["file"]


def test_a_sink_from_env_replaces_the_default_sink() -> None:
    cfg = load_dict({}, env={"SHIPPER_SINKS_CENTRAL_TYPE": "syslog", "SHIPPER_SINKS_CENTRAL_ADDRESS": "tcp://h:1"})
    assert list(cfg.sinks) == ["central"]
    cfg = load_dict({}, env={"SHIPPER_SINKS_FILE_PATH": "/srv/out.jsonl"})  # the default sink, moved
    assert cfg.sinks["file"].path == "/srv/out.jsonl"  # type: ignore[attr-defined]


def test_explain_is_toml_with_every_key_and_its_variable() -> None:
    text = explain()
    doc = tomllib.loads(text)
    for f in dataclasses.fields(Config):
        if f.name == "sinks":
            continue
        for var in env_keys(typing.get_type_hints(Config)[f.name], f"SHIPPER_{f.name.upper()}"):
            assert f"env {var}" in text
    assert doc["buffer"]["compression"] is False and doc["docker"]["discovery"] == "api"
    assert "True" not in text.replace("true", "")  # no Python literals
    for kind in SINKS:
        assert f"[sinks.{kind}]" in text


def test_print_is_the_effective_config_as_toml_with_secrets_masked() -> None:
    env = {"SHIPPER_BUFFER_MAX_EVENTS": "77", "SHIPPER_SINKS_OUT_TYPE": "syslog",
           "SHIPPER_SINKS_OUT_ADDRESS": "tcp://user:hunter2@h:514", "SHIPPER_STATE_DIR": "/srv/state",
           "SHIPPER_DOCKER_HOST": "unix:///run/docker.sock"}
    cfg = load_dict({}, env=env)
    text = print_config(cfg)
    assert "hunter2" not in text and MASK in text
    back = load_dict(tomllib.loads(text.replace(MASK, "hunter2")), env={})
    assert back == cfg


def test_print_spells_out_the_defaults_that_depend_on_the_machine() -> None:
    doc = tomllib.loads(print_config(load_dict({}, env={})))
    assert doc["state"]["dir"].startswith("/") and doc["docker"]["host"].startswith(("unix://", "tcp://"))


@dataclasses.dataclass(frozen=True)
class Auth:
    token_env: str = ""


@dataclasses.dataclass(frozen=True)
class Root:
    auth: Auth = dataclasses.field(default_factory=Auth)


def test_a_variable_a_config_names_for_a_secret_is_not_a_key() -> None:
    """`token_env = "SHIPPER_ADMIN_TOKEN"` names a variable under a section's prefix: it is not a typo."""
    env = {"SHIPPER_AUTH_TOKEN": "s3cret"}
    with pytest.raises(ConfigError) as e:
        env_overlay({}, Root, env, "SHIPPER")
    assert e.value.key == "SHIPPER_AUTH_TOKEN"
    data = {"auth": {"token_env": "SHIPPER_AUTH_TOKEN"}}
    assert env_overlay(data, Root, env, "SHIPPER", ignore=named_variables(data)) == data


def test_check_print_from_env_only() -> None:
    env = {"PATH": "/usr/bin:/bin", "SHIPPER_STATE_DIR": "/tmp", "SHIPPER_SINKS_OUT_TYPE": "null",
           "SHIPPER_DOCKER_HOST": "unix:///nonexistent.sock"}
    r = subprocess.run([sys.executable, "-m", "shipper", "check", "--print"], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    assert doc["sinks"]["out"]["type"] == "null" and doc["state"]["dir"] == "/tmp"
    assert "config ok" in r.stderr and "3 SHIPPER_* variables" in r.stderr


def _paths(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init and f.name != "sinks":
            if dataclasses.is_dataclass(hints[f.name]):
                out += _paths(hints[f.name], (*prefix, f.name))
            else:
                out.append((*prefix, f.name))
    return out


@pytest.mark.parametrize("kind", ["(sections)", *sorted(SINKS)])
def test_no_two_keys_share_a_variable(kind: str) -> None:
    """`a.b_c` and `a_b.c` would both be SHIPPER_A_B_C: the names must stay apart, sections and every sink."""
    if kind == "(sections)":
        cls: type = Config
    else:
        try:
            cls = sink_config_class(kind)
        except ConfigError as e:
            pytest.skip(f"sink type {kind} is not installed here: {e}")
    paths = _paths(cls)
    assert len(env_keys(cls, "SHIPPER", skip=("sinks",))) == len(paths)
