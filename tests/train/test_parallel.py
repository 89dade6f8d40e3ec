"""Sequence parallel (Ulysses) and data parallel equal one process: values, metrics and gradients.

The multi-process checks run `sp_worker.py` under torchrun on gloo (2 and 4 CPU processes, tiny
float64 models); every rank compares itself with the one-process computation and the launch
fails on any mismatch. The rest checks the pieces in this process: head plans and batch sharding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longpo.data.records import tokenize_pair
from longpo.train.packing import pack_pairs
from longpo.train.parallel import Mesh, init_mesh, padded_length, plan_heads, shard_batch, ulysses_size
from tests.conftest import make_record

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sp_worker.py")


def _torchrun(nproc: int, suite: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{suite}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), "--suite", suite, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun {suite} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())


TRAIN_RECIPE = """\
model: tiny
dtype: float64
tiny_records: 8
pairs_per_micro_batch: 2
gradient_accumulation_steps: 2
max_steps: 2
optimizer: adamw
learning_rate: 1.0e-3
warmup_ratio: 0.0
beta: 0.1
lam: 0.1
max_length: 4096
progress_bar: false
seed: 3
attention_backend: sdpa
"""


def train_one_and_sp2(tmp_path: Path, *sp2_keys: str) -> dict[str, list[dict]]:
    """`longpo train` of TRAIN_RECIPE in one process ("one") and under torchrun on 2 gloo ranks with
    sp_size=2 plus `sp2_keys` ("sp2"), each into tmp_path/<name>; the metrics rows of each run."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TRAIN_RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    train = ["-m", "longpo.cli", "train", "--config", str(recipe)]
    runs = {
        "one": [sys.executable, *train, f"output_dir={tmp_path / 'one'}"],
        "sp2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train,
                "sp_size=2", *sp2_keys, f"output_dir={tmp_path / 'sp2'}"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in runs}


@pytest.mark.slow
def test_longpo_train_with_sp_size_2_equals_one_process(tmp_path):
    """`longpo train sp_size=2` under torchrun (2 gloo ranks, accelerate MULTI_CPU) writes the same
    metrics and the same final weights as the one-process run: 2 AdamW steps, float64."""
    from safetensors.torch import load_file

    rows = train_one_and_sp2(tmp_path)
    assert len(rows["one"]) == len(rows["sp2"]) == 2
    timing = {"tokens_per_s", "pairs_per_s", "seconds"}
    for a, b in zip(rows["one"], rows["sp2"]):
        assert a.keys() == b.keys()
        for key in a.keys() - timing:
            assert b[key] == pytest.approx(a[key], rel=1e-10, abs=1e-12), f"step {a['step']} {key}: {b[key]} != {a[key]}"
    weights = {n: load_file(next((tmp_path / n / "final").glob("*.safetensors"))) for n in rows}
    for key, w in weights["one"].items():
        torch.testing.assert_close(weights["sp2"][key], w, rtol=1e-10, atol=1e-12, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.slow
def test_sp2_equals_one_process(tmp_path):
    """sp 2: Llama / Mistral / Qwen2, 1 and 2 turns, 9 heads on 2 ranks, kv heads < sp, odd row length,
    3 AdamW steps, M = 2 rejected answers per turn ((P, M) log-probs gathered); loss, every metric and every
    gradient match one process."""
    report = _torchrun(2, "sp2", tmp_path)
    assert len(report) == 6, f"cases run: {sorted(report)}"
    assert report["llama-sp2-3steps"]["weight"] < 1e-10, report


@pytest.mark.slow
def test_sp4_and_dp2_x_sp2_equal_one_process(tmp_path):
    """sp 4 (10 heads on 4 ranks, kv heads replicated, odd row lengths) and dp 2 x sp 2 on two samples."""
    report = _torchrun(4, "sp4", tmp_path)
    assert len(report) == 5, f"cases run: {sorted(report)}"
    assert report["mistral-sp4-10heads-oddlen"]["min_targets_per_shard"] == 0, "no rank ran without targets"


@pytest.mark.slow
def test_sp_past_the_head_count_equals_one_process(tmp_path):
    """sp 4 on models with 2, 3 and 1 query heads (Ulysses groups of 2, 2 and 1 ranks, keys and values gathered
    across 2, 2 and 4 segments), and dp 2 x sp 2 with one head over 2 optimizer steps: loss, every metric and
    every gradient (and the weights) match one process, float64."""
    report = _torchrun(4, "past_heads", tmp_path)
    assert len(report) == 4, f"cases run: {sorted(report)}"
    assert report["llama-dp2xsp2-1head"]["weight"] < 1e-10, report


@pytest.mark.parametrize("opts", [None, dict(window=6), dict(softcap=3.0), dict(sinks=True)])
def test_a_query_range_equals_its_slice_of_the_whole_rows_attention(opts):
    """`shared_prefix_attention(q[a:b], k, v, query_range=(a, b))` = rows a..b of the attention of the whole row,
    for ranges that cut prefix and branch spans and padding, with windows, softcapping and sinks (float64)."""
    from longpo.train.attention import AttentionOptions, shared_prefix_attention
    from longpo.train.packing import SharedPrefixLayout

    torch.manual_seed(0)
    layout = SharedPrefixLayout(pairs=((0, 20, 7, 5), (32, 10, 4, 6)), total_len=56)
    q, k, v = (torch.randn(1, h, 56, 8, dtype=torch.float64) for h in (4, 2, 2))
    if opts and opts.get("sinks"):
        opts = dict(sinks=torch.randn(4, dtype=torch.float64))
    opts = AttentionOptions(**(opts or {}))
    whole = shared_prefix_attention(q, k, v, layout, opts=opts)
    for a, b in ((0, 14), (14, 28), (28, 42), (42, 56), (3, 25), (50, 56)):
        part = shared_prefix_attention(q[:, :, a:b], k, v, layout, opts=opts, query_range=(a, b))
        torch.testing.assert_close(part, whole[:, :, a:b], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sp,heads,u", [(2, 4, 2), (8, 28, 8), (4, 2, 2), (4, 3, 2), (4, 1, 1), (16, 12, 8), (6, 4, 3)])
def test_ulysses_size_is_the_largest_divisor_within_the_heads(sp, heads, u):
    assert ulysses_size(sp, heads) == u


@pytest.mark.parametrize("heads,kv_heads,sp,q_counts,kv_ranges", [
    (4, 2, 2, [2, 2], [(0, 1), (1, 2)]),
    (4, 2, 4, [1, 1, 1, 1], [(0, 1), (0, 1), (1, 2), (1, 2)]),  # kv heads replicated
    (28, 4, 8, [4, 4, 4, 4, 3, 3, 3, 3], [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (3, 4)]),
    (9, 3, 2, [5, 4], [(0, 2), (1, 3)]),
])
def test_head_plan_splits_queries_evenly_and_gives_each_rank_its_kv_heads(heads, kv_heads, sp, q_counts, kv_ranges):
    plan = plan_heads(heads, kv_heads, sp)
    assert plan.q_counts == q_counts
    assert list(plan.kv_ranges) == kv_ranges
    n_rep = heads // kv_heads
    for (qa, qb), (ka, kb) in zip(plan.q_ranges, plan.kv_ranges):
        assert {j // n_rep for j in range(qa, qb)} == set(range(ka, kb))


def test_head_plan_refuses_more_ranks_than_heads():
    with pytest.raises(ValueError, match="sp_size=8 exceeds the 4 attention heads"):
        plan_heads(4, 2, 8)


@pytest.mark.parametrize("sp", [2, 3, 4])
def test_shards_partition_the_row_and_its_targets(tokenizer, sp):
    """Concatenated shards = the row padded to a multiple of sp; shard targets, shifted back by the
    shard offset, are exactly the row's targets (padding is never a target)."""
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=2, seed=i)) for i in range(2)]
    batch = pack_pairs(pairs, "full")
    total = padded_length(batch.input_ids.shape[1], sp)
    shards = [shard_batch(batch, Mesh(sp_size=sp, sp_rank=r)) for r in range(sp)]
    ids = torch.cat([s.input_ids for s in shards], dim=1)
    assert ids.shape[1] == total and torch.equal(ids[:, : batch.input_ids.shape[1]], batch.input_ids)
    assert torch.equal(torch.cat([s.position_ids for s in shards], dim=1)[:, : batch.position_ids.shape[1]],
                       batch.position_ids)
    size = total // sp

    def rows(src, t):  # the targets as a sorted list of (src, tgt, slot, nll)
        return sorted(zip(src.tolist(), t.tgt.tolist(), t.slot.tolist(), t.nll.tolist()))

    sharded = [row for r, s in enumerate(shards) for row in rows(s.targets.src + r * size, s.targets)]
    assert sorted(sharded) == rows(batch.targets.src, batch.targets)
    assert all(((s.targets.src >= 0) & (s.targets.src < size)).all() for s in shards)
    assert all(s.layout.total_len == total and s.layout.pairs == batch.layout.pairs for s in shards)
    assert all(s.num_nll_tokens == batch.num_nll_tokens and s.num_pairs == batch.num_pairs for s in shards)


def test_one_process_mesh_is_a_no_op(tokenizer):
    mesh = init_mesh(1)
    assert (mesh.sp_size, mesh.dp_size, mesh.world_size) == (1, 1, 1)
    batch = pack_pairs([tokenize_pair(tokenizer, make_record())])
    assert shard_batch(batch, mesh) is batch
    with pytest.raises(ValueError, match="needs torch.distributed"):
        init_mesh(2)


def test_a_shard_without_targets_still_runs_the_lm_head():
    """An SP shard can hold no target; lm_head must still join the graph (DDP needs its gradient,
    ZeRO-3 its gather on every rank), and the dtype must match the other ranks' for the all-reduce."""
    from longpo.train.logps import chunked_target_logps

    head = torch.nn.Linear(8, 50, bias=False, dtype=torch.float64)
    hidden = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    out = chunked_target_logps(hidden[:0], head, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float64
    out.sum().backward()
    assert head.weight.grad is not None and not head.weight.grad.any()
    assert hidden.grad is not None
