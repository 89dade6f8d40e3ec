"""`target_length` and `rope_theta` per evolve iteration: what derives from them, what a stage may set
instead, what is refused, what the dry run marks, and the shipped recipes resolving exactly as their
explicit versions did (tests/evolve_recipes_before)."""

import contextlib
import io
import json
from pathlib import Path

import pytest

from longpo import evolve
from longpo.config import ConfigError, build_config, config_to_dict, load_config
from longpo.evolve_target import ruler_lengths
from longpo.models import load_config as load_model_config
from longpo.toy.tiny import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
BEFORE = Path(__file__).parent / "evolve_recipes_before"


def config(tmp_path: Path, *iterations: dict, base: str = "m", **values) -> evolve.Config:
    its = [{"name": f"it{i + 1}", **it} for i, it in enumerate(iterations)]
    for it in its:
        it.setdefault("generate", {})
        it["generate"] = {"corpus": "c.jsonl", **it["generate"]}
    return build_config(evolve.Config, {"base_model": base, "output_dir": str(tmp_path / "run"), "eval_base": False,
                                        "iterations": its, **values})


def marks(it) -> dict:
    return {m.key: (m.value, m.how) for m in it.marks}


def test_ruler_lengths_are_the_doubling_ladder_up_to_the_target():
    assert ruler_lengths(131072) == [4096, 8192, 16384, 32768, 65536, 131072]
    assert ruler_lengths(100000) == [4096, 8192, 16384, 32768, 65536, 100000]
    assert ruler_lengths(4096) == [4096] and ruler_lengths(1000) == [1000]


def test_target_length_and_rope_theta_give_every_stage_its_keys(tmp_path):
    """vLLM generation, two iterations: each key below is derived from the iteration's two keys; the
    second iteration's short phase gets the length the first one trained."""
    cfg = config(tmp_path, {"target_length": 131072, "rope_theta": 1e7, "generate": {"backend": "vllm"}},
                 {"target_length": 262144, "rope_theta": 2e7, "generate": {"backend": "vllm"}})
    first, second = cfg.iterations
    assert second.generate == {"corpus": "c.jsonl", "backend": "vllm", "rope_theta": 2e7,
                               "max_position_embeddings": 262144, "min_doc_tokens": 131072, "max_doc_tokens": 262144,
                               "backend_args": {"max_model_len": 262144},
                               "short_backend_args": {"max_model_len": 131072}}
    assert "short_backend_args" not in first.generate  # the base model's length is its own, not a target's
    assert second.train == {"rope_theta": 2e7, "max_position_embeddings": 262144, "max_length": 262144}
    assert second.eval == {"ruler": {"lengths": ruler_lengths(262144)}}
    assert {how for _, how in marks(second).values()} == {"derived"}
    assert len(marks(second)) == 10


def test_keys_follow_what_the_backend_and_eval_take(tmp_path):
    """hf has no engine length; openai takes no RoPE override (so generate gets neither rope key, and
    has no second phase); RULER off: no lengths."""
    hf, served = config(tmp_path, {"target_length": 8192, "rope_theta": 1e5, "eval": {"ruler": {"enabled": False}}},
                        {"target_length": 16384, "rope_theta": 1e5, "generate": {"backend": "openai"}}).iterations
    assert hf.generate == {"corpus": "c.jsonl", "rope_theta": 1e5, "max_position_embeddings": 8192,
                           "min_doc_tokens": 4096, "max_doc_tokens": 8192}
    assert hf.eval == {"ruler": {"enabled": False}}
    assert served.generate == {"corpus": "c.jsonl", "backend": "openai", "min_doc_tokens": 8192,
                               "max_doc_tokens": 16384}
    assert served.train["rope_theta"] == 1e5


def test_a_key_set_in_the_stage_wins_and_is_marked_set(tmp_path):
    it = config(tmp_path, {"target_length": 131072, "rope_theta": 1e7,
                           "generate": {"min_doc_tokens": 100000, "rope_theta": 1e7},
                           "train": {"max_length": 65536, "max_position_embeddings": 262144},
                           "eval": {"ruler": {"lengths": [4096, 131072]}}}).iterations[0]
    assert (it.generate["min_doc_tokens"], it.generate["max_doc_tokens"]) == (100000, 131072)
    assert (it.train["max_length"], it.train["max_position_embeddings"]) == (65536, 262144)
    assert it.eval["ruler"]["lengths"] == [4096, 131072]
    m = marks(it)
    for key in ("generate.min_doc_tokens", "generate.rope_theta", "train.max_length",
                "train.max_position_embeddings", "eval.ruler.lengths"):
        assert m[key][1] == "set", key
    assert m["generate.max_doc_tokens"] == (131072, "derived")


@pytest.mark.parametrize(("iteration", "message"), [
    ({"train": {"max_length": 262144}},
     "iteration it1: train.max_length=262144 is above target_length=131072; lower it, raise target_length, or list "
     "train.max_length in the iteration's beyond_target"),
    ({"generate": {"max_doc_tokens": 200000}}, "iteration it1: generate.max_doc_tokens=200000 is above target_length"),
    ({"train": {"max_position_embeddings": 65536}},
     "iteration it1: train.max_position_embeddings=65536 is below target_length=131072: the model would not hold the "
     "target; raise train.max_position_embeddings or lower target_length"),
    ({"generate": {"backend": "vllm", "backend_args": {"max_model_len": 32768}}},
     "iteration it1: generate.backend_args.max_model_len=32768 is below target_length=131072"),
    ({"train": {"rope_theta": 5e6}},
     r"iteration it1: train.rope_theta=5000000.0 but the iteration's rope_theta=10000000.0; set the base once"),
    ({"train": {"rope_theta": None}}, "iteration it1: train.rope_theta=None but the iteration's rope_theta"),
    ({"generate": {"rope_theta": 1e6}}, "iteration it1: generate.rope_theta=1000000.0 but the iteration's"),
    ({"beyond_target": ["train.rope_theta"]}, r"beyond_target=\['train.rope_theta'\]: it takes keys of"),
])
def test_a_key_set_against_the_target_is_refused_in_one_line(tmp_path, iteration, message):
    with pytest.raises(ConfigError, match=message) as e:
        config(tmp_path, {"target_length": 131072, "rope_theta": 1e7, **iteration})
    assert "\n" not in str(e.value)


def test_beyond_target_and_null_rope_are_the_opt_outs(tmp_path):
    it = config(tmp_path, {"target_length": 512, "rope_theta": 4e4, "beyond_target": ["train.max_length"],
                           "generate": {"rope_theta": None, "max_position_embeddings": None},
                           "train": {"max_length": 576}}).iterations[0]
    assert marks(it)["train.max_length"] == (576, "set, beyond target")
    assert it.generate["rope_theta"] is None and it.generate["max_position_embeddings"] is None
    with pytest.raises(ConfigError, match="needs target_length"):
        config(tmp_path, {"beyond_target": ["train.max_length"]})


def test_an_iteration_without_the_keys_is_left_as_written(tmp_path):
    it = config(tmp_path, {"train": {"max_length": 4096}}).iterations[0]
    assert it.train == {"max_length": 4096} and it.marks == []


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 1e4},
    {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
    {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 2048},
    {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 2048},
])
def test_the_planned_rope_is_what_the_model_layer_builds_per_rope_type(tmp_path, rope):
    """The plan's RoPE of the trained model (`check_rope`) equals what `longpo.models.load_config` builds with
    the derived override: the base raised to the iteration's, max positions the target, type and factor kept."""
    base = tmp_path / "base"
    tiny_model_config("llama", max_position_embeddings=4096, rope_parameters=rope).save_pretrained(base)
    cfg = config(tmp_path, {"target_length": 16384, "rope_theta": 2e6, "eval": {"ruler": {"enabled": False}}},
                 base=str(base))
    it = cfg.iterations[0]
    cfgs = evolve._stage_configs(it, str(base), tmp_path / "it1")
    planned = evolve.check_rope(it, cfgs, evolve.model_rope(str(base)))
    built = load_model_config(base, cfgs["train"].rope_theta, cfgs["train"].max_position_embeddings)
    params = built.rope_parameters
    assert planned == evolve.Rope(params["rope_type"], params["rope_theta"], params.get("factor"),
                                  built.max_position_embeddings)
    assert (planned.rope_type, planned.rope_theta, planned.factor, planned.max_position_embeddings) == (
        rope["rope_type"], 2e6, rope.get("factor"), 16384)
    generator = load_model_config(base, cfgs["generate"].rope_theta, cfgs["generate"].max_position_embeddings)
    assert (generator.rope_parameters, generator.max_position_embeddings) == (params, 16384)  # the same RoPE


@pytest.mark.parametrize(("rope", "refusal"), [
    ({"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "^it1: a RoPE override on rope_type 'dynamic'"),
    ({"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
      "original_max_position_embeddings": 2048}, "^it1: a RoPE override on rope_type 'longrope'"),
])
def test_a_target_on_a_rope_type_the_project_refuses_is_refused_at_plan_time(tmp_path, rope, refusal):
    base = tmp_path / "base"
    tiny_model_config("llama", max_position_embeddings=4096, rope_parameters=rope).save_pretrained(base)
    cfg = config(tmp_path, {"target_length": 16384, "eval": {"ruler": {"enabled": False}}}, base=str(base))
    with pytest.raises(evolve.InputError, match=refusal):
        evolve.plan(cfg)


def test_the_dry_run_marks_each_key_derived_or_set(tmp_path):
    base = tmp_path / "base"
    tiny_model_config("llama", max_position_embeddings=4096).save_pretrained(base)
    cfg = config(tmp_path, {"target_length": 16384, "rope_theta": 2e5, "train": {"max_length": 8192},
                            "eval": {"ruler": {"tasks": ["vt"]}}}, base=str(base), dry_run=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evolve.main(cfg) == 0
    lines = out.getvalue().splitlines()
    notes = {lines[i - 1].split(":")[1].strip(): line for i, line in enumerate(lines) if line.startswith("  [target]")}
    assert notes == {
        "generate": "  [target] rope_theta=200000.0 (derived), max_position_embeddings=16384 (derived), "
                    "min_doc_tokens=8192 (derived), max_doc_tokens=16384 (derived)",
        "train": "  [target] rope_theta=200000.0 (derived), max_position_embeddings=16384 (derived), "
                 "max_length=8192 (set)",
        "eval": "  [target] ruler.lengths=[4096, 8192, 16384] (derived)"}


# ------------------------------------------------------------------------------------------ the recipes


def resolved(cfg: evolve.Config, tmp: Path) -> tuple[dict, str]:
    """Every stage config the plan resolves (each worker's too) and the dry run's text."""
    stages = {}
    for stage in evolve.plan(cfg):
        stages[stage.label] = config_to_dict(stage.inline[1])
        for wave in stage.waves:
            stages.update({f"{stage.label} [{wave.name}] {k}": config_to_dict(v) for k, v in wave.configs.items()})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evolve.main(cfg) == 0
    return json.loads(json.dumps(stages).replace(str(tmp), "TMP")), out.getvalue().replace(str(tmp), "TMP")


@pytest.mark.parametrize("recipe", ["evolve_mistral-7b", "evolve_toy"])
def test_the_recipes_resolve_as_their_explicit_versions_did(tmp_path, recipe):
    """The recipe with target_length and its pre-target_length version (every length written out) give
    the same stage configs, every worker's included, and the same dry run but for its [target] lines."""
    overrides = [f"output_dir={tmp_path / 'run'}", "dry_run=true"]
    if recipe == "evolve_mistral-7b":
        base = tmp_path / "mistral-32k"
        tiny_model_config("mistral", max_position_embeddings=32768, rope_theta=1e6).save_pretrained(base)
        overrides.append(f"base_model={base}")
    now = load_config(evolve.Config, recipe, overrides)
    before = load_config(evolve.Config, BEFORE / f"{recipe}.yaml", overrides)
    assert all(it.target_length for it in now.iterations) and not any(it.target_length for it in before.iterations)
    (stages, text), (old_stages, old_text) = resolved(now, tmp_path), resolved(before, tmp_path)
    assert stages == old_stages and len(stages) > 10
    assert [line for line in text.splitlines() if not line.startswith("  [target]")] == old_text.splitlines()
    marked = [(it, stage) for it in now.iterations for stage in ("generate", "train", "eval")
              if any(m.key.startswith(f"{stage}.") for m in it.marks)]
    assert text.count("  [target]") == len(marked) >= 2 * len(now.iterations)
