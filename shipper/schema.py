"""Typed config: TOML tables, environment variables and `--set` in, frozen dataclasses out, every mistake named
by its dotted key.

The machinery only; it knows no section. A component declares its config as a frozen dataclass whose
fields carry a default and a one-line doc (`doc(...)`, with `low`/`high` bounds for a number). `build(cls,
data, key)` checks types, turns strings into enums, sizes ('64KiB') and durations ('10m') at load time,
checks every number against its bounds (by default: not negative, finite) and rejects unknown keys, so a
typo fails at start and says where, then calls the instance's `validate(key)` when it has one.

Text from outside a TOML file is an `EnvText`: an environment variable (`env_overlay`), a `--set key=value`
(`set_overlay`), or a TOML string in which `${VAR}` was expanded (`expand_env`). It is parsed by the type of
the key it lands on, as the file would have typed it: numbers, sizes, durations, booleans, lists
(comma-separated or a TOML array), tables (a TOML inline table). The environment variable of a key is its
dotted path in capitals joined by `_` under a prefix (`SHIPPER_BUFFER_MAX_BYTES`), derived from the
dataclasses, so a component's config is settable from the environment without it doing anything.
`describe` lists a class's keys, defaults (as TOML) and docs for `shipper check --explain`; `to_toml` writes
a built config back as TOML for `check --print`, secrets masked. Imports nothing of shipper but its errors,
so any module may declare a config without importing the sections (`shipper.config`) or the sinks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import field
from typing import Any, TypeVar

from shipper.errors import ConfigError

T = TypeVar("T")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
INT_MAX = 2**62  # the upper bound of an integer key that names none
FLOAT_MAX = 1e9  # the upper bound of a number key that names none (about 31 years in seconds)


class EnvText(str):
    """A value given as text outside the TOML file; `origin` says where (the variable, `--set k=v`)."""

    origin: str

    def __new__(cls, text: str, origin: str) -> EnvText:
        s = super().__new__(cls, text)
        s.origin = origin
        return s


def doc(default: Any, text: str, *, low: float | None = None, high: float | None = None,
        secret: bool = False) -> Any:
    """A dataclass field with a default and a one-line description (shown by `shipper check --explain`).

    `low`/`high` bound a number (default: 0 and a large cap); `secret` masks the value in `check --print`
    (keys named like a password, token or secret are masked without it)."""
    meta: dict[str, Any] = {"doc": text}
    if low is not None or high is not None:
        meta["range"] = (low, high)
    if secret:
        meta["secret"] = True
    if isinstance(default, list | dict):
        return field(default_factory=default.copy, metadata=meta)
    return field(default=default, metadata=meta)


def expand_env(value: Any, key: str = "", env: typing.Mapping[str, str] | None = None) -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string of a parsed TOML tree. A string in which something
    was expanded becomes an EnvText, typed by its key like an environment variable (`"${RETENTION}"` can be
    a number)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        used: list[str] = []

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            used.append(name)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable {name} is not set (use ${{{name}:-default}})")
        out = _VAR.sub(sub, value)
        return EnvText(out, "${" + "}, ${".join(used) + "}") if used else out
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]", env) for i, v in enumerate(value)]
    return value


# --- text to typed values ---------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'1.5', '500ms', '10s', '5m', '2h', '1d' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()]


def _toml_value(text: str, key: str, origin: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(key, f"{origin}: not a TOML value: {text!r} ({e})") from None


def _is_text_type(tp: Any) -> bool:
    return tp is str or tp is Any or typing.get_origin(tp) is typing.Literal or (
        isinstance(tp, type) and issubclass(tp, enum.Enum))


def _from_text(tp: Any, text: EnvText, key: str) -> Any:
    """Text given for a key of type `tp`, as the TOML file would have typed it."""
    origin, raw = text.origin, text.strip()
    if tp is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(key, f"{origin}: expected true or false, got {str(text)!r}")
    if tp is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            pass
        try:
            return parse_size(raw)
        except ValueError:
            raise ConfigError(key, f"{origin}: expected an integer or a size (64MiB), got {str(text)!r}") from None
    if tp is float:
        try:
            return float(raw.replace("_", ""))
        except ValueError:
            pass
        try:
            return parse_duration(raw)
        except ValueError:
            raise ConfigError(key, f"{origin}: expected a number or a duration (30s, 5m, 2h), "
                                   f"got {str(text)!r}") from None
    origin_tp = typing.get_origin(tp)
    if origin_tp is list:
        if raw.startswith("["):
            return _toml_value(raw, key, origin)
        return [EnvText(item.strip(), origin) for item in raw.split(",") if item.strip()]
    if origin_tp is dict or (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        if raw.startswith("{"):
            return _toml_value(raw, key, origin)
        raise ConfigError(key, f"{origin}: expected a TOML inline table ({{ a = 1 }}), got {str(text)!r}")
    return text


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
    if isinstance(value, EnvText) and not _is_text_type(tp):
        value = _from_text(tp, value, key)
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
        return str(value) if isinstance(value, str) else value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(str(value) if isinstance(value, str) else value)
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
        if isinstance(value, str) and not isinstance(value, bool):
            try:
                return parse_duration(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(key, f"number too large: {str(value)[:40]}...") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(key, f"unsupported config type {tp!r}")  # pragma: no cover - a programming error


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _check_range(f: dataclasses.Field[Any], value: Any, key: str) -> None:
    """Every number is finite and within its field's bounds; a field that names none is at least 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    low, high = f.metadata.get("range", (None, None))
    if low is None and high is None:
        if value < 0:
            raise ConfigError(key, f"must not be negative, got {_num(value)}")
        if value > (INT_MAX if isinstance(value, int) else FLOAT_MAX):
            raise ConfigError(key, f"is too large: {_num(value)}")
        return
    low = 0 if low is None else low
    high = (INT_MAX if isinstance(value, int) else FLOAT_MAX) if high is None else high
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {_num(low)} and {_num(high)}, got {_num(value)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


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
        _check_range(fields[name], kwargs[name], sub)
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


# --- checks a component's validate() shares ----------------------------------------------------------------


@contextlib.contextmanager
def naming(key: str) -> Iterator[None]:
    """A ValueError raised inside becomes a ConfigError naming `key`: parsers say what is wrong, not where."""
    try:
        yield
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def parse_each(key: str, texts: Sequence[str], parse: Callable[[str], T]) -> list[T]:
    """`parse` of each item of the list at `key`; a ValueError becomes a ConfigError naming the key when the list
    has one item, else the item (`key[i]`)."""
    out = []
    for i, text in enumerate(texts):
        with naming(key if len(texts) == 1 else f"{key}[{i}]"):
            out.append(parse(text))
    return out


# --- environment variables and --set ----------------------------------------------------------------------


def _is_table(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def env_keys(cls: type, prefix: str, skip: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """Every key of `cls` (tables followed into) by its environment variable: {'SHIPPER_BUFFER_MAX_BYTES':
    ('buffer', 'max_bytes'), ...}. Fields named in `skip` are left out (the caller maps them itself)."""
    out: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        var = f"{prefix}_{f.name.upper()}" if prefix else f.name.upper()
        if _is_table(hints[f.name]):
            out.update({v: (f.name, *p) for v, p in env_keys(hints[f.name], var).items()})
        else:
            out[var] = (f.name,)
    return out


def set_path(data: dict[str, Any], path: Iterable[str], value: Any, key: str = "") -> None:
    """data[a][b][c] = value, making tables on the way; a non-table in the way is a ConfigError."""
    *parents, last = list(path)
    where: list[str] = []
    for p in parents:
        where.append(p)
        nxt = data.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(where), f"is not a table, so {key or '.'.join([*where, last])} cannot be set")
        data = nxt
    data[last] = value


def named_variables(data: Any) -> set[str]:
    """The environment variables a config names as the place of a secret (`token_env = "SHIPPER_ADMIN_TOKEN"`):
    the values of its `*_env` keys. They are not keys, even under a section's prefix."""
    found: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and k.endswith("_env") and isinstance(v, str) and v:
                found.add(str(v))
            else:
                found |= named_variables(v)
    return found


def env_overlay(data: dict[str, Any], cls: type, env: Mapping[str, str], prefix: str,
                skip: Iterable[str] = (), ignore: Iterable[str] = ()) -> dict[str, Any]:
    """`data` with every `PREFIX_<SECTION>_<KEY>` variable of `env` set over it as EnvText. A variable under a
    known section that names no key is a ConfigError naming the variable (a typo must not be ignored), unless
    it is in `ignore` (see named_variables); variables under other names (SHIPPER_CONFIG) are not keys and
    are left alone."""
    ignored = set(ignore)
    keys = env_keys(cls, prefix, skip)
    tables = {f"{prefix}_{f.name.upper()}_" for f in dataclasses.fields(cls)
              if f.name not in skip and _is_table(typing.get_type_hints(cls)[f.name])}
    for var in sorted(env):
        path = keys.get(var)
        if path is not None:
            set_path(data, path, EnvText(env[var], var))
        elif var not in ignored and any(var.startswith(t) for t in tables):
            table = next(t for t in tables if var.startswith(t))
            near = sorted(k for k in keys if k.startswith(table))
            raise ConfigError(var, f"no such key (known in this section: {', '.join(near)})")
    return data


def set_overlay(data: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """`--set section.key=value` over `data`, each value an EnvText typed by its key."""
    for a in assignments:
        dotted, sep, value = a.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted or any(not p for p in dotted.split(".")):
            raise ConfigError(dotted or a, f"--set wants section.key=value, got {a!r}")
        set_path(data, dotted.split("."), EnvText(value, f"--set {dotted}"), dotted)
    return data


# --- documentation and printing -------------------------------------------------------------------------

_SECRET = re.compile(r"(password|passwd|secret|token|credential|api_?key|sasl_plain|private_key)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]+):([^@/\s]+)@")
MASK = "********"


def toml_value(v: Any) -> str:
    """A Python config value written as TOML (what `--explain` and `--print` show can be pasted in a file)."""
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out) + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return toml_value({f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.init})
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default as TOML, doc) for every field of a config class, for docs and `shipper check --explain`;
    a field with no default shows as ''."""
    rows = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        shown = "" if default is None else toml_value(default)
        rows.append((prefix + f.name, shown, f.metadata.get("doc", "")))
    return rows


def explain_table(cls: type, table: str, env_prefix: str, skip: Iterable[str] = (),
                  values: Mapping[str, str] | None = None) -> list[str]:
    """`[table]` and its keys as TOML, each under a comment with its doc and environment variable; tables
    inside it follow as `[table.sub]`. `values` overrides the shown value of some keys (a sink's type)."""
    lines = [f"[{table}]"]
    nested = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        var = f"{env_prefix}_{f.name.upper()}"
        if _is_table(hints[f.name]):
            nested.append((f, var))
            continue
        bounds = f.metadata.get("range")
        extra = f"; {_num(bounds[0]) if bounds[0] is not None else '0'}..{_num(bounds[1])}" \
            if bounds and bounds[1] is not None else ""
        lines.append(f"# {f.metadata.get('doc', '')} (env {var}{extra})")
        shown = (values or {}).get(f.name)
        default = _default(f)
        if shown is not None:
            lines.append(f"{f.name} = {shown}")
        elif default is None:
            lines.append(f"# {f.name} =   (no default)")
        else:
            lines.append(f"{f.name} = {toml_value(default)}")
    for f, var in nested:
        lines.append("")
        lines += explain_table(hints[f.name], f"{table}.{f.name}", var)
    return lines


def is_secret(name: str, f: dataclasses.Field[Any] | None = None) -> bool:
    """Marked secret, or named like one (`sasl_password`); a key that says where a secret is (`token_file`,
    `password_env`) is not one."""
    if f is not None and f.metadata.get("secret"):
        return True
    return bool(_SECRET.search(name)) and not name.endswith(("_file", "_env", "_path"))


def mask_value(name: str, value: Any, f: dataclasses.Field[Any] | None = None) -> Any:
    """The value as `check --print` shows it: a secret masked, a password in a URL masked."""
    if is_secret(name, f) and value not in ("", None):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", value)
    if isinstance(value, list):
        return [mask_value(name, v) for v in value]
    return value


def to_toml_table(obj: Any, table: str) -> list[str]:
    """A built config dataclass as a `[table]` of TOML, secrets masked; tables inside it as `[table.sub]`."""
    lines = [f"[{table}]"]
    nested = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested.append((f.name, value))
            continue
        if value is None:
            continue
        lines.append(f"{f.name} = {toml_value(mask_value(f.name, value, f))}")
    for name, value in nested:
        lines += ["", *to_toml_table(value, f"{table}.{name}")]
    return lines
