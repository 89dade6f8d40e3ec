"""The built-in demo: the shipped base model meets LongPO's precondition, and a shortened `longpo demo`
runs every stage for real, writes its report, resumes without redoing anything, and is deterministic."""

import json
import random
from pathlib import Path

import pytest

from longpo.demo.run import SHIPPED, Config, demo
from longpo.toy.task import FactQA
from longpo.toy.world import answer, build_tokenizer, short_doc


def test_shipped_base_model_is_the_committed_recipe():
    """The weights record the config of `python -m longpo.demo.pretrain` they came from: today's defaults."""
    from longpo.demo.pretrain import PretrainConfig

    meta = json.loads((SHIPPED / "pretrain.json").read_text())
    assert meta["config_digest"] == PretrainConfig(**meta["config"]).digest()
    assert meta["config"] == PretrainConfig().__dict__, "the shipped weights are not from the default recipe"
    assert (SHIPPED / "model.safetensors").stat().st_size < 5_000_000


def test_shipped_base_model_answers_short_questions_and_fails_long_ones():
    """LongPO's precondition, greedy through the same task the demo evaluates with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longpo.demo.pretrain import exact_match
    from longpo.toy.world import make_long_doc

    tok = build_tokenizer()
    assert AutoTokenizer.from_pretrained(SHIPPED).get_vocab() == tok.get_vocab(), "shipped tokenizer != world's"
    model = AutoModelForCausalLM.from_pretrained(SHIPPED).eval()
    torch.manual_seed(0)
    rng = random.Random(99)
    short = exact_match(model, tok, [short_doc(rng) for _ in range(100)], random.Random(1))
    long = exact_match(model, tok, [make_long_doc(rng, 1024) for _ in range(50)], random.Random(2))
    assert short >= 0.9, short
    assert long <= short - 0.3, (short, long)


def test_fact_task_is_seeded_and_scores_the_stated_value():
    tok = build_tokenizer()
    task, again = FactQA(tok, 256, 5, seed=3), FactQA(tok, 256, 5, seed=3)
    ex = task.get_example(2)
    assert ex == again.get_example(2) and ex != FactQA(tok, 256, 5, seed=4).get_example(2)
    assert len(tok(ex["prompt"], add_special_tokens=False)["input_ids"]) <= 256 + 20
    assert task.score(ex, answer(ex["name"], ex["value"])) == 100.0
    wrong = "10" if ex["value"] != "10" else "11"
    assert task.score(ex, answer(ex["name"], wrong)) == 0.0
    assert task.score(ex, "") == 0.0


def short_demo(out: Path) -> Config:
    return Config(output_dir=str(out), documents=12, threads=1,
                  iterations=[{"name": "it1", "length": 256, "rope_theta": 20000.0},
                              {"name": "it2", "length": 384, "rope_theta": 40000.0}],
                  train={"pairs_per_micro_batch": 4, "gradient_accumulation_steps": 1, "num_epochs": 1,
                         "beta": 0.1, "lam": 0.1, "optimizer": "adamw", "learning_rate": 1e-3, "save_steps": 2,
                         "progress_bar": False},
                  eval={"toy": {"lengths": [128, 256], "num_samples": 8}})


@pytest.mark.slow
def test_short_demo_runs_every_stage_and_reports_real_runs(tmp_path):
    first = demo(short_demo(tmp_path / "a"))
    out = tmp_path / "a"
    report = out / "report"
    for name in ("table.md", "table.json", "accuracy.png"):
        assert (report / name).stat().st_size > 0, name
    assert [r["model"] for r in first["table"]] == ["base", "SFT", "DPO", "LongPO", "LongPO (it2)"]
    assert any(p.name.endswith("train__resolved_config.yaml") for p in (report / "configs").iterdir())
    assert len(list((report / "metrics").glob("*metrics.jsonl"))) == 4  # it1, it2, sft, dpo

    # The LongPO row is the mean of the scored predictions of the model trained in iteration 1.
    longpo = next(r for r in first["table"] if r["model"] == "LongPO")
    assert longpo["path"] == str(out / "it1" / "train" / "final")
    for length, value in longpo["accuracy"].items():
        rows = [json.loads(line) for line in (out / "it1" / "eval" / "predictions" / "toy" / length /
                                               "fact_qa.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and value == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    metrics = [json.loads(line) for line in (out / "it1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all("pref_loss" in m for m in metrics)
    stats = json.loads((out / "it1" / "generate" / "stats.json").read_text())
    assert stats["pairs_kept"] > 0
    config = json.loads((out / "it2" / "train" / "final" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 40000.0

    # A rerun finds every stage done and rebuilds the same report; a second run from scratch is identical.
    stamps = {p: p.read_text() for p in out.rglob("*.done")}
    assert demo(short_demo(out))["table"] == first["table"]
    assert {p: p.read_text() for p in out.rglob("*.done")} == stamps
    second = demo(short_demo(tmp_path / "b"))
    assert [(r["model"], r["accuracy"]) for r in second["table"]] == [(r["model"], r["accuracy"]) for r in first["table"]]


def test_evolve_toy_recipe_is_the_demo_loop():
    """The evolve_toy recipe is what `longpo demo` hands to `longpo evolve` (output folder aside)."""
    import tempfile

    from longpo.config import config_to_dict, load_config
    from longpo.demo.run import evolve_config
    from longpo.evolve import Config as EvolveConfig

    recipe = config_to_dict(load_config(EvolveConfig, "evolve_toy"))
    with tempfile.TemporaryDirectory() as tmp:
        demo_loop = config_to_dict(evolve_config(Config(output_dir=tmp), "longpo/demo/base_model"))
        for it in demo_loop["iterations"]:
            it["generate"]["corpus"] = it["generate"]["corpus"].replace(tmp, "runs/evolve_toy")
    assert recipe == {**demo_loop, "output_dir": "runs/evolve_toy"}
