"""Which speed options fit a length on a GPU, and the longest length each allows: the memory model of
longpo/train/memory.py (estimates, not measurements; torch is not imported).

    python benchmarks/memory_model.py                                  # Mistral-7B shape, bf16, one H200
    python benchmarks/memory_model.py --arch qwen2 --gpu-gib 79 --lengths 32768 65536
    python benchmarks/memory_model.py --weight-bytes 4 --grad-bytes 4 --optimizer-bytes 8   # fp32, AdamW
    python benchmarks/memory_model.py --longest --gpu-gib 80           # longest length per option, 1 and 8 GPUs

Per-length table: one packed pair per row (prompt of length - 2 x 512 tokens, two 512-token answers, as
benchmarks/gpu_throughput.py), per device without sequence parallel. Device peak (`estimate_peak_bytes`) =
weights + optimizer state + max(activations kept, gradients) + one recomputed region + the backward's
buffers; defaults as the GPU benchmark: bf16 weights and gradients, no optimizer state.

--longest: the layouts of `longpo plan` (longpo/train/plan.py: fp32 weights and gradients and RMSprop state
sharded over the GPUs as ZeRO-3 / FSDP2 do, or offloaded to the host; bf16 activations; sp_size = the GPU
count), the longest multiple of 1024 tokens whose predicted peak per GPU fits, per option set.
"""

from __future__ import annotations

import argparse
from functools import partial
from types import SimpleNamespace

ANSWER = 512
SHAPES = {
    "mistral": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336),
    "llama3": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336),
    "qwen2": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944),
}
TILE = 4096
MODES = {  # label -> (activation_checkpointing, checkpoint_every_k, offload_activations, mlp_tile_tokens)
    "off": ("off", 1, False, 0),
    "mlp": ("mlp", 1, False, 0),
    "tiled": ("off", 1, False, TILE),
    "every_k=2": ("every_k", 2, False, 0),
    "full": ("full", 1, False, 0),
    "full+tiled": ("full", 1, False, TILE),
    "full+offload": ("full", 1, True, 0),
    "full+tiled+offload": ("full", 1, True, TILE),
}
LONGEST = {  # label -> ((activation_checkpointing, every_k, tiled MLP, offload_activations), offload states)
    "full": (("full", 1, False, False), False),
    "full+tiled": (("full", 1, True, False), False),
    "full+tiled+offload": (("full", 1, True, True), False),
    "full, states offloaded": (("full", 1, False, False), True),
    "full+tiled+offload, states offloaded": (("full", 1, True, True), True),
}


def shape_of(arch: str) -> SimpleNamespace:
    return SimpleNamespace(**SHAPES[arch], tie_word_embeddings=False)


def layout_fits(activations: tuple, offload_states: bool, shape, tokens: int, gpus: int, gpu_gib: float) -> bool:
    from longpo.train.plan import GIB, layout_bytes

    sp = min(gpus, shape.num_attention_heads)
    lay = layout_bytes(shape, tokens, gpus, sp, activations, offload_states, "rmsprop", TILE, 8)
    return lay.peak_bytes <= gpu_gib * GIB


def longest_table(gpu_gib: float) -> None:
    from longpo.train.plan import longest_length

    print(f"Longest trainable length (tokens, estimate) per GPU of {gpu_gib:g} GiB; sp_size = GPUs; "
          f"tiles of {TILE} tokens")
    print("| model | GPUs | " + " | ".join(LONGEST) + " |")
    print("|---|---:|" + "---:|" * len(LONGEST))
    for arch, name in (("mistral", "Mistral-7B"), ("llama3", "Llama-3-8B")):
        for gpus in (1, 8):
            cells = [longest_length(shape_of(arch), gpus, gpu_gib, partial(layout_fits, acts, states))
                     for acts, states in LONGEST.values()]
            print(f"| {name} | {gpus} | " + " | ".join(f"{c // 1024}K" if c else "-" for c in cells) + " |")


def main(argv: list[str] | None = None) -> None:
    from longpo.train.memory import estimate_activation_bytes, estimate_peak_bytes, parameter_count

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=list(SHAPES), default="mistral")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--gpu-gib", type=float, default=139.0, help="device memory (H200: about 139 GiB usable)")
    parser.add_argument("--weight-bytes", type=float, default=2.0, help="bytes per parameter of the weights (bf16: 2)")
    parser.add_argument("--grad-bytes", type=float, default=2.0, help="bytes per parameter of the gradients")
    parser.add_argument("--optimizer-bytes", type=float, default=0.0,
                        help="bytes per parameter of optimizer state and master weights (AdamW + fp32 master: 12)")
    parser.add_argument("--dtype-bytes", type=int, default=2, help="activation dtype (bf16: 2)")
    parser.add_argument("--longest", action="store_true", help="the longest-length table of `longpo plan`'s layouts")
    args = parser.parse_args(argv)
    if args.longest:
        longest_table(args.gpu_gib)
        return

    config = shape_of(args.arch)
    params = parameter_count(config)
    print(f"{args.arch}: {params / 1e9:.2f}B parameters; bytes per parameter: weights {args.weight_bytes:g}, "
          f"gradients {args.grad_bytes:g}, optimizer {args.optimizer_bytes:g}; device {args.gpu_gib:g} GiB; tiles of "
          f"{TILE} tokens. Cells: estimated device peak GiB, fits or OOM (activations kept to the backward GiB)")
    print("| tokens | " + " | ".join(MODES) + " |")
    print("|---:|" + "---|" * len(MODES))
    for length in args.lengths:
        prefix = length - 2 * ANSWER
        layout = SimpleNamespace(total_len=length, spans=lambda p=prefix: [
            (0, p, ((0, p),)), (p, p + ANSWER, ((0, p), (p, p + ANSWER))),
            (p + ANSWER, p + 2 * ANSWER, ((0, p), (p + ANSWER, p + 2 * ANSWER)))])
        cells = []
        for mode, every_k, offload, tile in MODES.values():
            est = estimate_activation_bytes(config, layout, mode, every_k=every_k, offload=offload,
                                            dtype_bytes=args.dtype_bytes, mlp_tile_tokens=tile)
            total = estimate_peak_bytes(est, params, args.weight_bytes, args.grad_bytes, args.optimizer_bytes) / 2**30
            fits = "fits" if total <= args.gpu_gib else "OOM"
            host = f", host {est.host / 2**30:.0f}" if offload else ""
            cells.append(f"{total:.0f} {fits} ({est.saved / 2**30:.1f}{host})")
        print(f"| {length} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
