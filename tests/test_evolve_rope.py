"""Every stage of an evolve iteration agrees on RoPE: generate's override (the generator of the rejected
answers) and train's (the policy) may not differ; a key set in one stage only is left to that stage."""

from pathlib import Path

import pytest

from longpo import evolve
from longpo.errors import InputError
from longpo.evolve_config import Iteration


def iteration(generate: dict, train: dict) -> Iteration:
    return Iteration(name="it1", generate={"corpus": "c.jsonl", **generate}, train=train, eval={})


def test_generate_and_train_must_share_the_rope_override(tmp_path: Path):
    with pytest.raises(InputError, match=r"iteration it1: generate.rope_theta=1000000.0 but train.rope_theta=2000000.0"):
        evolve._stage_configs(iteration({"rope_theta": 1e6}, {"rope_theta": 2e6}), "m", tmp_path)
    with pytest.raises(InputError, match="generate.max_position_embeddings=8192 but train.max_position_embeddings=4096"):
        evolve._stage_configs(iteration({"rope_theta": 1e6, "max_position_embeddings": 8192},
                                        {"rope_theta": 1e6, "max_position_embeddings": 4096}), "m", tmp_path)


def test_the_same_or_one_sided_overrides_pass(tmp_path: Path):
    same = evolve._stage_configs(iteration({"rope_theta": 1e6}, {"rope_theta": 1e6}), "m", tmp_path)
    assert same["generate"].rope_theta == same["train"].rope_theta == 1e6
    train_only = evolve._stage_configs(iteration({}, {"rope_theta": 4e4}), "m", tmp_path)  # the toy recipe's form
    assert train_only["generate"].rope_theta is None and train_only["train"].rope_theta == 4e4
