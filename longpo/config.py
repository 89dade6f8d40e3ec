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
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
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


def build_config(cls: type[C], values: dict, where: str = "config") -> C:
    """Construct dataclass `cls` from a nested dict, naming any unknown key and the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = build_config(tp, value, f"{where}.{name}")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif tp is float and isinstance(value, str):  # YAML 1.1 reads 1e7 (no dot, no sign) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {name}={value!r} is not a number") from None
        elif tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif typing.get_origin(tp) in (list, tuple) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        kwargs[name] = value
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
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys")
        values = loaded
    values = merge_dicts(values, parse_overrides(list(overrides or [])))
    return build_config(cls, values, where=str(path) if path else "config")


def config_to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def write_resolved_config(cfg: Any, out_dir: str | os.PathLike, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config beside a stage's outputs (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, target)
    return target


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
