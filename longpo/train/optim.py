"""The optimizer and the learning-rate schedule of `longpo train` (torchtitan keeps them in components/; the
trainer only calls these two)."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from longpo.train.config import Config


def build_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: Config, optimizer: Any, total_steps: int) -> Any:
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if cfg.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


