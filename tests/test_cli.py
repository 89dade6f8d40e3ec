"""Issue 24: `--help` and config errors come before torch loads, and every error names its source.

Each error is one line `longpo <stage>: <where>: <what>`, where being `command line` or `FILE:LINE`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longpo import cli

STAGES = ("generate", "reference", "train", "eval", "demo", "evolve")


def one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(prefix), err
    return err


def test_help_and_config_errors_of_every_stage_leave_torch_and_transformers_unimported():
    """In a fresh interpreter: per stage, `--help`, a misspelled key and a bad value; after each call
    neither torch nor transformers is in sys.modules (the stage module is never imported)."""
    code = f"""
import contextlib, io, json, sys
from longpo.cli import main
seen = {{}}
for stage in {STAGES!r}:
    for argv in ([stage, "--help"], [stage, "max_lenght=4096"], [stage, "seed=abc"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(argv)
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        seen[" ".join(argv)] = [code, heavy, err.getvalue().strip()]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    for argv, (code, heavy, err) in seen.items():
        assert heavy == [], f"`longpo {argv}` imported {heavy}"
        assert code == (0 if argv.endswith("--help") else 2), (argv, code, err)
    assert "did you mean max_length?" in seen["train max_lenght=4096"][2]
    assert "command line: seed='abc' is not an integer" in seen["train seed=abc"][2]


def test_bad_key_on_the_command_line_is_named_there_with_a_suggestion(capsys):
    assert cli.main(["train", "--config", "tiny", "max_lenght=4096"]) == 2
    line = one_line(capsys, "longpo train: command line: unknown key max_lenght; did you mean max_length?")
    assert "`longpo train --help` lists the keys" in line
    assert "valid keys" not in line and "gradient_accumulation_steps" not in line
    assert cli.main(["generate", "model=m", "corpus=c", "question_sampling.temprature=0.5"]) == 2
    one_line(capsys, "longpo generate: command line: unknown key question_sampling.temprature; did you mean "
                     "question_sampling.temperature?")


def test_bad_value_over_a_packaged_recipe_is_blamed_on_the_command_line(capsys):
    assert cli.main(["train", "--config", "tiny", "max_length=abc"]) == 2
    one_line(capsys, "longpo train: command line: max_length='abc' is not an integer")
    assert cli.main(["train", "--config", "tiny", "loss=lngpo"]) == 2
    one_line(capsys, "longpo train: command line: loss='lngpo': choose one of")


def test_bad_value_or_key_in_a_yaml_file_is_named_by_file_and_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("# my run\nloss: longpo\n\nmax_length: abc\nbeta: 0.1\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    one_line(capsys, f"longpo train: {path}:4: max_length='abc' is not an integer")
    path.write_text("loss: longpo\nmax_lenght: 4096\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    one_line(capsys, f"longpo train: {path}:2: unknown key max_lenght; did you mean max_length?")
    path.write_text("model: m\ncorpus: c\nfilters:\n  min_words: few\n")
    assert cli.main(["generate", "--config", str(path)]) == 2
    one_line(capsys, f"longpo generate: {path}:4: filters.min_words='few' is not an integer")


def test_a_sub_command_usage_error_returns_2(capsys):
    assert cli.main(["eval", "compare", "only-one-run"]) == 2
    assert "usage: longpo eval compare" in capsys.readouterr().err


def test_unknown_stage_suggests_the_closest(capsys):
    assert cli.main(["trian"]) == 2
    one_line(capsys, "longpo: unknown stage 'trian'; did you mean train?")
    assert cli.main(["recipe"]) == 2
    one_line(capsys, "longpo: unknown stage 'recipe'; did you mean recipes?")


@pytest.mark.parametrize("argv", [
    ["train", "model=/nonexistent/model"],
    ["generate", "model=/nonexistent/model", "corpus=docs.jsonl"],
    ["reference", "model=/nonexistent/model", "input=a.jsonl", "output=b.jsonl"],
    ["eval", "model=/nonexistent/model"],
])
def test_a_missing_model_folder_is_named_before_any_other_rule(argv, capsys):
    assert cli.main(argv) == 2
    line = one_line(capsys, f"longpo {argv[0]}: command line: model '/nonexistent/model': not a local model folder")
    assert "/nonexistent/model does not exist" in line


def test_a_missing_model_folder_from_a_file_is_named_by_its_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("loss: longpo\nmodel: /nonexistent/model\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    one_line(capsys, f"longpo train: {path}:2: model '/nonexistent/model': not a local model folder")


@pytest.mark.parametrize("argv", [
    ["--help"], ["eval", "compare", "--help"], ["generate", "merge", "--help"], ["generate", "inspect", "--help"],
    ["recipes", "--help"], ["recipes", "copy", "--help"], ["plot", "--help"],
    *([stage, "--help"] for stage in STAGES),
])
def test_every_command_and_sub_command_takes_help(argv, capsys):
    assert cli.main(argv) == 0, argv
    assert "usage: longpo" in capsys.readouterr().out


def test_stage_help_shows_the_stage_modules_docstring(capsys):
    """The help text comes from the stage module's source, read without importing it."""
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "longpo demo output_dir=runs/demo2 seed=1" in out and "  documents (int, default 64)" in out
