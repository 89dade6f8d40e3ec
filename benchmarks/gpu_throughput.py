"""Training throughput of a 7B-architecture model on one GPU: tokens/s and MFU at 16K, 32K, 64K tokens.

    python benchmarks/gpu_throughput.py                              # Mistral-7B shape, bf16, H200 peak
    python benchmarks/gpu_throughput.py --arch qwen2 --lengths 16384 32768 --backend flex
    python benchmarks/gpu_throughput.py --compare-plain 32768        # and the plain path up to 32K
    python benchmarks/gpu_throughput.py --tiny --lengths 512 1024    # CPU smoke run of this script

The model is built from a config with random weights (nothing is downloaded): Mistral-7B-v0.2's
shape (32 layers, hidden 4096, 32 heads / 8 kv heads, MLP 14336, vocab 32000) or Qwen2.5-7B's (28
layers, hidden 3584, 28 / 4 heads, MLP 18944, vocab 152064). bf16 weights, gradient checkpointing,
one packed pair per step (prompt of length - 2 x 512 tokens, two 512-token answers), the LongPO
loss, forward + backward (no optimizer step: its cost does not depend on the length).
`--backend sdpa` runs one SDPA call per layout span, which dispatches to the flash kernel on CUDA;
`flex` uses compiled FlexAttention with a block mask.

MFU = model FLOPs / step time / peak FLOPs, with model FLOPs counted without recomputation:
6 x (parameters in the decoder layers) per row token, 6 x hidden x vocab per log-prob target
(the lm_head runs only at targets), and 3 x the forward attention FLOPs 4 x hidden x (query, key)
pairs actually computed under the shared-prefix layout (causal spans count half).
"""

from __future__ import annotations

import argparse
import time

ANSWER = 512
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0}  # dense bf16

ARCHS = {
    "mistral": dict(arch="mistral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                    intermediate_size=14336),
    "qwen2": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                  intermediate_size=18944),
    "tiny": dict(arch="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128),
}


def make_pair(length: int, vocab: int):
    import random

    from longpo.data.records import TokenizedPair

    rng = random.Random(0)
    ids = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    return TokenizedPair(id=f"bench-{length}", prefix=ids(length - 2 * ANSWER), chosen=ids(ANSWER),
                         chosen_mask=[True] * ANSWER, rejected=ids(ANSWER), rejected_mask=[True] * ANSWER,
                         ref_chosen_logp=-1000.0, ref_rejected_logp=-1000.0)


def model_flops(batch, config, layer_params: int) -> float:
    """Training FLOPs of one step (forward + backward, no recomputation) for one packed row."""
    h = config.hidden_size
    tokens, targets = batch.num_tokens, int(batch.targets.src.numel())
    pairs = 0.0  # (query, key) pairs attended
    for q0, q1, kv in batch.layout.spans():
        lq = q1 - q0
        lk_other = sum(b - a for a, b in kv[:-1])
        pairs += lq * lk_other + lq * (lq + 1) / 2
    attention = 3 * 4 * h * pairs * config.num_hidden_layers
    return 6 * layer_params * tokens + 6 * h * config.vocab_size * targets + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["mistral", "qwen2"], default="mistral")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per length, after one warm-up")
    parser.add_argument("--backend", choices=["sdpa", "flex"], default="sdpa")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: from the GPU name (H200: 989)")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny model, float32, CPU allowed: checks the script")
    parser.add_argument("--compare-plain", type=int, default=0, metavar="MAX_TOKENS",
                        help="also time the plain path (chosen and rejected as two full sequences, full-vocabulary "
                             "logits) at lengths up to MAX_TOKENS, and print the ratios")
    args = parser.parse_args()

    import torch

    from longpo.toy.tiny import build_tiny_model
    from longpo.train.attention import use_shared_prefix_attention
    from longpo.train.logps import forward_pairs, forward_pairs_plain
    from longpo.train.loss import PairLogps, combine_loss, preference_losses
    from longpo.train.packing import batch_to, pack_pairs

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA device: this benchmark needs a GPU (use --tiny to check the script on CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if not args.tiny else torch.float32
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    if cuda:
        from torch.backends.cuda import flash_sdp_enabled, is_flash_attention_available

        print(f"{gpu}; SDPA flash kernel available: {is_flash_attention_available()}, enabled: {flash_sdp_enabled()}")
    spec = dict(ARCHS["tiny" if args.tiny else args.arch])
    arch = spec.pop("arch")
    with torch.device(device):
        model = build_tiny_model(arch, seed=0, dtype=dtype, max_position_embeddings=max(args.lengths), **spec)
    use_shared_prefix_attention(model, args.backend)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    layer_params = sum(p.numel() for p in model.get_decoder().layers.parameters())
    print(f"{arch}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {dtype}, backend "
          f"{args.backend}, gradient checkpointing {not args.no_checkpointing}")

    def packed_step(batch) -> None:
        out = forward_pairs(model, batch, attention_backend=args.backend)
        pref = preference_losses(out.policy, PairLogps(batch.ref_chosen, batch.ref_rejected), 0.01)
        combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), batch.num_pairs, 1.0, 0.01).backward()
        model.zero_grad(set_to_none=True)

    def plain_step(pair) -> None:  # the model's own attention (no layout kwarg): causal SDPA
        out = forward_pairs_plain(model, [pair], "full")
        ref = torch.tensor([pair.ref_chosen_logp], device=device), torch.tensor([pair.ref_rejected_logp], device=device)
        pref = preference_losses(out.policy, PairLogps(*ref), 0.01)
        combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), 1, 1.0, 0.01).backward()
        model.zero_grad(set_to_none=True)

    def timed(fn, arg) -> tuple[float, float] | None:
        """(seconds per step, peak GiB) after one warm-up step, or None on OOM."""
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn(arg)  # warm-up (and compilation for flex)
            if cuda:
                torch.cuda.synchronize()
            print(f"{getattr(arg, 'num_tokens', '')} {fn.__name__} warm-up {time.perf_counter() - start:.1f} s", flush=True)
            start = time.perf_counter()
            for _ in range(args.steps):
                fn(arg)
            if cuda:
                torch.cuda.synchronize()
            peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            return (time.perf_counter() - start) / args.steps, peak_gib
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            return None

    rows = []
    for length in args.lengths:
        pair = make_pair(length, model.config.vocab_size)
        batch = batch_to(pack_pairs([pair], "full"), device)
        packed = timed(packed_step, batch)
        if packed is None:
            rows.append(f"| {length} | OOM | | | | |" + (" | | | |" if args.compare_plain else ""))
            print(rows[-1], flush=True)
            continue
        seconds, peak_gib = packed
        flops = model_flops(batch, model.config, layer_params)
        mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if peak else "-"
        row = (f"| {length} | {batch.num_tokens / seconds:,.0f} | {seconds:.2f} | {flops / seconds / 1e12:.0f} "
               f"| {mfu} | {peak_gib:.1f} |")
        if args.compare_plain:
            plain = timed(plain_step, pair) if length <= args.compare_plain else None
            if plain is None:
                reason = "OOM" if length <= args.compare_plain else "not run"
                row += f" {reason} | | | |"
            else:
                row += f" {plain[0]:.2f} | {plain[1]:.1f} | {plain[0] / seconds:.2f}x | {peak_gib / plain[1]:.2f}x |"
        rows.append(row)
        print(row, flush=True)
    print(f"\n{gpu}, {arch}, {dtype}, backend {args.backend}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    head = "| tokens | tokens/s | step s | model TFLOP/s | MFU | peak GiB |"
    rule = "|---|---|---|---|---|---|"
    if args.compare_plain:
        head += " plain step s | plain peak GiB | speed-up | memory vs plain |"
        rule += "---|---|---|---|"
    print(head)
    print(rule)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
