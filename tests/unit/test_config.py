from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from shipper.config import Config, Discovery, MultilineMode, WhenFull, load, load_dict
from shipper.errors import ConfigError
from shipper.schema import describe, expand_env, parse_size
from shipper.sinks import SINKS, sink_config_class

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((ROOT / "config").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_file_loads(path: Path) -> None:
    cfg = load(path, env={})
    assert cfg.sinks


def test_example_documents_every_key() -> None:
    """Every section key in config/shipper.example.toml; every sink key there or in the sink's own example."""
    def keys_in(paths: list[Path]) -> set[str]:
        text = "\n".join(p.read_text() for p in paths)
        return set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))

    main = keys_in([ROOT / "config" / "shipper.example.toml"])
    every = keys_in(sorted((ROOT / "config").glob("*.example.toml")))
    missing = []
    for f in dataclasses.fields(Config):
        if f.name == "sinks":
            continue
        for key, _, _ in describe(typing.get_type_hints(Config)[f.name]):
            if key not in main:
                missing.append(f"{f.name}.{key}")
    for kind in SINKS:
        for key, _, _ in describe(sink_config_class(kind)):
            if key not in every:
                missing.append(f"sinks.{kind}.{key}")
    assert not missing, f"keys missing from config/*.example.toml: {missing}"


def test_defaults_work_out_of_the_box() -> None:
    cfg = load(None)
    assert cfg.docker.discovery is Discovery.API
    assert cfg.docker.resolved_host().startswith(("unix://", "tcp://"))
    assert list(cfg.sinks) == ["file"]
    assert cfg.buffer.when_full is WhenFull.BLOCK


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"docker": {"discovery": "carrier-pigeon"}}, "docker.discovery"),
        ({"docker": {"hots": "x"}}, "docker.hots"),
        ({"bogus": {}}, "bogus"),
        ({"input": {"max_event_bytes": "lots"}}, "input.max_event_bytes"),
        ({"input": {"max_event_bytes": 10}}, "input.max_event_bytes"),
        ({"multiline": {"mode": "pattern"}}, "multiline.start_pattern"),
        ({"multiline": {"mode": "pattern", "start_pattern": "("}}, "multiline.start_pattern"),
        ({"sinks": {"out": {"type": "carrier"}}}, "sinks.out.type"),
        ({"sinks": {"out": {"path": "/tmp/x"}}}, "sinks.out.type"),
        ({"sinks": {"out": {"type": "file", "pth": "/tmp/x"}}}, "sinks.out.pth"),
        ({"sinks": {"out": {"type": "file", "max_files": "three"}}}, "sinks.out.max_files"),
        ({"select": {"opt_in": "yes"}}, "select.opt_in"),
        ({"docker": {"host": "ftp://nope"}}, "docker.host"),
        ({"buffer": {"when_full": "explode"}}, "buffer.when_full"),
    ],
)
def test_bad_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_dict(data, env={})
    assert e.value.key == key
    assert key in str(e.value)


def test_enums_and_sizes_parsed_at_load() -> None:
    cfg = load_dict({"multiline": {"mode": "off"}, "input": {"max_event_bytes": "2MiB"},
                     "sinks": {"x": {"type": "null"}}}, env={})
    assert cfg.multiline.mode is MultilineMode.OFF
    assert cfg.input.max_event_bytes == 2 * 1024 * 1024
    assert parse_size("64k") == 64000 and parse_size("64KiB") == 65536 and parse_size("12") == 12


def test_env_expansion() -> None:
    env = {"OUT": "/data/out.jsonl", "EMPTY": ""}
    assert expand_env("${OUT}", env=env) == "/data/out.jsonl"
    assert expand_env("${NOPE:-fallback}", env=env) == "fallback"
    assert expand_env("${EMPTY:-fallback}", env=env) == "fallback"
    assert expand_env("a-${OUT}-b", env=env) == "a-/data/out.jsonl-b"
    with pytest.raises(ConfigError) as e:
        expand_env({"sinks": {"f": {"path": "${NOPE}"}}}, env=env)
    assert e.value.key == "sinks.f.path" and "NOPE" in str(e.value)
    cfg = load_dict({"sinks": {"f": {"type": "file", "path": "${OUT}"}}}, env=env)
    assert cfg.sinks["f"].path == "/data/out.jsonl"  # type: ignore[attr-defined]


def test_docker_env_honoured_when_keys_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", "/certs")
    cfg = load_dict({}, env={})
    assert cfg.docker.resolved_host() == "tcp://10.0.0.5:2376"
    assert cfg.docker.resolved_tls() == ("/certs/ca.pem", "/certs/cert.pem", "/certs/key.pem")
    cfg = load_dict({"docker": {"host": "unix:///other.sock", "tls_ca": "/x/ca.pem"}}, env={})
    assert cfg.docker.resolved_host() == "unix:///other.sock"
    assert cfg.docker.resolved_tls()[0] == "/x/ca.pem"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipper", "check", *args], capture_output=True, text=True)


def test_check_command_good_and_bad(tmp_path: Path) -> None:
    good = _check("--config", str(ROOT / "config" / "shipper.example.toml"))
    assert good.returncode == 0, good.stderr
    assert "config ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[sinks.out]\ntype = "file"\nmax_byts = 5\n')
    r = _check("--config", str(bad))
    assert r.returncode == 2
    assert "sinks.out.max_byts" in r.stderr and "unknown key" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[docker\n")
    r = _check("--config", str(broken))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = _check("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


# --- imports go one way: shipper.config -> shipper.sinks -> shipper.schema, never back -----------------------


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (lazy imports in functions too), relative ones resolved."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # what `from . import` names
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "shipper" / "sinks").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_sinks_never_import_the_config_sections(path: Path) -> None:
    assert not {m for m in _imports(path) if m == "shipper.config" or m.startswith("shipper.config.")}


def test_schema_imports_only_the_errors() -> None:
    ours = {m for m in _imports(ROOT / "shipper" / "schema.py") if m.split(".")[0] == "shipper"}
    assert ours <= {"shipper.errors", "shipper.errors.ConfigError"}


def test_sinks_import_without_the_config_sections() -> None:
    modules = ["shipper.schema", "shipper.sinks", "shipper.sinks.base",
               *sorted({target.partition(":")[0] for target in SINKS.values()})]
    code = f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n" \
           "print('shipper.config' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_buffers_byte_limit_defaults_by_type() -> None:
    """max_bytes = 0 (the default): 16 MiB of events in memory, 256 MiB of spool on disk; a value wins."""
    assert load_dict({}).buffer.limit_bytes == 16 * 1024 * 1024
    assert load_dict({"buffer": {"type": "disk"}}).buffer.limit_bytes == 256 * 1024 * 1024
    assert load_dict({"buffer": {"type": "disk", "max_bytes": "1GiB"}}).buffer.limit_bytes == 1 << 30
