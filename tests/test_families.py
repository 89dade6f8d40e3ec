"""Every supported model family: exact against transformers' own forward, or refused before any work.

The matrix (tests/families.py): llama (llama3 rope), mistral with and without a sliding window,
ministral, qwen2 with and without its sliding window, qwen3, qwen3_moe, gemma2 (windows, attention and
final logit softcapping, query_pre_attn_scalar), gemma3_text (local / global layers, local RoPE base),
phi3 with and without a window, olmo2, smollm3 (NoPE layers), gpt_oss (sinks, windows, yarn, MoE).
Windows are 16 positions and the test sequences 150-250 tokens, so every window cuts across the shared
prefix. For each family:

  packed (shared-prefix sdpa spans) == transformers' forward, float64, values and every gradient;
  packed (flex, CPU forward) == transformers' forward;
  Ulysses sp_size=2 on 2 gloo ranks == one process (values and gradients);
  one `longpo train` step from a saved folder; the export reloads with plain transformers;
  HF generation and prefix-reusing scoring run and equal their no-reuse versions.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from longpo.data.records import tokenize_pair
from longpo.families import SUPPORTED, UnsupportedModelError, check_model, plain_attention
from longpo.train.attention import use_shared_prefix_attention
from longpo.train.logps import forward_pairs, forward_pairs_plain
from longpo.train.packing import pack_pairs
from tests.conftest import make_record
from tests.families import FAMILIES, WINDOW, build_family_model, family_config, float64_throughout

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(FAMILIES)
VALUES = dict(rtol=1e-10, atol=1e-8)  # summed log-probs of ~20-60 tokens
GRADS = dict(rtol=1e-8, atol=1e-10)


def family_pairs(tokenizer):
    """Three pairs, one and two turns: prefixes of ~140 tokens, branches of 14-63 (all longer than WINDOW)."""
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=1 + i % 2, seed=i)) for i in range(3)]
    assert min(len(p.prefix) for p in pairs) > 4 * WINDOW and min(len(p.rejected) for p in pairs) < WINDOW
    return pairs


def objective(out):  # touches every term with different weights
    return 0.3 * out.policy.chosen.sum() - 0.7 * out.policy.rejected.sum() + 0.05 * out.nll_sum


def test_the_matrix_covers_every_supported_family_and_both_window_settings():
    assert {family_config(n).model_type for n in NAMES} == set(SUPPORTED)
    assert {"mistral", "mistral_sw", "qwen2", "qwen2_sw"} <= set(NAMES)
    assert family_config("mistral").sliding_window is None and family_config("mistral_sw").sliding_window == WINDOW
    assert "sliding_attention" not in family_config("qwen2").layer_types
    assert "sliding_attention" in family_config("qwen2_sw").layer_types


@pytest.mark.parametrize("name", NAMES)
def test_packed_equals_transformers_forward_values_and_grads(tokenizer, name):
    """forward_pairs (one packed row, shared prefix, chunked log-probs) against forward_pairs_plain (each
    sequence alone through the model's own forward, full logits), float64: summed chosen / rejected
    log-probs and the NLL sum to 1e-8, every parameter gradient of a mixed objective to 1e-8 relative."""
    pairs = family_pairs(tokenizer)
    with float64_throughout():
        model = build_family_model(name)
        plain = forward_pairs_plain(model, pairs, "full")
        packed_model = copy.deepcopy(model)
        use_shared_prefix_attention(packed_model)
        fast = forward_pairs(packed_model, pack_pairs(pairs, "full", pad_to_multiple_of=32), chunk_size=33)
        for a, b in ((fast.policy.chosen, plain.policy.chosen), (fast.policy.rejected, plain.policy.rejected),
                     (fast.nll_sum, plain.nll_sum)):
            assert_close(a, b, **VALUES)
        g_plain = torch.autograd.grad(objective(plain), list(model.parameters()), allow_unused=True)
        g_fast = torch.autograd.grad(objective(fast), list(packed_model.parameters()), allow_unused=True)
    for (pname, _), a, b in zip(model.named_parameters(), g_fast, g_plain):
        if b is None:  # experts no token was routed to, in both paths
            assert a is None or not a.any(), pname
            continue
        assert_close(a, b, **GRADS, msg=lambda m, pname=pname: f"{name} {pname}: {m}")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", [n for n in NAMES if n != "gpt_oss"])
def test_flex_forward_equals_transformers_forward(tokenizer, name):
    """The flex backend (block masks per sliding window, softcapping as a score_mod) on CPU, where
    FlexAttention runs forward only: the same log-probs as the model's own forward."""
    pairs = family_pairs(tokenizer)
    with float64_throughout(), torch.no_grad():
        model = build_family_model(name)
        plain = forward_pairs_plain(model, pairs, "full")
        use_shared_prefix_attention(model, "flex")
        fast = forward_pairs(model, pack_pairs(pairs, "full", pad_to_multiple_of=128), attention_backend="flex")
    assert_close(fast.policy.chosen, plain.policy.chosen, **VALUES)
    assert_close(fast.policy.rejected, plain.policy.rejected, **VALUES)


def test_a_window_that_is_ignored_would_fail_the_parity(tokenizer):
    """The parity tests can fail: the same Mistral weights with the window dropped from the packed side
    differ from the windowed forward by far more than the tolerance."""
    pairs = family_pairs(tokenizer)
    with float64_throughout(), torch.no_grad():
        model = build_family_model("mistral_sw")
        plain = forward_pairs_plain(model, pairs, "full")
        model.config.sliding_window = None  # the attention layers read it per call
        use_shared_prefix_attention(model)
        fast = forward_pairs(model, pack_pairs(pairs, "full"))
    assert (fast.policy.chosen - plain.policy.chosen).abs().max() > 1e-3


# ----------------------------------------------------------------------------------- refusals


def _config(model_type: str, **extra):
    from transformers import AutoConfig

    from tests.families import BASE

    return AutoConfig.for_model(model_type, **{**BASE, **extra})


@pytest.mark.parametrize("config, kwargs, message", [
    (lambda: _config("cohere"), {}, r"model_type 'cohere' is not among the families longpo computes exactly"),
    (lambda: _config("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                              "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}),
     {"training": True}, r"training with rope_type 'longrope' \(Phi-3 / Phi-4, model_type 'phi3'\) is not supported"),
    (lambda: _config("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                              "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}),
     {"rope_theta": 1e7}, r"a RoPE override on rope_type 'longrope'"),
    (lambda: _config("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
     {"training": True}, r"training with rope_type 'dynamic'"),
    (lambda: _config("gemma3_text", use_bidirectional_attention=True), {}, r"bidirectional attention"),
    (lambda: _config("qwen2", attention_dropout=0.1), {"training": True}, r"attention dropout \(0.1\)"),
    (lambda: family_config("gpt_oss"), {"training": True, "attention_backend": "flex"},
     r"attention sinks with attention_backend=flex .*use attention_backend=sdpa"),
    (lambda: _config("gpt_oss", rope_parameters={"rope_type": "yarn", "rope_theta": 1.5e5, "factor": None,
                                                 "original_max_position_embeddings": 64}),
     {"max_position_embeddings": 8192}, r"max_position_embeddings override on rope_type 'yarn' without a 'factor'"),
])
def test_unsupported_features_are_refused_in_one_line(config, kwargs, message):
    with pytest.raises(UnsupportedModelError, match=message) as err:
        check_model(config(), **kwargs)
    assert "\n" not in str(err.value)


def test_generation_of_a_longrope_model_is_not_refused():
    """longrope is only refused where packing would change it (training) or an override has no meaning."""
    check_model(_config("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                                 "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}))


def test_an_attention_argument_the_core_does_not_know_stops_the_forward():
    """A family whose layers pass an attention feature added after this code (a new kwarg) fails loudly."""
    from longpo.train.attention import make_hf_attention
    from longpo.train.packing import SharedPrefixLayout

    attention = make_hf_attention("sdpa")
    q = torch.randn(1, 2, 8, 4)
    layout = SharedPrefixLayout(pairs=((0, 8, 0, 0),), total_len=8)
    with pytest.raises(NotImplementedError, match=r"passes attention argument\(s\) \['chunk_size'\]"):
        attention(torch.nn.Module(), q, q, q, None, longpo_layout=layout, chunk_size=4)


def test_plain_attention_is_eager_where_sdpa_would_drop_a_feature():
    assert plain_attention(family_config("gemma2")) == "eager"  # attention logit softcapping
    assert plain_attention(family_config("gpt_oss")) == "eager"  # sinks
    assert {plain_attention(family_config(n)) for n in NAMES if n not in ("gemma2", "gpt_oss")} == {"sdpa"}


# ----------------------------------------------------------------------------------- RoPE


def _inv_freqs(model) -> dict[str, torch.Tensor]:
    rotary = model.get_decoder().rotary_emb
    return {name: buf.clone() for name, buf in rotary.named_buffers() if name.endswith("inv_freq")
            and "original" not in name}


@pytest.mark.parametrize("name", NAMES)
def test_rope_theta_override_per_family(tmp_path, tokenizer, name):
    """load_model(rope_theta=...) (what generate, reference, train and eval all call) raises the base of
    every layer type a context extension concerns and keeps the rope type's own keys; Gemma-3's local
    sliding-window base stays (docs/models.md)."""
    from longpo.models import load_model

    model = build_family_model(name, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    before = _inv_freqs(load_model(tmp_path, "float32"))
    after_model = load_model(tmp_path, "float32", rope_theta=1e7, max_position_embeddings=8192)
    after = _inv_freqs(after_model)
    original = family_config(name).rope_parameters
    for key, freq in after.items():
        local = key.startswith("sliding_attention")
        changed = not torch.equal(freq, before[key])
        assert changed != local, f"{name} {key}: changed={changed}"
    params = after_model.config.rope_parameters
    sets = params.values() if "full_attention" in params else [params]
    originals = original.values() if "full_attention" in original else [original]
    for new, old in zip(sets, originals):
        assert {k: v for k, v in new.items() if k != "rope_theta"} == {k: v for k, v in old.items()
                                                                       if k != "rope_theta"}
    assert after_model.config.max_position_embeddings == 8192


# ----------------------------------------------------------------------------------- sequence parallel


@pytest.mark.slow
def test_ulysses_sp2_equals_one_process_for_every_family(tmp_path):
    """tests/families_sp_worker.py on 2 gloo ranks: each family's packed forward with sp_size=2 against
    the same model in one process, values and summed gradients (float64)."""
    out = tmp_path / "families_sp2.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "families_sp_worker.py"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    report = json.loads(out.read_text())
    assert sorted(report) == NAMES
    for name, errors in report.items():
        assert errors["values"] < 1e-8 and errors["grads"] < 1e-8, (name, errors)


# ----------------------------------------------------------------------------------- the stages


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_one_train_step_export_reload_and_hf_generation(tmp_path, tokenizer, name):
    """`longpo train` from a saved folder of the family (one step), the export reloads with plain
    transformers, and the HF backend generates with it and scores with a reused prefix exactly as
    without (sliding-window caches included)."""
    from transformers import AutoModelForCausalLM

    from longpo.backends.base import Sampling
    from longpo.backends.hf import HFBackend
    from longpo.data.reference import add_reference_logps
    from longpo.files import atomic_write_jsonl
    from longpo.train.trainer import Config, train

    folder = tmp_path / "model"
    build_family_model(name, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reusing = HFBackend(str(folder), dtype="float32", device="cpu", min_shared_prefix=8)
    alone = HFBackend(reusing.model, tokenizer, min_shared_prefix=10**9)

    def fresh():
        return [make_record(f"r{i}", n_turns=1 + i % 2, seed=i) for i in range(2)]

    records = add_reference_logps(reusing, tokenizer, fresh())
    assert reusing.stats["reused_prefix_tokens"] > 4 * WINDOW
    for a, b in zip(records, add_reference_logps(alone, tokenizer, fresh())):
        for ta, tb in zip(a["turns"], b["turns"]):
            for key in ("ref_chosen_logp", "ref_rejected_logp"):
                assert abs(ta[key] - tb[key]) < 1e-3 * abs(tb[key]), (name, key, ta[key], tb[key])
    document = make_record("d", doc_words=60)["document"]
    prompts = [f"<|user|>\n{document}\n{q}<|end|>\n<|assistant|>\n" for q in ("what is the value?", "which city?")]
    greedy = Sampling(temperature=0.0, max_new_tokens=6)
    assert reusing.generate(prompts, greedy) == alone.generate(prompts, greedy), name
    atomic_write_jsonl(tmp_path / "pairs.jsonl", records)
    result = train(Config(model=str(folder), train_file=str(tmp_path / "pairs.jsonl"), output_dir=str(tmp_path / "run"),
                          max_steps=1, gradient_accumulation_steps=1, pairs_per_micro_batch=2, max_length=1024,
                          learning_rate=1e-3, optimizer="adamw", warmup_ratio=0.0, progress_bar=False))
    assert result["steps"] == 1 and result["last"]["loss"] > 0
    exported = AutoModelForCausalLM.from_pretrained(result["export_dir"])
    assert exported.config.model_type == family_config(name).model_type
    assert len(HFBackend(exported, tokenizer).generate(prompts, greedy)) == 2


def test_longpo_train_refuses_an_unsupported_family_before_reading_any_record(tmp_path, capsys):
    """One line naming the feature and the family, exit 2, before the records (here not even JSON) are read
    and before anything is written to output_dir."""
    from longpo.cli import main

    folder = tmp_path / "phi3-longrope"
    _config("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                     "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}
            ).save_pretrained(folder)
    records = tmp_path / "pairs.jsonl"
    records.write_text("this is not a record\n")
    run = tmp_path / "run"
    assert main(["train", f"model={folder}", f"train_file={records}", f"output_dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longpo train: training with rope_type 'longrope' (Phi-3 / Phi-4, model_type 'phi3') "
                          "is not supported") and "\n" not in err, err
    assert not run.exists() or not any(run.iterdir())
