from dataclasses import dataclass

import pytest

from longpo.config import ConfigError, build_config, help_field, load_config, parse_overrides


@dataclass(kw_only=True)
class Inner:
    temperature: float = help_field(0.7, "t")


@dataclass(kw_only=True)
class Cfg:
    name: str = help_field("x", "n")
    steps: int = help_field(3, "s")
    lengths: list = help_field([1, 2], "l")
    inner: Inner | None = None


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a=1", "b.c=x", "d=[1, 2]", "e=true"]) == {"a": 1, "b": {"c": "x"}, "d": [1, 2], "e": True}


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: hello\nsteps: 5\ninner:\n  temperature: 1\n")
    cfg = load_config(Cfg, path, ["steps=7", "inner.temperature=0.5"])
    assert (cfg.name, cfg.steps, cfg.inner.temperature) == ("hello", 7, 0.5)
    assert isinstance(load_config(Cfg, path).inner.temperature, float)


def test_unknown_key_names_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*'stepz'.*valid keys"):
        build_config(Cfg, {"stepz": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    @dataclass(kw_only=True)
    class Rope:
        rope_theta: float | None = help_field(None, "theta")

    path = tmp_path / "c.yaml"
    path.write_text("rope_theta: 1e7\n")
    assert load_config(Rope, path).rope_theta == 1e7
    with pytest.raises(ConfigError, match="rope_theta='x' is not a number"):
        load_config(Rope, None, ["rope_theta=x"])
