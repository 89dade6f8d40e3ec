"""Every shipped training recipe (and every evolve recipe's train stages) at the world size its header
documents gives the pairs per optimizer step the header states: 8 for the released 7B runs.

    pairs per step = pairs_per_micro_batch x gradient_accumulation_steps x (world size / sp_size)
"""

import re
from pathlib import Path

import pytest

from longpo.config import load_config
from longpo.train.config import Config
from longpo.train.data import step_shape
from tests.test_configs import COMMAND, header

CONFIGS = Path(__file__).resolve().parents[1] / "longpo" / "recipes"
STEP = re.compile(r"Step: world size (\d+), (\d+) pairs per optimizer step")
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if COMMAND.findall(header(p))[:1] in (["train"], ["evolve"]))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_step_at_its_documented_world_size(path):
    from longpo import evolve

    found = STEP.search(header(path))
    assert found, f"{path.name}: the header must state 'Step: world size N, P pairs per optimizer step'"
    world, pairs = int(found[1]), int(found[2])
    if COMMAND.findall(header(path))[0] == "evolve":
        cfg = load_config(evolve.Config, path)
        assert len(cfg.devices) * cfg.nodes == world, f"{path.name}: devices x nodes != the stated world size"
        trains = [evolve._stage_configs(it, "/models/m", Path("/tmp/x") / it.name)["train"] for it in cfg.iterations]
    else:
        trains = [load_config(Config, path)]
    for train in trains:
        assert step_shape(train, world)["pairs_per_step"] == pairs, f"{path.name}: {step_shape(train, world)}"
        assert train.max_length * pairs == step_shape(train, world)["tokens_per_step"]


def test_the_released_7b_runs_take_8_pairs_per_step():
    released = {"mistral-7b-128k.yaml": 8, "qwen2.5-7b-128k.yaml": 8, "mistral-7b-128k-sft.yaml": 8,
                "mistral-7b-128k-dpo.yaml": 8, "mistral-7b-128k-dp8.yaml": 1, "qwen2.5-7b-128k-dp8.yaml": 1,
                "mistral-7b-256k.yaml": 8, "mistral-7b-512k.yaml": 16, "qwen2.5-7b-128k-sp8-2nodes.yaml": 8}
    for name, sp in released.items():
        world = int(STEP.search(header(CONFIGS / name))[1])
        cfg = load_config(Config, CONFIGS / name)
        assert (cfg.sp_size, step_shape(cfg, world)["pairs_per_step"]) == (sp, 8), name
