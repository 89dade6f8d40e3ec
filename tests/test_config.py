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


def test_unknown_key_suggests_the_closest_one_without_listing_every_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: unknown key stepz; did you mean steps\? \(`--help` lists") as e:
        build_config(Cfg, {"stepz": 1})
    assert "lengths" not in str(e.value)
    with pytest.raises(ConfigError, match=r"command line: unknown key inner.temprature; did you mean inner.temperature\?"):
        load_config(Cfg, None, ["inner.temprature=1"], keys_help="longpo x --help")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_errors_name_the_file_line_or_the_command_line(tmp_path):
    """A key from the file is named by FILE:LINE; the same key overridden on the command line by the
    command line, never by the file it overrides."""
    path = tmp_path / "c.yaml"
    path.write_text("name: hello\n# a comment\nsteps: many\ninner:\n  temperature: hot\n")
    with pytest.raises(ConfigError, match=f"^{path}:3: steps='many' is not an integer$"):
        load_config(Cfg, path, ["inner.temperature=1"])
    with pytest.raises(ConfigError, match=f"^{path}:5: inner.temperature='hot' is not a number$"):
        load_config(Cfg, path, ["steps=1"])
    with pytest.raises(ConfigError, match="^command line: steps='abc' is not an integer$"):
        load_config(Cfg, path, ["steps=abc", "inner.temperature=1"])
    with pytest.raises(ConfigError, match=f"^{path}:1: unknown key nme; did you mean name\\?"):
        path.write_text("nme: hello\n")
        load_config(Cfg, path)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    @dataclass(kw_only=True)
    class Rope:
        rope_theta: float | None = help_field(None, "theta")

    path = tmp_path / "c.yaml"
    path.write_text("rope_theta: 1e7\n")
    assert load_config(Rope, path).rope_theta == 1e7
    with pytest.raises(ConfigError, match="rope_theta='x' is not a number"):
        load_config(Rope, None, ["rope_theta=x"])
