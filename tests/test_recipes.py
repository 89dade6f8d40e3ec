"""Packaged recipes by name (`--config tiny`), `longpo recipes [copy]`, and help that shows usage first
and the real defaults of nested sections."""

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from longpo import cli, recipes
from longpo.config import ConfigError, load_config
from longpo.data import generate
from longpo.train import trainer


def test_a_name_finds_the_packaged_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = recipes.HERE / "mistral-7b-128k.yaml"
    by_name = load_config(trainer.Config, "mistral-7b-128k", ["train_file=x.jsonl", "model=/m"])
    assert by_name == load_config(trainer.Config, packaged, ["train_file=x.jsonl", "model=/m"])
    assert load_config(trainer.Config, "tiny.yaml") == load_config(trainer.Config, "tiny")
    assert recipes.find("accelerate/zero3") == recipes.HERE / "accelerate" / "zero3.yaml"
    assert recipes.find("tiny.yml") is None


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny").write_text("tiny_records: 5\n")
    assert load_config(trainer.Config, "tiny").tiny_records == 5
    packaged = yaml.safe_load((recipes.HERE / "tiny.yaml").read_text())["tiny_records"]
    assert packaged != 5
    monkeypatch.chdir(tmp_path.parent)
    assert load_config(trainer.Config, "tiny").tiny_records == packaged


def test_an_unknown_name_lists_the_available_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"mistral-7b-12k does not exist.*no packaged recipe.*mistral-7b-128k.*tiny"):
        load_config(trainer.Config, "mistral-7b-12k")
    assert cli.main(["train", "--config", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longpo train: config no-such-recipe does not exist") and "generate_tiny" in err


def test_recipes_lists_every_recipe_with_its_whole_first_header_paragraph(capsys):
    """The description is the header's first paragraph, wrapped under its column, never cut mid-sentence."""
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    entries: dict[str, list[str]] = {}
    for line in out.splitlines()[1:]:
        if not line.startswith("    "):
            name, _, text = line.strip().partition(" ")
            entries[name] = [text]
        else:
            entries[name].append(line)
        assert len(line) <= 100, line
    assert set(entries) == set(recipes.recipe_files())
    for name, path in recipes.recipe_files().items():
        if path.suffix == ".yaml":
            header = path.read_text().split("\n#\n")[0]
            paragraph = " ".join(header.replace("#", " ").split())
            assert " ".join(" ".join(entries[name]).split()) == paragraph, name
    assert "read by accelerate/zero3" in " ".join(entries["deepspeed/zero3"])
    mistral_512k = " ".join(entries["mistral-7b-512k"])
    assert "256K LongPO model" in mistral_512k and "(self-evolution)." in mistral_512k


def test_recipes_copy_writes_an_editable_copy_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["recipes", "copy", "tiny"]) == 0
    assert Path("tiny.yaml").read_text() == (recipes.HERE / "tiny.yaml").read_text()
    assert "wrote tiny.yaml" in capsys.readouterr().out
    assert cli.main(["recipes", "copy", "tiny"]) == 2
    assert "exists" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    assert cli.main(["recipes", "copy", "mistral-7b-128k", "mine"]) == 0
    assert cli.main(["recipes", "copy", "mistral-7b-128k-sft", "mine/sft.yaml"]) == 0
    assert load_config(trainer.Config, "mine/sft.yaml", ["train_file=x", "model=/m"]).loss == "sft"
    assert (tmp_path / "mine" / "mistral-7b-128k.yaml").is_file()
    assert cli.main(["recipes", "copy", "nope"]) == 2 and "tiny" in capsys.readouterr().err


def test_a_copied_accelerate_config_points_at_the_installed_deepspeed_json(tmp_path):
    target = recipes.copy("accelerate/zero3", tmp_path)
    ds = Path(yaml.safe_load(target.read_text())["deepspeed_config"]["deepspeed_config_file"])
    assert ds.is_absolute() and ds == recipes.HERE / "deepspeed" / "zero3.json"
    packaged = (recipes.HERE / "accelerate" / "zero3.yaml").read_text()
    assert target.read_text().splitlines()[:8] == packaged.splitlines()[:8], "header comments are kept as written"


def test_a_packaged_recipe_finds_the_shipped_toy_model_from_any_folder(tmp_path, monkeypatch):
    from longpo import evolve
    from longpo.eval import run as eval_run

    shipped = recipes.ROOT / "longpo" / "demo" / "base_model"
    monkeypatch.chdir(tmp_path)  # no longpo/demo/base_model here, as after `pip install longpo`
    assert load_config(eval_run.Config, "eval_tiny").model == str(shipped)
    assert load_config(evolve.Config, "evolve_toy").base_model == str(shipped)
    copied = yaml.safe_load(recipes.copy("eval_tiny", tmp_path).read_text())
    assert copied["model"] == str(shipped)
    monkeypatch.chdir(recipes.ROOT)  # in a checkout the recipe's relative path is used as written
    assert load_config(eval_run.Config, "eval_tiny").model == "longpo/demo/base_model"
    (tmp_path / "longpo" / "demo" / "base_model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # a folder of the user's own at that path wins
    assert load_config(eval_run.Config, "eval_tiny").model == "longpo/demo/base_model"


def test_generate_help_shows_the_fields_defaults_not_the_sampling_class_defaults(capsys):
    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    cfg = generate.Config(model="m", corpus="c")  # the stage's default instance
    for section in ("question_sampling", "answer_sampling"):
        sampling = getattr(cfg, section)
        for f in dataclasses.fields(sampling):
            value = getattr(sampling, f.name)
            assert f"  {section}.{f.name} ({type(value).__name__}, default {value!r}):" in out, (section, f.name)
    # The paper's question sampling, and not the Sampling class's own defaults.
    assert (cfg.question_sampling.temperature, cfg.question_sampling.top_p) == (0.7, 0.9)
    assert "question_sampling.temperature (float, default 0.7)" in out
    assert "question_sampling.top_p (float, default 0.9)" in out
    assert "  filters.min_words (int, default" in out


def test_help_opens_with_usage_and_evolve_help_shows_an_iteration(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: longpo train [--config FILE.yaml | --config RECIPE]")
    assert out.index("longpo train --config tiny") < out.index("config keys") < out.index("how it works")
    assert out.index("how it works") < out.index("backward_scale")
    assert cli.main(["evolve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "iterations:\n      - name: 256k" in out and "train: {" in out and "eval: {" in out


def test_third_party_logs_are_quiet_unless_verbose(monkeypatch):
    names = ("accelerate", "datasets", "transformers")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.NOTSET)
        cli.setup_logging(verbose=True)
        assert all(logging.getLogger(n).getEffectiveLevel() <= logging.INFO for n in names)
        monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
        cli.setup_logging(verbose=False)
        assert all(logging.getLogger(n).level == logging.WARNING for n in names)
        assert logging.getLogger("longpo").getEffectiveLevel() <= logging.INFO
        import os

        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
