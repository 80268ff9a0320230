"""Configs are dataclasses, read from small YAML files with strict merging.

An unknown key or a value of the wrong type is an InputError that names the file and the key.
Command-line overrides are `key=value` strings with dotted keys for nested sections
(`train.lr=0.01`); their values are parsed as YAML scalars. The resolved config is saved
next to every output it produced (`save_config`).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from backbone.errors import InputError
from backbone.io import atomic_write_text

T = TypeVar("T")


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check `value` against annotation `tp`; return (ok, value converted where lossless)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = _type_ok(value, arg)
            if ok:
                return True, conv
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        out = []
        for v in value:
            ok, conv = _type_ok(v, item_tp)
            if not ok:
                return False, value
            out.append(conv)
        return True, (list(out) if origin is list else tuple(out))
    if origin is dict:
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return True, float(value)  # PyYAML (YAML 1.1) reads "1e-4" without a dot as a string
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if tp is bool:
        return isinstance(value, bool), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key(key: str, known: list[str], prefix: str) -> str:
    """'unknown key ...' with the closest known key, or every key when none is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(known)}"
    return f"unknown key '{prefix}{key}' ({hint})"


def config_from_dict(cls: type[T], data: dict, where: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, filling missing keys with defaults; strict."""
    if not isinstance(data, dict):
        raise InputError(where, f"section '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise InputError(where, _unknown_key(str(key), sorted(fields), prefix))
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = config_from_dict(tp, value or {}, where, f"{prefix}{name}.")
            continue
        ok, conv = _type_ok(value, tp)
        if not ok:
            raise InputError(where, f"key '{prefix}{name}' must be {_type_name(tp)}, got {value!r}")
        kwargs[name] = conv
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """The config as plain YAML-ready data."""
    out = dataclasses.asdict(cfg)

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(out)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data["a"]["b"]["c"] = value for key "a.b.c", making the sections that are missing."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError("<command line>", f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it: sections merge key by key, any other value replaces.
    Neither input is changed."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn `["train.lr=0.01", "model.width=0.5"]` into a nested dict."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise InputError("<command line>", f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key.strip(), value)
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; InputError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(path, "malformed YAML: " + " ".join(str(e).split())) from None  # one line
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "config must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Sequence[str] = (), base: dict | None = None) -> T:
    """Defaults of `cls` ← `base` dict ← YAML file `path` ← `key=value` overrides."""
    data = dict(base or {})
    where = "<defaults>"
    if path is not None:
        data = deep_merge(data, read_yaml(path))
        where = str(path)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        where = f"{where} + command line" if path is not None else "<command line>"
    return config_from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML beside the outputs it produced."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
