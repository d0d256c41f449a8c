"""Typed config: TOML tables in, frozen dataclasses out, every mistake named by its dotted key.

The machinery only; it knows no section. A component declares its config as a frozen dataclass whose
fields carry a default and a one-line doc (`doc(...)`). `build(cls, data, key)` checks types, turns strings
into enums and sizes ('64KiB') at load time and rejects unknown keys, so a typo fails at start and says
where, then calls the instance's `validate(key)` when it has one. `expand_env` expands `${VAR}` and
`${VAR:-default}` in string values before anything else looks at them; `describe` lists a class's keys,
defaults and docs for `shipper check --explain`. Imports nothing of shipper but its errors, so any module
may declare a config without importing the sections (`shipper.config`) or the sinks.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
import typing
from dataclasses import field
from typing import Any, TypeVar

from shipper.errors import ConfigError

T = TypeVar("T")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a one-line description (shown by `shipper check --explain`)."""
    if isinstance(default, list | dict):
        return field(default_factory=default.copy, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def expand_env(value: Any, key: str = "", env: typing.Mapping[str, str] | None = None) -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string of a parsed TOML tree."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable {name} is not set (use ${{{name}:-default}})")
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]", env) for i, v in enumerate(value)]
    return value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _convert(a, value, key)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(key, "; ".join(errors))
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"must be one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(key, f"must be one of {_type_name(tp)}, got {value!r}") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                try:
                    return parse_size(value)
                except ValueError:
                    pass
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(key, f"number too large: {str(value)[:40]}...") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(key, f"unsupported config type {tp!r}")  # pragma: no cover - a programming error


def build(cls: type[T], data: dict[str, Any], key: str = "") -> T:
    """Build config dataclass `cls` from a TOML table, naming `key.field` in every error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        if name not in fields or not fields[name].init:
            known = ", ".join(sorted(n for n, f in fields.items() if f.init))
            raise ConfigError(sub, f"unknown key (known keys: {known})")
        kwargs[name] = _convert(hints[name], value, sub)
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(key, str(e)) from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(key)
    return obj


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
          "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}


def parse_size(text: str) -> int:
    """'64KiB', '1m', '512' -> bytes."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not size < 2**63:
        raise ValueError(f"size too large: {text[:40]!r}")
    return int(size)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field of a config class, for docs and `shipper check --explain`."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, enum.Enum):
            default = default.value
        rows.append((prefix + f.name, repr(default), f.metadata.get("doc", "")))
    return rows
