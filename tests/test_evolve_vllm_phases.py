"""Generation with a RoPE override on vLLM (mocked): the driver runs phase=short (the ORIGINAL model) and
phase=long (the RoPE-raised one) as separate worker processes, so no process ever holds two engines, and
the questions and chosen answers are requested from the original model's engine."""

import json
import textwrap
from pathlib import Path

import pytest

from longpo.config import build_config
from longpo.data import generate
from longpo.data.records import read_records
from longpo.toy.tiny import build_tiny_model
from tests.data.test_generate import MARK, QUESTIONS, small, write_corpus

ROOT = Path(__file__).resolve().parents[1]

FAKE_VLLM = textwrap.dedent('''
    """A stand-in for vllm.LLM: logs every engine it builds (pid, RoPE override), refuses a second engine in
    one process, answers from the decoded prompt and says which engine answered."""
    import hashlib, json, os, types
    from transformers import AutoTokenizer

    _ENGINES = []

    def SamplingParams(**kw):
        return kw

    class LLM:
        def __init__(self, **kw):
            if _ENGINES:
                raise RuntimeError(f"process {os.getpid()} builds a second vLLM engine")
            _ENGINES.append(self)
            self.raised = "hf_overrides" in kw
            self.tok = AutoTokenizer.from_pretrained(kw["tokenizer"])
            with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "hf_overrides": kw.get("hf_overrides"),
                                    "max_model_len": kw.get("max_model_len"),
                                    "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")

        def generate(self, prompts, params, use_tqdm=False):
            outs = []
            for p in prompts:
                text = self.tok.decode(p["prompt_token_ids"])
                h = hashlib.sha1(text.encode()).hexdigest()[:6]
                reply = QUESTIONS if MARK in text else f"answer {h} from the {'raised' if self.raised else 'original'} model."
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=reply, finish_reason="stop")]))
            return outs
''')


@pytest.mark.slow
def test_rope_override_on_vllm_runs_two_phases_one_engine_per_process(tmp_path, tokenizer, monkeypatch):
    from longpo import evolve

    fake = tmp_path / "fake" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"MARK = {MARK!r}\nQUESTIONS = {QUESTIONS!r}\n" + FAKE_VLLM)
    monkeypatch.setenv("PYTHONPATH", f"{fake.parent}:{ROOT}")
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "engines.jsonl"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = tmp_path / "base"
    build_tiny_model("llama", seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    gen = small(corpus=str(write_corpus(tmp_path / "corpus.jsonl", 6)), backend="vllm",
                rope_theta=40000.0, max_position_embeddings=8192, backend_args={"max_model_len": 8192},
                short_backend_args={"max_model_len": 4096})
    gen.pop("model")
    cfg = build_config(evolve.Config, {"base_model": str(base), "output_dir": str(tmp_path / "run"), "devices": 2,
                                       "eval_base": False, "iterations": [{"name": "it1", "generate": gen, "train": {
                                           "rope_theta": 40000.0, "max_position_embeddings": 8192}, "eval": {
                                           "ruler": {"enabled": False}, "infinitebench": {"enabled": False}}}]})
    stage = evolve.plan(cfg)[0]
    assert stage.label == "it1: generate" and [w.name for w in stage.waves] == ["short", "long", "merge"]
    evolve.run_stage(stage)

    engines = [json.loads(line) for line in (tmp_path / "engines.jsonl").read_text().splitlines()]
    assert len(engines) == 4 and len({e["pid"] for e in engines}) == 4, engines  # 2 shards x 2 phases
    original = [e for e in engines if e["hf_overrides"] is None]
    raised = [e for e in engines if e["hf_overrides"] is not None]
    assert sorted(e["devices"] for e in original) == sorted(e["devices"] for e in raised) == ["0", "1"]
    assert {e["max_model_len"] for e in original} == {4096} and {e["max_model_len"] for e in raised} == {8192}
    assert all(e["hf_overrides"]["rope_parameters"]["rope_theta"] == 40000.0 for e in raised)
    records = read_records(tmp_path / "run" / "it1" / "generate")
    turns = [t for r in records for t in r["turns"]]
    assert len(records) >= 4 and turns
    assert all(t["chosen"].endswith("from the original model.") for t in turns)
    assert all(t["rejected"].endswith("from the raised model.") for t in turns)
    assert all("ref_chosen_logp" not in t for t in turns)  # the reference stage adds them (original model)


def test_vllm_with_a_rope_override_refuses_two_engines_in_one_process():
    values = {**small(corpus="c.jsonl", backend="vllm", rope_theta=40000.0), "reference": False}
    with pytest.raises(ValueError, match="phase=short, then phase=long"):
        build_config(generate.Config, values)
    with pytest.raises(ValueError, match="reference=false"):
        build_config(generate.Config, {**values, "phase": "short", "reference": True})
    assert build_config(generate.Config, {**values, "phase": "long"}).phase == "long"
    assert build_config(generate.Config, {**values, "original_for_short_steps": False}).phase == "all"
