"""Which activation checkpointing setting fits a length on a GPU: the memory model of longpo/train/memory.py.

    python benchmarks/memory_model.py                                  # Mistral-7B shape, bf16, one H200
    python benchmarks/memory_model.py --arch qwen2 --gpu-gib 79 --lengths 32768 65536
    python benchmarks/memory_model.py --weight-bytes 4 --grad-bytes 4 --optimizer-bytes 8   # fp32, AdamW

Estimated, not measured: one packed pair per row (prompt of length - 2 x 512 tokens, two 512-token
answers, as benchmarks/gpu_throughput.py), per device without sequence parallel (with sp_size N each
rank holds about 1/N of the row's activations). Device peak (`estimate_peak_bytes`) = weights +
optimizer state + max(activations kept, gradients) + one recomputed region + the backward's buffers;
defaults as the GPU benchmark: bf16 weights and gradients, no optimizer state.
"""

from __future__ import annotations

import argparse

ANSWER = 512
SHAPES = {
    "mistral": dict(arch="mistral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                    intermediate_size=14336),
    "qwen2": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                  intermediate_size=18944),
}
MODES = {  # label -> (activation_checkpointing, checkpoint_every_k, offload_activations)
    "off": ("off", 1, False),
    "mlp": ("mlp", 1, False),
    "every_k=2": ("every_k", 2, False),
    "full": ("full", 1, False),
    "full+offload": ("full", 1, True),
}


def parameter_count(spec: dict) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from longpo.toy.tiny import tiny_model_config

    spec = dict(spec)
    config = tiny_model_config(spec.pop("arch"), **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    from longpo.train.memory import estimate_activation_bytes, estimate_peak_bytes
    from longpo.train.packing import SharedPrefixLayout

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=list(SHAPES), default="mistral")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--gpu-gib", type=float, default=139.0, help="device memory (H200: about 139 GiB usable)")
    parser.add_argument("--weight-bytes", type=float, default=2.0, help="bytes per parameter of the weights (bf16: 2)")
    parser.add_argument("--grad-bytes", type=float, default=2.0, help="bytes per parameter of the gradients")
    parser.add_argument("--optimizer-bytes", type=float, default=0.0,
                        help="bytes per parameter of optimizer state and master weights (AdamW + fp32 master: 12)")
    parser.add_argument("--dtype-bytes", type=int, default=2, help="activation dtype (bf16: 2)")
    args = parser.parse_args(argv)

    config, params = parameter_count(SHAPES[args.arch])
    print(f"{args.arch}: {params / 1e9:.2f}B parameters; bytes per parameter: weights {args.weight_bytes:g}, "
          f"gradients {args.grad_bytes:g}, optimizer {args.optimizer_bytes:g}; device {args.gpu_gib:g} GiB. "
          f"Cells: estimated device peak GiB, fits or OOM (activations kept to the backward GiB)")
    print("| tokens | " + " | ".join(MODES) + " |")
    print("|---:|" + "---|" * len(MODES))
    for length in args.lengths:
        prefix = length - 2 * ANSWER
        layout = SharedPrefixLayout(pairs=((0, prefix, ANSWER, ANSWER),), total_len=length)
        cells = []
        for mode, every_k, offload in MODES.values():
            est = estimate_activation_bytes(config, layout, mode, every_k=every_k, offload=offload,
                                            dtype_bytes=args.dtype_bytes)
            total = estimate_peak_bytes(est, params, args.weight_bytes, args.grad_bytes, args.optimizer_bytes) / 2**30
            fits = "fits" if total <= args.gpu_gib else "OOM"
            host = f", host {est.host / 2**30:.0f}" if offload else ""
            cells.append(f"{total:.0f} {fits} ({est.saved / 2**30:.1f}{host})")
        print(f"| {length} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
