"""Launch plumbing of `longpo train`: the accelerator a launch asked for, checked; plain model init; the
frozen DPO reference engine.

`accelerate launch` / torchrun tell accelerate through the environment what to wrap the model in
(DDP, FSDP, DeepSpeed). On a machine without an accelerator device accelerate 1.15 can silently
run something else; `make_accelerator` makes the launch what it asked for or refuses it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration
from transformers.integrations import unset_hf_deepspeed_config


def requested_sharding() -> str | None:
    """The sharding a launcher asked accelerate for through the environment (`accelerate launch` with a
    DeepSpeed / FSDP config, or ACCELERATE_USE_* set by hand before torchrun): "DEEPSPEED", "FSDP" or None.
    Read as accelerate 1.15 reads it."""
    for name in ("DEEPSPEED", "FSDP"):
        if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true":
            return name
    return None


def accelerator_kwargs() -> dict:
    """Accelerator arguments that make a multi-process launch on a machine WITHOUT an accelerator device
    what it asked for. accelerate 1.15 there picks no process-group backend unless ACCELERATE_USE_CPU is
    set, and then every process reports num_processes=1 (the ranks would train apart and DeepSpeed would
    average over a world the trainer does not count); with ACCELERATE_USE_CPU set it runs DDP and ignores
    a DeepSpeed or FSDP request. So: DeepSpeed or FSDP asked -> gloo (DeepSpeed then runs on CPU; FSDP is
    refused by `check_distributed`, accelerate enables it only on GPU-type devices); else -> cpu (DDP)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.accelerator.is_available():
        return {}
    if requested_sharding() is None:
        return {"cpu": True}
    return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def check_distributed(accelerator: Any) -> None:
    """Refuse a launch where accelerate's view differs from the processes that run: a silent fallback
    would train with the wrong gradient scale, unsynchronised ranks, or unsharded weights."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    kind = accelerator.distributed_type.value
    if accelerator.num_processes != world:
        raise RuntimeError(f"accelerate counts {accelerator.num_processes} process(es) ({kind}) but "
                           f"torch.distributed has {world}: launch with torchrun or accelerate launch on a "
                           f"supported device (on CPU: ACCELERATE_USE_CPU=true, or DeepSpeed without it)")
    if world == 1:
        return
    wanted = requested_sharding()
    if wanted is not None and kind != wanted:
        hint = ("accelerate 1.15 enables FSDP only on GPU-type devices (CUDA, XPU, NPU, ...), not on CPU"
                if wanted == "FSDP" else "on CPU, DeepSpeed needs ACCELERATE_USE_CPU unset")
        raise RuntimeError(f"the launch asked for {wanted} (ACCELERATE_USE_{wanted}=true) but accelerate "
                           f"chose {kind} on {accelerator.device}: {hint}")
    if kind == DistributedType.NO.value:
        raise RuntimeError(f"{world} processes but accelerate chose no distributed wrapper, so gradients "
                           f"would not be synchronised; on CPU set ACCELERATE_USE_CPU=true")


def make_accelerator(cfg: Any) -> Any:
    """The Accelerator for `cfg` (a train Config), checked against the processes that run."""
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=list(cfg.report_to) or None,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, "logs")),
        **accelerator_kwargs(),
    )
    check_distributed(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # One packed row per forward; the rest of the step shape comes from this config, not the JSON.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = 1
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds["gradient_clipping"] = cfg.max_grad_norm
        ds.pop("train_batch_size", None)
        if "optimizer" in ds or "scheduler" in ds:
            raise ValueError("the DeepSpeed config must not hold an 'optimizer' or 'scheduler' block: "
                             "longpo builds the torch optimizer and schedule from its own config")
    return accelerator


@contextlib.contextmanager
def plain_init(accelerator: Any) -> Any:
    """Build models whole inside this context, even where ZeRO-3 would partition them at init."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def prepare_reference(accelerator: Any, module: torch.nn.Module) -> Any:
    """The frozen DPO reference: under ZeRO-3 its own inference engine (shards it), else a device copy."""
    module.requires_grad_(False)
    module.eval()
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return module.to(accelerator.device)
    import deepspeed

    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3 if stage == 3 else 0},
              "bf16": {"enabled": accelerator.mixed_precision == "bf16"},
              "fp16": {"enabled": accelerator.mixed_precision == "fp16"}}
    engine, *_ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    return engine
