"""Every YAML recipe in longpo/recipes loads into the config of the stage its header command runs; the
accelerate configs point at DeepSpeed JSONs that leave the optimizer to torch."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from longpo.cli import STAGES
from longpo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "longpo" / "recipes"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
COMMAND = re.compile(r"^#\s+(?:.*\s)?(?:longpo|-m longpo\.cli)\s+(\w+)\b", re.MULTILINE)


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_loads_into_its_stage_config(path):
    text = header(path)
    stages = COMMAND.findall(text)
    assert stages, f"{path.name}: the header comment must give the command that runs it (`longpo <stage> ...`)"
    assert f"--config {path.stem}" in text, f"{path.name}: the header command must name the recipe itself"
    module = importlib.import_module(STAGES[stages[0]][0])
    if hasattr(module, "Config"):
        load_config(module.Config, path)


def test_training_recipes_carry_the_paper_hyper_parameters():
    from longpo.train.trainer import Config

    cfg = load_config(Config, CONFIGS / "mistral-7b-128k.yaml")
    assert (cfg.rope_theta, cfg.max_length, cfg.learning_rate, cfg.optimizer) == (1e7, 131072, 5e-7, "rmsprop")
    assert (cfg.beta, cfg.lam, cfg.warmup_ratio, cfg.seed, cfg.gradient_accumulation_steps) == (0.01, 0.01, 0.1, 42, 8)
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.loss) == ("bf16", True, "longpo")
    assert load_config(Config, CONFIGS / "mistral-7b-512k.yaml").max_length == 524288
    assert load_config(Config, CONFIGS / "mistral-7b-128k-sft.yaml").loss == "sft"
    assert load_config(Config, CONFIGS / "mistral-7b-128k-dpo.yaml").loss == "dpo"


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in ("DEEPSPEED", "FSDP"), path.name
    assert f"longpo recipes copy accelerate/{path.stem}" in path.read_text(), path.name
    assert f"accelerate launch --config_file {path.name}" in path.read_text(), path.name
    if cfg["distributed_type"] == "DEEPSPEED":
        ds_path = ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]
        ds = json.loads(ds_path.read_text())
        assert "optimizer" not in ds and "scheduler" not in ds, f"{ds_path}: leave the optimizer to torch"
        assert ds["zero_optimization"]["stage"] == 3
    else:
        assert cfg["fsdp_config"]["fsdp_version"] == 2


def test_bad_values_name_the_key():
    from longpo.train.trainer import Config

    with pytest.raises(ValueError, match="loss='ppo'.*longpo"):
        Config(loss="ppo")
    with pytest.raises(ValueError, match="needs train_file"):
        Config(model="models/x")
    with pytest.raises(ValueError, match="report_to.*'mlflow'"):
        Config(report_to=["mlflow"])


def test_evolve_recipes_wire_valid_stage_configs():
    from longpo.evolve import Config, _stage_configs

    paths = sorted(CONFIGS.glob("evolve*.yaml"))
    assert paths, "no evolve recipe"
    for path in paths:
        cfg = load_config(Config, path)
        for it in cfg.iterations:
            stages = _stage_configs(it, "/models/current", Path("/tmp/evolve-check") / it.name)
            assert stages["train"].model == "/models/current" and stages["eval"].model.endswith("train/final")
            assert set(stages) >= {"generate", "train", "eval"}, path.name
