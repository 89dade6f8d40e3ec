"""Peak memory of a training step with and without the tiled MLP on CPU, against the memory model.

    python benchmarks/tiled_mlp_memory.py                        # 8K and 16K tokens, modes full and off
    python benchmarks/tiled_mlp_memory.py --lengths 8192 --modes full --tile 1024

Each case runs in a fresh process (glibc told to return every block over 64 KiB to the system at once,
MALLOC_MMAP_THRESHOLD_, so freed tensors leave the resident set): a float32 Llama-style model of 2 layers
(hidden 256, MLP 1024, 4 / 2 heads), one packed pair (prompt of length - 1024 tokens, two 512-token
answers, as benchmarks/memory_model.py), forward to the last hidden state and backward. Measured: the
process's peak resident bytes during the step above its resident bytes before it (`ru_maxrss`).
Model: `estimate_peak_bytes` of `estimate_activation_bytes(..., device="cpu")`, weights excluded (they are
resident before the step), gradients of every parameter included. Ratios are tiled / untiled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSWER = 512
SHAPE = dict(hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512)


def run_case(length: int, mode: str, tile: int) -> dict:
    """In this process: build the model and the row, then one forward + backward; bytes measured and modelled."""
    import resource

    import torch

    from longpo.data.records import TokenizedPair
    from longpo.toy.tiny import build_tiny_model
    from longpo.train.attention import use_shared_prefix_attention
    from longpo.train.config import Config
    from longpo.train.logps import forward_hidden
    from longpo.train.memory import estimate_activation_bytes, estimate_peak_bytes
    from longpo.train.packing import pack_pairs
    from longpo.train.speed import apply_speed_options

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from memory import rss_mb

    torch.manual_seed(0)
    model = build_tiny_model("llama", dtype=torch.float32, seed=0, **SHAPE)
    use_shared_prefix_attention(model)
    apply_speed_options(model, Config(activation_checkpointing=mode, mlp_tile_tokens=tile))
    model.train()
    ids = torch.randint(3, 500, (length,)).tolist()
    prefix = length - 2 * ANSWER
    pair = TokenizedPair(id="m", prefix=ids[:prefix], chosen=ids[prefix:prefix + ANSWER], chosen_mask=[True] * ANSWER,
                         rejected=ids[prefix + ANSWER:], rejected_mask=[True] * ANSWER, ref_chosen_logp=0.0,
                         ref_rejected_logp=0.0)
    batch = pack_pairs([pair], "full")
    layout = batch.layout
    before = rss_mb()
    forward_hidden(model, batch).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    act = estimate_activation_bytes(model.config, layout, mode, dtype_bytes=4, targets=0, device="cpu",
                                    mlp_tile_tokens=tile)
    return {"measured_mib": peak - before, "model_mib": estimate_peak_bytes(act, params, 0, 4) / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--modes", nargs="+", default=["full", "off"], help="activation_checkpointing modes")
    parser.add_argument("--tile", type=int, default=1024, help="mlp_tile_tokens of the tiled runs")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, in a child process
    args = parser.parse_args(argv)
    if args.case:
        length, mode, tile = args.case.split(",")
        print(json.dumps(run_case(int(length), mode, int(tile))))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    print(f"CPU, float32, Llama-style {SHAPE}, tiles of {args.tile} tokens; peak MiB above the step's start, "
          f"measured / memory model")
    print("| tokens | checkpointing | untiled | tiled | ratio measured | ratio model |")
    print("|---:|---|---|---|---:|---:|")
    for length in args.lengths:
        for mode in args.modes:
            rows = []
            for tile in (0, args.tile):
                out = subprocess.run([sys.executable, __file__, "--case", f"{length},{mode},{tile}"], env=env,
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            plain, tiled = rows
            print(f"| {length} | {mode} | {plain['measured_mib']:.0f} / {plain['model_mib']:.0f} | "
                  f"{tiled['measured_mib']:.0f} / {tiled['model_mib']:.0f} | "
                  f"{tiled['measured_mib'] / plain['measured_mib']:.2f} | {tiled['model_mib'] / plain['model_mib']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
