"""Training throughput of a 7B-architecture model on one GPU: tokens/s, MFU and peak memory at 16K, 32K, 64K
tokens, for the plain path, ours with each speed option alone and in combination, and TRL's DPOTrainer.

    python benchmarks/gpu_throughput.py                              # every row, Mistral-7B shape, bf16
    python benchmarks/gpu_throughput.py --rows ours plain --compare-plain 32768
    python benchmarks/gpu_throughput.py --rows ours compile liger compile+liger+mlp trl trl+liger
    python benchmarks/gpu_throughput.py --arch qwen2 --backend flex --rows ours
    python benchmarks/gpu_throughput.py --dry-run                    # print the plan, build nothing
    python benchmarks/gpu_throughput.py --tiny --lengths 1536 2048   # CPU check of every row's code path

The model is built from a config with random weights (nothing is downloaded): Mistral-7B-v0.2's
shape (32 layers, hidden 4096, 32 heads / 8 kv heads, MLP 14336, vocab 32000) or Qwen2.5-7B's (28
layers, hidden 3584, 28 / 4 heads, MLP 18944, vocab 152064). bf16 weights, one pair per step
(prompt of length - 2 x 512 tokens, two 512-token answers), the LongPO loss (NLL + 0.01 x preference),
forward + backward. Rows (`ROWS`; each builds a fresh model):

  plain      chosen and rejected as two full sequences, full-vocabulary logits, transformers' checkpointing
  ours       the packed shared-prefix path with `gradient_checkpointing: true` (today's default recipe)
  <options>  ours with the `longpo train` speed keys of the row (longpo/train/speed.py)
  trl        TRL's DPOTrainer on the same pair: loss_type sigmoid + sft, precomputed reference log-probs,
             gradient checkpointing, SGD (its step includes an optimizer step; ours do not); `trl+liger`
             adds use_liger_kernel. Needs `pip install 'longpo[bench]'` (and liger-kernel for trl+liger).

MFU = model FLOPs of the LongPO step / step time / peak FLOPs, the same FLOPs for every row (the work
the step must do: the prefix once), counted without recomputation: 6 x decoder parameters per row
token, 6 x hidden x vocab per log-prob target, 3 x the forward attention FLOPs 4 x hidden x (query, key)
pairs under the shared-prefix layout (causal spans count half). tokens/s counts the pair's tokens
(prefix + both answers) for every row.
"""

from __future__ import annotations

import argparse
import math
import tempfile
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

# Row name -> `longpo train` speed keys (longpo/train/trainer.py Config); "plain" and "trl*" are other paths.
ROWS = {
    "plain": None,
    "ours": dict(gradient_checkpointing=True),
    "ckpt=mlp": dict(activation_checkpointing="mlp"),
    "ckpt=every_2": dict(activation_checkpointing="every_k", checkpoint_every_k=2),
    "ckpt=full+offload": dict(activation_checkpointing="full", offload_activations=True),
    "ckpt=full": dict(activation_checkpointing="full"),
    "ckpt=full+tiled": dict(activation_checkpointing="full", mlp_tile_tokens=4096),
    "ckpt=full+tiled+offload": dict(activation_checkpointing="full", mlp_tile_tokens=4096, offload_activations=True),
    "compile": dict(gradient_checkpointing=True, compile_layers=True),
    "liger": dict(gradient_checkpointing=True, liger_kernels=True),
    "compile+liger": dict(gradient_checkpointing=True, compile_layers=True, liger_kernels=True),
    "compile+liger+offload": dict(activation_checkpointing="full", offload_activations=True, compile_layers=True,
                                  liger_kernels=True),
    "compile+liger+mlp": dict(activation_checkpointing="mlp", compile_layers=True, liger_kernels=True),
    "compile+liger+every_2": dict(activation_checkpointing="every_k", checkpoint_every_k=2, compile_layers=True,
                                  liger_kernels=True),
    "trl": None,
    "trl+liger": None,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["mistral", "qwen2"], default="mistral")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), metavar="ROW",
                        help=f"rows to time, in this order; choose from {list(ROWS)}")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per length, after one warm-up")
    parser.add_argument("--backend", choices=["sdpa", "flex"], default="sdpa")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: from the GPU name (H200: 989)")
    parser.add_argument("--compare-plain", type=int, default=None, metavar="MAX_TOKENS",
                        help="time the plain row only at lengths up to MAX_TOKENS (default: every length)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of compile_layers rows (--tiny on CPU: aot_eager is quicker)")
    parser.add_argument("--tiny", action="store_true", help="tiny model, float32, CPU allowed: checks the script")
    parser.add_argument("--dry-run", action="store_true", help="print the rows and their options; build nothing")
    args = parser.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    short = [n for n in args.lengths if n <= 2 * ANSWER]
    if short:
        parser.error(f"--lengths {short}: each length must exceed the two {ANSWER}-token answers ({2 * ANSWER})")
    for name in args.rows:  # the same validation `longpo train` applies to these keys
        if ROWS[name] is not None:
            speed_config(ROWS[name])
    return args


def speed_config(options: dict):
    from longpo.train.trainer import Config

    return Config(**options)


class Bench:
    """One model shape, device and dtype; every row builds its own model and times it at every length."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args, self.torch = args, torch
        self.cuda = torch.cuda.is_available()
        if not self.cuda and not args.tiny:
            raise SystemExit("no CUDA device: this benchmark needs a GPU (use --tiny to check the script on CPU)")
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if not args.tiny else torch.float32
        self.gpu = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in self.gpu), None)
        self.spec = dict(ARCHS["tiny" if args.tiny else args.arch])
        self.arch = self.spec.pop("arch")

    def build(self):
        from longpo.toy.tiny import build_tiny_model

        with self.torch.device(self.device):
            model = build_tiny_model(self.arch, seed=0, dtype=self.dtype, max_position_embeddings=max(self.args.lengths),
                                     **self.spec)
        model.train()
        return model

    def free(self, compiled: bool = False) -> None:
        """Release memory between lengths; `compiled`: also drop compiled code (between rows only, so that a
        new length of the same row shows whether it recompiles)."""
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
        if compiled:
            self.torch._dynamo.reset()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, step, arg) -> tuple[float, float]:
        """(seconds per step, peak GiB) after one warm-up step (compilation happens there)."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step(arg)
        self.sync()
        print(f"  warm-up {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        for _ in range(self.args.steps):
            step(arg)
        self.sync()
        peak = self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        return (time.perf_counter() - start) / self.args.steps, peak

    def longpo_steps(self, name: str):
        """(model, prepare(length) -> step input, step(input)) for the plain row and our rows."""
        from longpo.train.attention import use_shared_prefix_attention
        from longpo.train.logps import forward_pairs, forward_pairs_plain
        from longpo.train.loss import PairLogps, combine_loss, preference_losses
        from longpo.train.packing import batch_to, pack_pairs
        from longpo.train.speed import apply_speed_options

        torch, model = self.torch, self.build()
        if name == "plain":  # the model's own attention (no layout kwarg): causal SDPA
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

            def step(pair) -> None:
                out = forward_pairs_plain(model, [pair], "full")
                ref = PairLogps(torch.tensor([pair.ref_chosen_logp], device=self.device),
                                torch.tensor([pair.ref_rejected_logp], device=self.device))
                pref = preference_losses(out.policy, ref, 0.01)
                combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), 1, 1.0, 0.01).backward()
                model.zero_grad(set_to_none=True)

            return model, lambda length: make_pair(length, model.config.vocab_size), step
        use_shared_prefix_attention(model, self.args.backend)
        apply_speed_options(model, speed_config(ROWS[name]))

        def prepare(length: int):
            return batch_to(pack_pairs([make_pair(length, model.config.vocab_size)], "full"), self.device)

        def step(batch) -> None:
            out = forward_pairs(model, batch, attention_backend=self.args.backend)
            pref = preference_losses(out.policy, PairLogps(batch.ref_chosen, batch.ref_rejected), 0.01)
            combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), batch.num_pairs, 1.0, 0.01).backward()
            model.zero_grad(set_to_none=True)

        return model, prepare, step

    def trl_time(self, model, length: int, liger: bool) -> tuple[float, float]:
        """TRL's DPOTrainer on the same pair shape: seconds per optimizer step and peak GiB."""
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        from longpo.toy.tiny import build_tiny_tokenizer

        torch, bench = self.torch, self
        tokenizer = build_tiny_tokenizer()
        words = [t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and t[1:].isalpha()]

        def text(n: int, seed: int) -> str:  # n single-token words: " w" is one byte-level BPE token each
            import random

            rng = random.Random(seed)
            return "".join(" " + rng.choice(words) for _ in range(n))

        rows = [{"prompt": text(length - 2 * ANSWER, i), "chosen": text(ANSWER - 1, 100 + i),
                 "rejected": text(ANSWER - 1, 200 + i)} for i in range(self.args.steps + 1)]

        class Timer(TrainerCallback):
            def __init__(self):
                self.seconds: list[float] = []

            def on_step_begin(self, *a, **k):
                bench.sync()
                self.start = time.perf_counter()

            def on_step_end(self, *a, **k):
                bench.sync()
                self.seconds.append(time.perf_counter() - self.start)

        timer = Timer()
        with tempfile.TemporaryDirectory() as out:
            cfg = DPOConfig(output_dir=out, per_device_train_batch_size=1, max_length=None, max_steps=len(rows),
                            learning_rate=1e-12, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                            bf16=self.dtype == torch.bfloat16, gradient_checkpointing=True,
                            gradient_checkpointing_kwargs={"use_reentrant": False}, precompute_ref_log_probs=True,
                            loss_type=["sigmoid", "sft"], loss_weights=[0.01, 1.0], beta=0.01,
                            use_liger_kernel=liger, report_to=[], save_strategy="no", logging_steps=10**6,
                            disable_tqdm=True, use_cpu=not self.cuda, dataloader_num_workers=0, seed=0)
            # ref_model=None with precomputed reference log-probs: TRL scores the dataset with the policy itself
            # (the initial policy is the reference) before training and keeps no second model.
            trainer = DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, callbacks=[timer])
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        timed = timer.seconds[1:] or timer.seconds
        return sum(timed) / len(timed), peak

    def run_row(self, name: str) -> list[tuple]:
        """[(length, seconds, peak GiB) or (length, reason)] for one row at every length. Liger (ours and
        TRL's) patches the modeling module's RoPE, RMSNorm and MLP module-wide: restored after the row so
        that the next row's model is built without it."""
        import importlib

        module = importlib.import_module(f"transformers.models.{self.arch}.modeling_{self.arch}")
        saved = dict(vars(module))
        try:
            return self._run_row(name)
        finally:
            for key in set(vars(module)) - set(saved):
                delattr(module, key)
            for key, value in saved.items():
                setattr(module, key, value)

    def _run_row(self, name: str) -> list[tuple]:
        torch, out = self.torch, []
        args = self.args
        try:
            if name.startswith("trl"):
                model, prepare, step = self.build(), None, None
            else:
                import longpo.train.speed as speed

                speed.COMPILE_BACKEND = args.compile_backend
                model, prepare, step = self.longpo_steps(name)
        except Exception as e:  # noqa: BLE001 - a row that cannot start (no liger, no trl) is reported
            return [(n, f"not run: {type(e).__name__}: {e}"[:160]) for n in args.lengths]
        for length in args.lengths:
            print(f"{name} {length}", flush=True)
            if name == "plain" and args.compare_plain is not None and length > args.compare_plain:
                out.append((length, "not run"))
                continue
            try:
                if step is None:
                    out.append((length, *self.trl_time(model, length, liger=name == "trl+liger")))
                else:
                    out.append((length, *self.timed(step, prepare(length))))
            except torch.OutOfMemoryError:
                out.append((length, "OOM"))
            except Exception as e:  # noqa: BLE001
                out.append((length, f"error: {type(e).__name__}: {e}"[:160]))
            print(f"  -> {name} {length}: {out[-1][1:]}", flush=True)  # kept in the log if a time limit cuts the run
            model.zero_grad(set_to_none=True)
            self.free()
        del model, step
        self.free(compiled=True)
        return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        for name in args.rows:
            lengths = [n for n in args.lengths if name != "plain" or args.compare_plain is None or n <= args.compare_plain]
            print(f"{name:24} {ROWS[name] or '(own path)'} at {lengths}")
        return
    bench = Bench(args)
    torch = bench.torch
    from longpo.train.packing import pack_pairs

    if bench.cuda:
        from torch.backends.cuda import flash_sdp_enabled, is_flash_attention_available

        print(f"{bench.gpu}; SDPA flash kernel available: {is_flash_attention_available()}, enabled: {flash_sdp_enabled()}")
    probe = bench.build()
    layer_params = sum(p.numel() for p in probe.get_decoder().layers.parameters())
    config, params = probe.config, sum(p.numel() for p in probe.parameters())
    del probe
    bench.free()
    print(f"{bench.arch}: {params / 1e9:.2f}B parameters, {bench.dtype}, backend {args.backend}")
    flops = {n: model_flops(pack_pairs([make_pair(n, config.vocab_size)], "full"), config, layer_params)
             for n in args.lengths}
    results = {name: bench.run_row(name) for name in args.rows}
    base = {r[0]: r[1] for r in results.get("ours", []) if len(r) == 3}
    print(f"\n{bench.gpu}, {bench.arch}, {bench.dtype}, backend {args.backend}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {args.steps} timed steps")
    print("| row | tokens | tokens/s | step s | MFU | peak GiB | speed vs ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            if len(r) == 2:
                print(f"| {name} | {r[0]} | {r[1]} | | | | |")
                continue
            length, seconds, peak_gib = r
            mfu = f"{100 * flops[length] / seconds / (bench.peak * 1e12):.1f}%" if bench.peak else "-"
            ratio = f"{base[length] / seconds:.2f}x" if length in base else ""
            gib = f"{peak_gib:.1f}" if math.isfinite(peak_gib) else "-"
            print(f"| {name} | {length} | {length / seconds:,.0f} | {seconds:.2f} | {mfu} | {gib} | {ratio} |")


if __name__ == "__main__":
    main()
