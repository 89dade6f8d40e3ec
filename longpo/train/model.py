"""The policy as the trainer sees it: checked from its config.json, loaded with the run's RoPE, and wrapped in
`PairModel`, the one module that runs it on a packed batch (sequence-parallel where the mesh says so)."""

from __future__ import annotations

from typing import Any

import torch

from longpo.families import check_model_folder
from longpo.models import load_model
from longpo.train.config import Config
from longpo.train.logps import ForwardOutput
from longpo.train.packing import PackedBatch
from longpo.train.parallel import Mesh, forward_pairs_parallel


def check_policy(cfg: Config) -> None:
    """The policy's folder exists and its family trains exactly under shared-prefix attention (longpo.families)."""
    check_model_folder(cfg.model, training=True, attention_backend=cfg.attention_backend,
                       rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings)


def load_policy(cfg: Config) -> Any:
    """The model with the policy's RoPE base / max positions (applied before it is built)."""
    return load_model(cfg.model, cfg.dtype, rope_theta=cfg.rope_theta,
                      max_position_embeddings=cfg.max_position_embeddings)


class PairModel(torch.nn.Module):
    """The one place the model runs on a packed batch (sequence-parallel over `mesh` when sp_size > 1).

    accelerate prepares this wrapper, so DDP / ZeRO-3 / FSDP see a root `forward`; `config` and
    `_no_split_modules` are forwarded for DeepSpeed's "auto" sizes and FSDP's layer wrapping.
    """

    def __init__(self, model: Any, mesh: Mesh, chunk_size: int | None, attention_backend: str):
        super().__init__()
        self.model = model
        self.mesh = mesh
        self.chunk_size = chunk_size
        self.attention_backend = attention_backend
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, batch: PackedBatch) -> ForwardOutput:
        return forward_pairs_parallel(self.model, batch, self.mesh, self.chunk_size, self.attention_backend)


