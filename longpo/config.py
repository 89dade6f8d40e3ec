"""Stage configs: one `kw_only` dataclass per stage, filled from YAML plus `key=value` overrides.

Every field carries its help text in `field(metadata={"help": ...})`; `longpo <stage> --help` prints
them. Nested dataclass fields are addressed with dots (`sampling.temperature=0.7`). The resolved
config is written next to every output with `write_resolved_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longpo import recipes
from longpo.errors import InputError
from longpo.files import atomic_write_text

C = TypeVar("C")
# Where each given key came from: dotted key ("max_length", "filters.min_words", "iterations[0]") ->
# "command line" or "FILE:LINE". Errors about a key name it, so a bad override is never blamed on the recipe.
Sources = dict[str, str]
COMMAND_LINE = "command line"


class ConfigError(InputError):
    """A config file or override that cannot be turned into the stage's config."""


class ConfigRuleError(ConfigError):
    """A config's own check (`__post_init__`) failed: every key exists and has its type, but a value is
    out of range or the values do not fit together."""


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """`dataclasses.field` with a help string; mutable defaults go through `default_factory`."""
    if isinstance(default, (list, dict)):
        value = default
        kw["default_factory"] = lambda: type(value)(value)
        return dataclasses.field(metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """`tree` with `value` at the dotted key ("a.b.c"), its sections made where absent."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str], sources: Sources | None = None) -> dict:
    """`["a=1", "b.c=x"]` -> `{"a": 1, "b": {"c": "x"}}`; values are parsed as YAML scalars.

    With `sources`, every key given (and every key inside a mapping given) is recorded as the command line's."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{COMMAND_LINE}: {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{COMMAND_LINE}: {item}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                              f"quote it, e.g. {key}='...'") from None
        set_dotted(tree, key.strip(), value)
        if sources is not None:
            sources.update(dict.fromkeys(_key_paths(value, key.strip()), COMMAND_LINE))
    return tree


def _key_paths(value: Any, path: str) -> list[str]:
    """`path` and the dotted path of every key nested in `value`."""
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _key_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [path] + [p for i, v in enumerate(value) for p in _key_paths(v, f"{path}[{i}]")]
    return [path]


def key_lines(node: yaml.Node | None, path: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line where the YAML node tree `node` (`yaml.compose`) gives it."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            lines[sub] = key.start_mark.line + 1
            lines.update(key_lines(value, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            lines.update(key_lines(item, f"{path}[{i}]"))
    return lines


def source_of(sources: Sources | None, path: str) -> str | None:
    """Where key `path` (or the section holding it, or else a key inside it) was given; None when not given."""
    inside = next((where for key, where in (sources or {}).items() if key.startswith((f"{path}.", f"{path}["))), None)
    while sources:
        if path in sources:
            return sources[path]
        parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)  # a.b[2].c -> a.b[2] -> a.b -> a
        if parent == path:
            return inside
        path = parent
    return inside


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


def check_value(value: Any, tp: Any, where: str, name: str = "", *, sources: Sources | None = None, path: str = "",
                keys_help: str = "--help") -> Any:
    """`value` checked against annotation `tp` (and converted where lossless); ConfigError names the key.

    bool takes only true/false; int takes integers (4096.0 -> 4096, not 4096.5); float takes numbers
    (and YAML 1.1's "1e7" strings); str takes strings (numbers are spelled); lists take a list or a
    comma-separated string, element by element; dicts a mapping; dataclasses a mapping of their keys;
    Optional[...] also None. `sources`, `path` and `keys_help` reach a nested dataclass (see build_config).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return check_value(value, options[0], where, name, sources=sources, path=path, keys_help=keys_help)
        for option in options:
            try:
                return check_value(value, option, where, name, sources=sources, path=path, keys_help=keys_help)
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
        return build_config(tp, value, where.removesuffix(f": {path}"), sources=sources, keys_help=keys_help,
                            prefix=f"{path}.")
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


def build_config(cls: type[C], values: dict, where: str = "config", *, sources: Sources | None = None,
                 keys_help: str = "--help", prefix: str = "") -> C:
    """Construct dataclass `cls` from a nested dict; an error names the key and where it was given.

    `sources` (from `read_config`) says where each key came from, the command line or a file's line; a
    key not in it is named after `where`. An unknown key gets the closest valid one ("did you mean") and
    a pointer to `keys_help`, not the list of every key. `prefix` is the dotted path of a nested section."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source_of(sources, prefix.rstrip('.')) or where}: {prefix.rstrip('.') or 'config'}: "
                          f"expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        problems = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            problems.append(f"{source_of(sources, prefix + str(key)) or where}: unknown key {prefix}{key}{hint}")
        raise ConfigError(f"{'; '.join(problems)} (`{keys_help}` lists the keys)")
    hints = typing.get_type_hints(cls)
    kwargs = {name: check_value(value, hints[name], f"{source_of(sources, prefix + name) or where}: {prefix}{name}",
                                name, sources=sources, path=prefix + name, keys_help=keys_help)
              for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e
    except ValueError as e:  # __post_init__: a message naming a given key, `key=value ...` or `key: ...`, gets its source
        named = re.match(r"([A-Za-z_][\w.]*)(=\S|:|\[)", str(e))
        given = named and (source_of(sources, prefix + named[1]) or source_of(sources, named[1]))
        if isinstance(e, ConfigRuleError) or (given and str(e).startswith(given)):
            raise
        raise ConfigRuleError(f"{given}: {e}" if given else str(e)) from e


def read_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> tuple[dict, Sources, str]:
    """The values of `path` (a YAML file, or a packaged recipe's name: `tiny`) with the `key=value`
    overrides over them, where each key came from, and the name of the config (the file, or "config")."""
    values: dict = {}
    sources: Sources = {}
    if path is not None:
        try:
            path = recipes.resolve(path)  # a file as given, else the packaged recipe of that name
        except recipes.RecipeError as e:
            raise ConfigError(str(e)) from None
        text = path.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text) or {}
            lines = key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: YAML syntax error ({getattr(e, 'problem', None) or e}); fix that "
                              f"line") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys")
        values = recipes.installed_paths(loaded) if path.is_relative_to(recipes.HERE) else loaded
        sources = {key: f"{path}:{line}" for key, line in lines.items()}
    values = merge_dicts(values, parse_overrides(list(overrides or []), sources))
    return values, sources, str(path) if path else "config"


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                keys_help: str = "--help") -> C:
    """Read `path` (a YAML file, or a packaged recipe's name: `tiny`) if given, apply `key=value` overrides, validate into `cls`."""
    values, sources, where = read_config(path, overrides)
    return build_config(cls, values, where, sources=sources, keys_help=keys_help)


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
