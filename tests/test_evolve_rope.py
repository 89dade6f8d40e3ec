"""Every stage of an evolve iteration agrees on RoPE, checked by the plan before any work
(`evolve.check_rope`): the long answers come from the model as it is, or from the policy's RoPE (type,
base, factor, max positions), compared on the values each stage will run, a key left unset being the
model's own (the base model's config.json, then what the previous iteration trained)."""

from pathlib import Path

import pytest

from longpo import evolve
from longpo.config import build_config
from longpo.errors import InputError
from longpo.evolve_config import Iteration
from longpo.toy.tiny import tiny_model_config


def iteration(generate: dict, train: dict, **keys) -> Iteration:
    return Iteration(name="it1", generate={"corpus": "c.jsonl", **generate}, train=train, eval={}, **keys)


def check(it: Iteration, current: evolve.Rope, tmp_path: Path) -> evolve.Rope:
    return evolve.check_rope(it, evolve._stage_configs(it, "m", tmp_path), current)


def test_generate_and_train_must_share_the_rope_override(tmp_path: Path):
    unknown = evolve.Rope()  # no local base model: only two set values can be compared
    with pytest.raises(InputError, match=r"iteration it1: generate.rope_theta=1000000.0 but train.rope_theta=2000000.0"):
        check(iteration({"rope_theta": 1e6}, {"rope_theta": 2e6}), unknown, tmp_path)
    with pytest.raises(InputError, match="generate.max_position_embeddings=8192 but train.max_position_embeddings=4096"):
        check(iteration({"rope_theta": 1e6, "max_position_embeddings": 8192},
                        {"rope_theta": 1e6, "max_position_embeddings": 4096}), unknown, tmp_path)
    assert check(iteration({"max_position_embeddings": 8192}, {"rope_theta": 1e6}), unknown, tmp_path) == evolve.Rope(
        rope_theta=1e6)


def test_a_key_left_unset_is_the_models_own(tmp_path: Path):
    """generate raises the length, train leaves it: the policy would keep the model's 4096 positions."""
    model = evolve.Rope("default", 1e4, None, 4096)
    with pytest.raises(InputError, match=r"iteration it1: generate.max_position_embeddings=8192 but "
                                         r"train.max_position_embeddings=4096 \(the model's own\); .*set the same"):
        check(iteration({"rope_theta": 1e5, "max_position_embeddings": 8192}, {"rope_theta": 1e5}), model, tmp_path)
    with pytest.raises(InputError, match=r"generate.rope_theta=10000.0 \(the model's own\) but train.rope_theta=100000.0;"):
        check(iteration({"max_position_embeddings": 8192}, {"rope_theta": 1e5, "max_position_embeddings": 8192}),
              model, tmp_path)
    same = check(iteration({"rope_theta": 1e5, "max_position_embeddings": 8192},
                           {"rope_theta": 1e5, "max_position_embeddings": 8192}), model, tmp_path)
    assert same == evolve.Rope("default", 1e5, None, 8192)


def test_the_model_as_it_is_may_write_the_long_answers_when_it_holds_the_target(tmp_path: Path):
    """No override in generate (the toy's form): the policy's RoPE differs from the generator's by design,
    but with target_length the model as it is must hold the target."""
    model = evolve.Rope("default", 1e4, None, 4096)
    toy = iteration({"rope_theta": None, "max_position_embeddings": None}, {"max_position_embeddings": 4096},
                    target_length=1024, rope_theta=4e4, beyond_target=[])
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [toy]})
    assert check(cfg.iterations[0], model, tmp_path) == evolve.Rope("default", 4e4, None, 4096)
    long = iteration({"rope_theta": None, "max_position_embeddings": None}, {}, target_length=8192, rope_theta=4e4)
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [long]})
    with pytest.raises(InputError, match="iteration it1: generate runs the model as it is .* which holds 4096 "
                                         "positions, below target_length=8192"):
        check(cfg.iterations[0], model, tmp_path)
    served = iteration({"backend": "openai", "tokenizer": "t"}, {}, target_length=8192, rope_theta=4e4)
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [served]})
    assert check(cfg.iterations[0], model, tmp_path).max_position_embeddings == 8192  # the server's RoPE: unknown


def test_the_plan_chains_each_iteration_from_the_previous_trained_rope(tmp_path: Path):
    """it2 starts from it1's trained model (theta 2e4, 8192 positions), which does not exist at planning time:
    its generate raising the length to 16384 while its train keeps the model's is refused, naming both."""
    base = tmp_path / "base"
    tiny_model_config("llama", max_position_embeddings=4096).save_pretrained(base)
    its = [{"name": "it1", "generate": {"corpus": "c.jsonl", "rope_theta": 2e4, "max_position_embeddings": 8192},
            "train": {"rope_theta": 2e4, "max_position_embeddings": 8192}, "eval": {"ruler": {"enabled": False}}},
           {"name": "it2", "generate": {"corpus": "c.jsonl", "max_position_embeddings": 16384},
            "eval": {"ruler": {"enabled": False}}}]
    cfg = build_config(evolve.Config, {"base_model": str(base), "output_dir": str(tmp_path / "run"), "iterations": its})
    with pytest.raises(InputError, match=r"iteration it2: generate.max_position_embeddings=16384 but "
                                         r"train.max_position_embeddings=8192 \(the model's own\)"):
        evolve.plan(cfg)
    its[1]["train"] = {"max_position_embeddings": 16384}
    its[1]["eval"] = {"ruler": {"tasks": ["vt"], "lengths": [32768]}, "infinitebench": {"enabled": False}}
    cfg = build_config(evolve.Config, {"base_model": str(base), "output_dir": str(tmp_path / "run"), "iterations": its})
    with pytest.raises(InputError, match=r"it2.eval: ruler.lengths \[32768\] exceed the trained model's "
                                         r"max_position_embeddings \(16384\)"):
        evolve.plan(cfg)  # the eval check now knows the length of a model trained by an earlier iteration


def test_a_target_past_the_models_positions_needs_a_rope_base(tmp_path: Path):
    """target_length beyond what the model holds with no rope_theta: the policy would train past its positions
    on its own base, silently; refused in one line. train.rope_theta set keeps a base on purpose."""
    model = evolve.Rope("default", 1e4, None, 4096)
    bare = iteration({}, {}, target_length=8192)
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [bare]})
    with pytest.raises(InputError, match=r"^iteration it1: target_length=8192 is past the 4096 positions the model "
                                         r"holds, but the policy keeps its RoPE base 10000 \(no rope_theta\)"):
        check(cfg.iterations[0], model, tmp_path)
    kept = iteration({"rope_theta": 1e4}, {"rope_theta": 1e4}, target_length=8192)
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [kept]})
    assert check(cfg.iterations[0], model, tmp_path) == evolve.Rope("default", 1e4, None, 8192)
    within = iteration({}, {}, target_length=4096)
    cfg = build_config(evolve.Config, {"base_model": "m", "iterations": [within]})
    assert check(cfg.iterations[0], model, tmp_path) == evolve.Rope("default", 1e4, None, 4096)
