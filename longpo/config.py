"""Stage configs: one `kw_only` dataclass per stage, filled from YAML plus `key=value` overrides.

Every field carries its help text in `field(metadata={"help": ...})`; `longpo <stage> --help` prints
them. Nested dataclass fields are addressed with dots (`sampling.temperature=0.7`). The resolved
config is written next to every output with `write_resolved_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longpo import recipes
from longpo.errors import InputError
from longpo.files import atomic_write_text

C = TypeVar("C")


class ConfigError(InputError):
    """A config file or override that cannot be turned into the stage's config."""


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """`dataclasses.field` with a help string; mutable defaults go through `default_factory`."""
    if isinstance(default, (list, dict)):
        value = default
        kw["default_factory"] = lambda: type(value)(value)
        return dataclasses.field(metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["a=1", "b.c=x"]` -> `{"a": 1, "b": {"c": "x"}}`; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                              f"quote it, e.g. {key}='...'") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def merge_dicts(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str, name: str = "") -> Any:
    """`value` checked against annotation `tp` (and converted where lossless); ConfigError names the key.

    bool takes only true/false; int takes integers (4096.0 -> 4096, not 4096.5); float takes numbers
    (and YAML 1.1's "1e7" strings); str takes strings (numbers are spelled); lists take a list or a
    comma-separated string, element by element; dicts a mapping; dataclasses a mapping of their keys;
    Optional[...] also None.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return check_value(value, options[0], where, name)
        for option in options:
            try:
                return check_value(value, option, where, name)
            except ConfigError:
                continue
        raise ConfigError(f"{where}={value!r} is none of {[_type_name(a) for a in options]}")
    if value is None:
        raise ConfigError(f"{where}: null is not allowed; give a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build_config(tp, value, where.replace(": ", "."))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} is not a boolean; write true or false")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} is not an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e7 (no dot, no sign) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r} is not a number")
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} is not a string")
        return value
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} is not a list")
        if args and args[-1] is not Ellipsis and origin is list:
            value = [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return list(value) if (origin or tp) is list else tuple(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} is not a mapping")
        return value
    return value


def build_config(cls: type[C], values: dict, where: str = "config") -> C:
    """Construct dataclass `cls` from a nested dict, naming any unknown key and the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: check_value(value, hints[name], f"{where}: {name}", name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> C:
    """Read `path` (a YAML file, or a packaged recipe's name: `tiny`) if given, apply `key=value` overrides, validate into `cls`."""
    values: dict = {}
    if path is not None:
        try:
            path = recipes.resolve(path)  # a file as given, else the packaged recipe of that name
        except recipes.RecipeError as e:
            raise ConfigError(str(e)) from None
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: YAML syntax error ({getattr(e, 'problem', None) or e}); fix that "
                              f"line") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys")
        values = recipes.installed_paths(loaded) if path.is_relative_to(recipes.HERE) else loaded
    values = merge_dicts(values, parse_overrides(list(overrides or [])))
    return build_config(cls, values, where=str(path) if path else "config")


def config_to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def write_resolved_config(cfg: Any, out_dir: str | os.PathLike, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config beside a stage's outputs (atomically)."""
    return atomic_write_text(Path(out_dir) / name, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_help(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per field, `name (type, default): help`, nested sections expanded.

    A nested section's defaults are read from the instance its field's default (or default_factory)
    builds, so `question_sampling.temperature` shows the stage's 0.7, not the `Sampling` class's own
    default; `defaults` is that instance while recursing."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = dataclasses.MISSING
        if defaults is not None:
            value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            nested = value if dataclasses.is_dataclass(value) else None
            lines.append(f"  {prefix}{f.name}: {f.metadata.get('help', '')}")
            lines.extend(config_help(tp, prefix=f"{prefix}{f.name}.", defaults=nested))
            continue
        default = "required" if value is dataclasses.MISSING else repr(value)
        type_name = getattr(tp, "__name__", str(tp))
        lines.append(f"  {prefix}{f.name} ({type_name}, default {default}): {f.metadata.get('help', '')}")
    return lines
