"""Training speed options, applied to a loaded Hugging Face causal LM from outside (no model code edited).

    activation_checkpointing  off | full | every_k | mlp: which activations the backward recomputes
    mlp_tile_tokens           sequence-tiled MLP: each layer's MLP runs over tiles of this many tokens, and
                              the backward recomputes one tile at a time (its 4 I b per token never coexist)
    offload_activations       what the decoder layers keep for the backward lives in host memory
    compile_layers            torch.compile per decoder layer, dynamic lengths, attention left eager
    liger_kernels             Liger's fused RMSNorm / SwiGLU / RoPE (triton, CUDA only)

Every option rebinds `forward` on module INSTANCES (the way Liger patches an instance), so parameter
names, state dicts, exported models and the shared-prefix attention registered by `attention.py` /
`parallel.py` are untouched. The wrappers nest as offload(checkpoint(compiled(forward))): the checkpoint
keeps only the layer input, which save_on_cpu then moves to the host; the recompute in the backward runs
the compiled code again. Checkpointing sits inside any hooks a sharding wrapper puts on the layer's
`__call__` (FSDP2, ZeRO-3), as torchtitan's checkpoint_wrapper under fully_shard does.

Why not transformers' own `gradient_checkpointing_enable` (its `every_n_layers` selects the same layers
as every_k): its `offload` argument is missing from 5.16, the oldest transformers this package admits;
it cannot checkpoint a sub-module such as the MLP; and it runs the sharding hooks inside the recomputed
function. `gradient_checkpointing: true`
keeps calling it (today's path, unchanged); `activation_checkpointing: full` is ours and equal to it in
values and gradients (tests/train/test_speed.py).

The memory model of these options (what a step keeps for the backward, per mode) is `longpo/train/memory.py`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longpo.train.attention import set_attention
from longpo.train.config import check_speed_options  # noqa: F401 (re-exported)
from longpo.train.memory import checkpoint_plan

_WRAPPED = "_longpo_speed_wrapped"
COMPILE_BACKEND = "inductor"  # tests on CPU swap in "aot_eager": inductor's C++ codegen takes minutes there


def _pin() -> bool:
    return torch.cuda.is_available()


def tiled_forward(forward: Any, tile_tokens: int) -> Any:
    """`forward` of a position-wise module (the MLP: token t's output depends on token t's input only) run
    over tiles of `tile_tokens` along the sequence (dim -2 of (B, T, D)), each tile checkpointed.

    The forward keeps only the tile inputs (views of the input the caller saves anyway) and the
    concatenated output; in the backward each tile is recomputed and back-propagated on its own, so one
    tile's intermediates (gate, up, activation, product: 4 t I values) and the MLP backward's gradient
    buffers (2 t I) are alive at a time instead of T's. The parameter gradients are the sum over tiles of
    the same products the untiled backward sums over tokens: equal up to the order of the additions.
    `split`'s backward joins the tiles' input gradients once, after the last tile (no T x D zeros per tile).
    Nested inside a recomputed layer (full / every_k, transformers' checkpointing) the layer's recompute
    runs the tiles as checkpoints again (non-reentrant checkpoints nest)."""

    def fn(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tiles = hidden_states.split(tile_tokens, dim=-2)
        outs = [checkpoint(forward, tile, *args, use_reentrant=False, **kwargs) for tile in tiles]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)

    return fn


def _wrap_forward(module: torch.nn.Module, *, recompute: bool = False, offload: bool = False,
                  compile_dynamic: bool = False, tile_tokens: int = 0) -> None:
    """Rebind `module.forward` as offload(checkpoint(compiled(current forward))), each part optional; with
    `tile_tokens` the module is position-wise and the checkpoint is taken per tile of the sequence."""
    if getattr(module, _WRAPPED, False):
        raise RuntimeError(f"{type(module).__name__}: speed options were already applied to this module; "
                           f"apply them once, to a freshly loaded model")
    fn = module.forward  # bound; Liger's instance patch when liger_kernels ran first
    if compile_dynamic:
        # dynamic=True: lengths are symbolic from the first compile, so a new row length reuses the code.
        fn = torch.compile(fn, dynamic=True, backend=COMPILE_BACKEND)
    if tile_tokens:
        fn = tiled_forward(fn, tile_tokens)
    elif recompute:
        inner = fn

        def fn(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    if offload:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        inner_off = fn

        def fn(*args, **kwargs):
            with torch.autograd.graph.save_on_cpu(pin_memory=_pin(), device_type=device_type):
                return inner_off(*args, **kwargs)

    module.forward = fn
    setattr(module, _WRAPPED, True)


def _eager_attention(model: Any) -> None:
    """Keep the model's attention function out of torch.compile: the shared-prefix attention loops over the
    layout's spans in Python, so tracing it would specialise (and recompile) on every layout. The layer
    compiles around it (norm, projections, RoPE before; o_proj, residual, norm, MLP after)."""
    name = model.config._attn_implementation
    if name.endswith("_eager_in_compile"):
        return
    fn = ALL_ATTENTION_FUNCTIONS.get(name)
    if fn is None:  # "sdpa" / "eager" live outside the interface's registry
        if name != "sdpa":
            raise ValueError(f"compile_layers: attention {name!r} is not a registered function; use sdpa or "
                             f"longpo's shared-prefix attention")
        fn = sdpa_attention_forward
    AttentionInterface.register(f"{name}_eager_in_compile", torch.compiler.disable(fn))
    set_attention(model, f"{name}_eager_in_compile")


def apply_liger_kernels(model: Any) -> None:
    """Liger's fused RMSNorm, SwiGLU and RoPE on this model instance; the log-probs stay ours (chunked)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as e:
        raise RuntimeError(f"liger_kernels: true needs the liger-kernel package ({e}); install it with "
                           f"pip install 'longpo[liger]', or set liger_kernels: false") from e
    device = next(model.parameters()).device
    if not torch.cuda.is_available() or device.type == "meta":
        raise RuntimeError("liger_kernels: true needs a CUDA GPU (Liger's triton kernels do not run on CPU): "
                           "set liger_kernels: false on this machine")
    model_type = model.config.model_type
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ValueError(f"liger_kernels: Liger has no kernels for model_type {model_type!r}; "
                         f"set liger_kernels: false")
    kwargs = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    accepted = inspect.signature(apply).parameters
    apply(model=model, **{k: v for k, v in kwargs.items() if k in accepted})


def apply_speed_options(model: Any, cfg: Any) -> Any:
    """Apply a train config's speed keys to a loaded causal LM, in place; returns the model.

    Call once, after the attention is set (`parallelize`) and before an accelerate / DeepSpeed wrapper."""
    if cfg.gradient_checkpointing:  # today's path, unchanged
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.liger_kernels:
        apply_liger_kernels(model)
    if cfg.compile_layers:
        _eager_attention(model)
    layers = model.get_decoder().layers
    plan = checkpoint_plan(len(layers), cfg.activation_checkpointing, cfg.checkpoint_every_k)
    moe = [type(layer.mlp).__name__ for layer in layers if hasattr(layer.mlp, "experts")]
    if cfg.mlp_tile_tokens and moe:
        raise ValueError(f"mlp_tile_tokens: {moe[0]} is a mixture of experts, which the tiled MLP does not tile "
                         f"(routing outputs are recorded per call): set mlp_tile_tokens: 0")
    for layer, (whole, mlp) in zip(layers, plan):
        if cfg.mlp_tile_tokens:  # subsumes mode mlp: the MLP is recomputed, tile by tile
            _wrap_forward(layer.mlp, tile_tokens=cfg.mlp_tile_tokens)
        elif mlp:
            _wrap_forward(layer.mlp, recompute=True)
        if whole or cfg.offload_activations or cfg.compile_layers:
            _wrap_forward(layer, recompute=whole, offload=cfg.offload_activations, compile_dynamic=cfg.compile_layers)
    return model
