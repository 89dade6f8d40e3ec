"""`longpo plan`: the first layout, cheapest first, whose predicted peak per GPU fits; torch-free.

The predicted peak per GPU is the memory model's (`longpo/train/memory.py`): states sharded over the GPUs
(or offloaded) + gathered working weights + `estimate_activation_bytes` of length / sp_size tokens + one
log-prob chunk. These tests check the choice and the arithmetic's composition, not a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longpo import cli
from longpo.train import plan
from longpo.train.memory import estimate_activation_bytes

ROOT = Path(__file__).resolve().parents[2]
MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B))
    return tmp_path


def test_the_chosen_layout_is_the_first_that_fits(model_dir):
    shape = plan.read_model_shape(model_dir)
    for tokens, gpus in ((131072, 1), (524288, 1), (1048576, 8)):
        chosen, tried = plan.plan_layout(shape, tokens, gpus, 80.0)
        assert chosen is not None and chosen.peak_bytes <= 80 * 2**30, (tokens, gpus)
        assert all(lay.peak_bytes > 80 * 2**30 for lay in tried[: tried.index(chosen)])


def test_the_peak_adds_the_memory_models_parts(model_dir):
    """sp 8 over 8 GPUs: activations of 1/8 of the row; states 7.24B x (4 + 4 + 4 RMSprop) / 8 GPUs."""
    shape = plan.read_model_shape(model_dir)
    lay = plan.layout_bytes(shape, 262144, 8, 8, ("full", 1, True, False), False, "rmsprop", 4096, 8)
    act = estimate_activation_bytes(shape, 32768, "full", mlp_tile_tokens=4096)
    assert lay.parts["activations kept"] == act.saved and lay.parts["recomputed layer"] == act.recompute
    assert lay.parts["states"] == 7241732096 * 12 // 8
    assert lay.gradient_accumulation_steps == 8 and lay.host_bytes == 0


def test_plan_prints_the_layout_without_importing_torch(model_dir):
    """`longpo plan` of a 7B shape at 512K tokens on one 80 GiB GPU (the issue's goal, by the estimate)."""
    code = (f"import sys; from longpo.cli import main; rc = main(['plan', {str(model_dir)!r}, '--length', '524288', "
            f"'--gpus', '1', '--gpu-gib', '80']); assert 'torch' not in sys.modules; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "mlp_tile_tokens: 4096" in out.stdout and "predicted peak per GPU:" in out.stdout, out.stdout


def test_plan_says_when_nothing_fits_and_refuses_what_it_cannot_model(model_dir, capsys, tmp_path):
    assert cli.main(["plan", str(model_dir), "--length", "8388608", "--gpus", "1", "--gpu-gib", "80"]) == 1
    assert "nothing fits" in capsys.readouterr().out
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({**MISTRAL_7B, "num_local_experts": 8}))
    assert cli.main(["plan", str(moe), "--length", "1024"]) == 2
    assert "mixture of experts" in capsys.readouterr().err
    assert cli.main(["plan", str(model_dir), "--length", "1024", "--gpus", "3"]) == 2
    assert "power of two" in capsys.readouterr().err


def test_longest_length_is_a_boundary():
    fits = lambda shape, tokens, gpus, gib: tokens <= 300_000  # noqa: E731
    assert plan.longest_length(None, 1, 80, fits) == 299_008


def test_sp_past_the_head_count_counts_the_gathered_keys(tmp_path):
    """A SmolLM2-135M shape (9 heads) on 16 GPUs may use sp 16 (Ulysses groups of 8 x 2 segments); the rank
    then also holds the other segment's keys and values: 1 x (T / 16) x 2 x Dq x 2 bytes in the recomputed layer."""
    shape = plan.SimpleNamespace(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                 tie_word_embeddings=True)
    lay = plan.layout_bytes(shape, 1 << 20, 16, 16, ("full", 1, True, False), False, "rmsprop", 4096, 8)
    assert lay.parts["gathered keys/values"] == (1 << 20) // 16 * 2 * 576 * 2
    assert 16 in {lay.sp_size for lay in plan.candidate_layouts(shape, 1 << 20, 16)}


def test_fill_train_keys_plans_around_the_keys_given(model_dir):
    """Keys the user set are kept and constrain the layout; only the unset ones are returned, from the first
    layout that fits among those agreeing with the given keys (`gradient_checkpointing: true` = full)."""
    shape = plan.read_model_shape(model_dir)
    free = plan.fill_train_keys(shape, 524288, 8, 80.0, {})
    chosen, _ = plan.plan_layout(shape, 524288, 8, 80.0)
    assert free.layout == chosen and free.keys["sp_size"] == chosen.sp_size
    assert free.keys["gradient_accumulation_steps"] == 8 // (8 // chosen.sp_size)
    given = {"sp_size": 8, "gradient_checkpointing": True, "gradient_accumulation_steps": 3, "learning_rate": 1e-6}
    filled = plan.fill_train_keys(shape, 524288, 8, 80.0, given)
    assert filled.layout.sp_size == 8 and filled.layout.activation_checkpointing == "full"
    assert set(filled.keys) == {"mlp_tile_tokens", "offload_activations"}, filled.keys
    assert "predicted peak" in filled.note and "estimate" in filled.note
    refused = plan.fill_train_keys(shape, 524288, 1, 80.0, {"activation_checkpointing": "off"})
    assert refused.layout is None and refused.keys == {} and "no layout fits" in refused.note
