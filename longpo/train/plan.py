"""`longpo plan`: which layout trains a length on N GPUs, from the memory model (an estimate), without torch.

    longpo plan MODEL_DIR --length 524288 --gpus 1 --gpu-gib 80
    longpo plan MODEL_DIR --length 1048576 --gpus 8 --gpu-gib 80 --optimizer adamw

Only MODEL_DIR/config.json is read (no weights). The layouts are tried cheapest first and the first that
fits is printed with its predicted peak per GPU:

  state placement   weights, gradients and optimizer state sharded over all GPUs (ZeRO-3 / FSDP2), on the
                    GPUs first, then offloaded to host memory (recipes accelerate/zero3_offload, fsdp2_offload)
  sp_size           powers of two up to the GPU count, smallest first (past the query-head count the keys and
                    values of the other segments are gathered: `parallel.split_sp_group`)
  activations       checkpointing off, tiled MLP, every 2nd layer + tiled MLP, full, full + tiled MLP,
                    full + tiled MLP + activations offloaded to the host

Per GPU (bytes, P parameters, W GPUs, b = 2 for bf16 activations):
  states      on GPU: P (4 fp32 weights + 4 fp32 gradients + optimizer state) / W; offloaded: 0
  working     the gathered bf16 weights of two layers (or of the embedding, if larger) and the fp32
              gradients of one, before they are reduce-scattered
  activations `memory.estimate_activation_bytes` of one row of length / sp_size tokens (each SP rank holds
              its shard's activations and the attention of its heads over the whole row)
  logits      one log-prob chunk: three float32 copies of 16M entries (`models.auto_chunk_size`)
  gathered    past the head count (sp_size = u x r): the other r - 1 segments' keys and values of the local
              heads, 2 Dq b per token (CUDA repeats grouped-query heads), in each layer kept whole
Not counted: the Ulysses all-to-all buffers, allocator fragmentation, CUDA context (about 0.5-1 GiB).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from longpo.errors import InputError
from longpo.train.memory import estimate_activation_bytes, parameter_count, ulysses_size

OPTIMIZER_BYTES = {"rmsprop": 4, "adamw": 8, "sgd": 0}  # optimizer state per parameter, float32
ACTIVATIONS = (  # (activation_checkpointing, checkpoint_every_k, tiled MLP, offload_activations), cheapest first
    ("off", 1, False, False),
    ("off", 1, True, False),
    ("every_k", 2, True, False),
    ("full", 1, False, False),
    ("full", 1, True, False),
    ("full", 1, True, True),
)
LOGITS_BYTES = 3 * (1 << 24) * 4
GIB = 2**30


@dataclass(frozen=True)
class Layout:
    sp_size: int
    activation_checkpointing: str
    checkpoint_every_k: int
    mlp_tile_tokens: int
    offload_activations: bool
    offload_states: bool
    gradient_accumulation_steps: int
    parts: dict  # name -> device bytes per GPU
    host_bytes: int

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    def label(self) -> str:
        mode = self.activation_checkpointing + (f"(k={self.checkpoint_every_k})" if self.activation_checkpointing == "every_k" else "")
        bits = [f"sp {self.sp_size}", f"checkpointing {mode}"]
        bits += [f"tiled MLP {self.mlp_tile_tokens}"] if self.mlp_tile_tokens else []
        bits += ["activations offloaded"] if self.offload_activations else []
        bits += ["states offloaded"] if self.offload_states else []
        return ", ".join(bits)


def read_model_shape(model_dir: str | Path) -> Any:
    """config.json of a dense Llama / Mistral / Qwen2-style model, as a namespace of its numbers."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; longpo plan reads a model folder's config.json (weights are not needed)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw = raw.get("text_config", raw)
    if any(raw.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise InputError(f"{path}: a mixture of experts; the memory model counts dense MLPs only")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if k not in raw]
    if missing:
        raise InputError(f"{path}: missing {missing}; longpo plan needs a Llama-style config.json")
    return SimpleNamespace(**raw)


def state_bytes(shape: Any, world: int, optimizer: str, offload: bool) -> tuple[dict, int]:
    """(device bytes by part, host bytes) of weights, gradients and optimizer state per GPU."""
    params = parameter_count(shape)
    per_layer = (params - shape.vocab_size * shape.hidden_size * 2) // shape.num_hidden_layers
    biggest = max(per_layer, shape.vocab_size * shape.hidden_size)
    sharded = params * (8 + OPTIMIZER_BYTES[optimizer]) // world
    working = 2 * biggest * 2 + biggest * 4
    return ({"working weights": working} if offload else {"states": sharded, "working weights": working},
            sharded if offload else 0)


def layout_bytes(shape: Any, tokens: int, gpus: int, sp_size: int, activations: tuple, offload_states: bool,
                 optimizer: str, tile: int, pairs_per_step: int) -> Layout:
    mode, every_k, tiled, offload = activations
    shard = -(-tokens // sp_size)
    act = estimate_activation_bytes(shape, shard, mode, every_k=every_k, offload=offload, dtype_bytes=2,
                                    mlp_tile_tokens=tile if tiled else 0)
    parts, host = state_bytes(shape, gpus, optimizer, offload_states)
    parts = {**parts, "activations kept": act.saved, "recomputed layer": act.recompute, "backward buffers": act.backward,
             "logits chunk": LOGITS_BYTES}
    u = ulysses_size(sp_size, shape.num_attention_heads)
    if u < sp_size:  # past the head count: each rank also holds the other segments' keys / values of its heads
        head_dim = getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads
        layers_kept = 1 if mode == "full" else shape.num_hidden_layers
        parts["gathered keys/values"] = (sp_size // u - 1) * shard * 2 * shape.num_attention_heads * head_dim * 2 * layers_kept
    dp = gpus // sp_size
    return Layout(sp_size=sp_size, activation_checkpointing=mode, checkpoint_every_k=every_k,
                  mlp_tile_tokens=tile if tiled else 0, offload_activations=offload, offload_states=offload_states,
                  gradient_accumulation_steps=max(1, math.ceil(pairs_per_step / dp)), parts=parts,
                  host_bytes=host + act.host)


def candidate_layouts(shape: Any, tokens: int, gpus: int, optimizer: str = "rmsprop", tile: int = 4096,
                      pairs_per_step: int = 8) -> list[Layout]:
    """Every layout `plan_layout` considers, cheapest first."""
    sizes = [s for s in (2**i for i in range(int(math.log2(gpus)) + 1)) if gpus % s == 0]
    return [layout_bytes(shape, tokens, gpus, sp, acts, offload_states, optimizer, tile, pairs_per_step)
            for offload_states in (False, True) for sp in sizes for acts in ACTIVATIONS]


def plan_layout(shape: Any, tokens: int, gpus: int, gpu_gib: float, **kwargs: Any) -> tuple[Layout | None, list[Layout]]:
    """(the first layout that fits gpu_gib per GPU, or None; every layout tried)."""
    layouts = candidate_layouts(shape, tokens, gpus, **kwargs)
    return next((lay for lay in layouts if lay.peak_bytes <= gpu_gib * GIB), None), layouts


def longest_length(shape: Any, gpus: int, gpu_gib: float, fits: Any, step: int = 1024) -> int:
    """Longest multiple of `step` tokens for which `fits(shape, tokens, gpus, gpu_gib)` holds (0: none)."""
    lo, hi = 0, step
    while fits(shape, hi, gpus, gpu_gib):
        lo, hi = hi, hi * 2
        if hi > 1 << 27:
            return lo
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        lo, hi = (mid, hi) if fits(shape, mid, gpus, gpu_gib) else (lo, mid)
    return lo


def describe(model_dir: str, shape: Any, tokens: int, gpus: int, gpu_gib: float, optimizer: str,
             chosen: Layout | None, tried: list[Layout]) -> str:
    params = parameter_count(shape)
    lines = [f"{model_dir}: {getattr(shape, 'model_type', '?')}, {params / 1e9:.2f}B parameters; {tokens:,} tokens "
             f"on {gpus} GPU(s) x {gpu_gib:g} GiB; optimizer {optimizer} (estimate: longpo/train/memory.py)"]
    if chosen is None:
        best = min(tried, key=lambda lay: lay.peak_bytes)
        lines.append(f"nothing fits: the smallest predicted peak is {best.peak_bytes / GIB:.1f} GiB per GPU "
                     f"({best.label()}); use more GPUs (sp_size) or a shorter length")
        return "\n".join(lines)
    lines += ["layout (longpo train keys):", f"  sp_size: {chosen.sp_size}",
              f"  activation_checkpointing: {chosen.activation_checkpointing}"]
    if chosen.activation_checkpointing == "every_k":
        lines.append(f"  checkpoint_every_k: {chosen.checkpoint_every_k}")
    lines += [f"  mlp_tile_tokens: {chosen.mlp_tile_tokens}",
              f"  offload_activations: {str(chosen.offload_activations).lower()}",
              f"  gradient_accumulation_steps: {chosen.gradient_accumulation_steps}"
              f"  # {chosen.gradient_accumulation_steps * gpus // chosen.sp_size} pairs per step on "
              f"{gpus // chosen.sp_size} data-parallel group(s)",
              "  mixed_precision: bf16",
              ("launch: ZeRO-3 or FSDP2 with parameters and optimizer state in host memory (longpo recipes copy "
               "accelerate/zero3_offload | accelerate/fsdp2_offload; num_processes: the GPU count)"
               if chosen.offload_states else
               "launch: ZeRO-3 or FSDP2 over all GPUs (longpo recipes copy accelerate/zero3 | accelerate/fsdp2)")]
    parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in chosen.parts.items())
    lines.append(f"predicted peak per GPU: {chosen.peak_bytes / GIB:.1f} GiB of {gpu_gib:g} ({parts}); "
                 f"host: {chosen.host_bytes / GIB:.1f} GiB per GPU")
    cheaper = tried[: tried.index(chosen)]
    if cheaper:
        lines.append("cheaper layouts that do not fit (predicted peak per GPU):")
        lines += [f"  {lay.peak_bytes / GIB:7.1f} GiB  {lay.label()}" for lay in cheaper[-4:]]
    return "\n".join(lines)


# Train keys the planner decides; a key the user set is kept and the plan is chosen around it.
LAYOUT_KEYS = ("sp_size", "activation_checkpointing", "checkpoint_every_k", "mlp_tile_tokens", "offload_activations",
               "gradient_accumulation_steps")


@dataclass(frozen=True)
class Filled:
    keys: dict  # the layout keys the user left unset -> planned value
    layout: Layout | None
    note: str  # what was chosen (or why nothing was), one line


def _matches(layout: Layout, given: dict) -> bool:
    if "sp_size" in given and layout.sp_size != given["sp_size"]:
        return False
    if "activation_checkpointing" in given and layout.activation_checkpointing != given["activation_checkpointing"]:
        return False
    if layout.activation_checkpointing == "every_k" and "checkpoint_every_k" in given:
        if layout.checkpoint_every_k != given["checkpoint_every_k"]:
            return False
    if "mlp_tile_tokens" in given and (layout.mlp_tile_tokens > 0) != (given["mlp_tile_tokens"] > 0):
        return False
    return "offload_activations" not in given or layout.offload_activations == given["offload_activations"]


def fill_train_keys(shape: Any, tokens: int, gpus: int, gpu_gib: float, given: dict, optimizer: str = "rmsprop",
                    pairs_per_micro_batch: int = 1, pairs_per_step: int = 8) -> Filled:
    """The layout keys missing from `given` (a train stage's own keys), from the first layout that fits gpu_gib
    per GPU among those that agree with the keys given. `gradient_checkpointing: true` counts as
    activation_checkpointing: full; the accumulation gives about `pairs_per_step` pairs per step."""
    full = given.get("gradient_checkpointing") and "activation_checkpointing" not in given
    given = {**{k: v for k, v in given.items() if k in LAYOUT_KEYS}, **({"activation_checkpointing": "full"} if full else {})}
    tile = given.get("mlp_tile_tokens") or 4096
    layouts = [lay for lay in candidate_layouts(shape, tokens, gpus, optimizer, tile, pairs_per_step)
               if _matches(lay, given)]
    chosen = next((lay for lay in layouts if lay.peak_bytes <= gpu_gib * GIB), None)
    where = f"{tokens:,} tokens on {gpus} GPU(s) x {gpu_gib:g} GiB, optimizer {optimizer}"
    if chosen is None:
        fixed = ", ".join(f"{k}={v}" for k, v in given.items()) or "no keys set"
        best = f"; the smallest predicted peak is {min(lay.peak_bytes for lay in layouts) / GIB:.1f} GiB" if layouts else ""
        return Filled({}, None, f"no layout fits {where} with {fixed}{best}")
    dp = gpus // chosen.sp_size
    values = {"sp_size": chosen.sp_size, "activation_checkpointing": chosen.activation_checkpointing,
              "checkpoint_every_k": chosen.checkpoint_every_k, "mlp_tile_tokens": chosen.mlp_tile_tokens,
              "offload_activations": chosen.offload_activations,
              "gradient_accumulation_steps": max(1, math.ceil(pairs_per_step / (dp * pairs_per_micro_batch)))}
    keys = {k: v for k, v in values.items() if k not in given}
    if chosen.activation_checkpointing != "every_k":
        keys.pop("checkpoint_every_k", None)
    states = "" if chosen.offload_states else ", states sharded on the GPUs"
    return Filled(keys, chosen, f"{chosen.label()}{states}; predicted peak {chosen.peak_bytes / GIB:.1f} GiB per GPU "
                                f"({where}; estimate)")
