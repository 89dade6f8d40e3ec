"""`longpo train`'s config and the names its validation needs, importing neither torch nor transformers.

`longpo train --help` and every config error are printed from here before the trainer (torch,
transformers, accelerate) is imported; `longpo.train.trainer` re-exports `Config`. The name tuples
are the one list of each choice: the loss, the attention backends and the speed options read theirs
from here, and tests/train/test_config.py checks `DTYPE_NAMES` against `longpo.models.DTYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longpo.config import help_field
from longpo.train.losses import DEFAULT_MODE, MODES, describe

LOSS_MODES = tuple(MODES)  # the built-in modes; the check reads MODES itself, so a mode added at run time counts
NLL_MODES = ("full", "responses", "off")
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
ATTENTION_BACKENDS = ("sdpa", "flex")
CHECKPOINT_MODES = ("off", "full", "every_k", "mlp")
OPTIMIZERS = ("rmsprop", "adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb")
TINY = "tiny"


@dataclass(kw_only=True)
class Config:
    # model
    model: str = help_field(TINY, "policy to train: a local Hugging Face model dir (safetensors), or 'tiny' to "
                                  "build the built-in tiny model and data set in output_dir")
    tokenizer: str | None = help_field(None, "tokenizer dir; default: the model dir")
    dtype: str = help_field("float32", f"dtype the weights are loaded in: {sorted(DTYPE_NAMES)} (keep float32 "
                                       "master weights with bf16 mixed precision: lr 5e-7 vanishes in bf16)")
    rope_theta: float | None = help_field(None, "new RoPE base for the POLICY only (paper: 1e7); None keeps it")
    max_position_embeddings: int | None = help_field(None, "new max_position_embeddings of the policy")
    attention_backend: str = help_field("auto", "shared-prefix attention: sdpa, flex, or auto (sdpa: measured faster than flex on an H200)")
    sp_size: int = help_field(1, "sequence-parallel (Ulysses) ranks per sample; divides the number of processes, "
                                 "the rest is data parallel (see README, Sequence parallel)")
    gradient_checkpointing: bool = help_field(False, "recompute decoder layers in the backward (transformers' own; "
                                                     "the same as activation_checkpointing: full)")
    # speed options (longpo/train/speed.py; README, Speed options): off by default
    activation_checkpointing: str = help_field("off", "what the backward recomputes: off, full (every decoder layer), "
                                                      "every_k (layers 0, k, 2k, ...), mlp (each layer's MLP only)")
    checkpoint_every_k: int = help_field(2, "k of activation_checkpointing: every_k")
    mlp_tile_tokens: int = help_field(0, "sequence-tiled MLP: run each decoder layer's MLP over tiles of this many "
                                         "tokens, forward and backward, recomputing a tile's intermediates in the "
                                         "backward (0: off; e.g. 8192 at 128K+ tokens)")
    offload_activations: bool = help_field(False, "keep what the decoder layers save for the backward in host memory")
    compile_layers: bool = help_field(False, "torch.compile each decoder layer (dynamic lengths; attention stays eager)")
    liger_kernels: bool = help_field(False, "Liger's fused RMSNorm / SwiGLU / RoPE (CUDA; pip install 'longpo[liger]')")
    logp_chunk_size: int | None = help_field(None, "positions per lm_head chunk; None: from the vocab size")
    # data
    train_file: str | None = help_field(None, "preference records (JSONL / Parquet file or folder) or a released "
                                              "tokenized set (save_to_disk folder / Parquet, found by its "
                                              "columns); built in output_dir when model is 'tiny'")
    max_length: int = help_field(131072, "longest sequence (prefix + longest answer) trained on")
    skip_overlong: bool = help_field(True, "skip and count longer pairs (their ids are logged); false: raise")
    pairs_per_micro_batch: int = help_field(1, "pairs packed into one row per forward")
    gradient_accumulation_steps: int = help_field(8, "micro-batches per rank per optimizer step")
    num_epochs: int = help_field(1, "passes over the records")
    max_steps: int = help_field(0, "stop after this many optimizer steps (0: all epochs); sets the schedule")
    seed: int = help_field(42, "seed of the data order and of torch")
    tiny_records: int = help_field(32, "records built for model=tiny")
    # loss
    loss: str = help_field(DEFAULT_MODE, f"loss mode (longpo/train/losses/, docs/stages/train.md): {describe()}")
    # unset (None): the loss mode's own default, written into the resolved config
    nll_mode: str | None = help_field(None, "tokens of the chosen long sequence in the NLL: full, responses, off; "
                                            "default: the loss mode's")
    beta: float | None = help_field(None, "preference temperature beta; default: the loss mode's")
    lam: float | None = help_field(None, "weight lambda of the preference term; default: the loss mode's")
    nll_weight: float | None = help_field(None, "weight of the NLL term; default: the loss mode's")
    margin: float | None = help_field(None, "target reward margin gamma of simpo / logo (after beta); default: the "
                                            "loss mode's")
    # optimizer
    optimizer: str = help_field("rmsprop", f"one of {OPTIMIZERS} (the released runs use RMSprop)")
    learning_rate: float = help_field(5e-7, "peak learning rate")
    weight_decay: float = help_field(0.0, "weight decay")
    lr_scheduler: str = help_field("cosine", f"one of {SCHEDULERS}, after linear warmup")
    warmup_ratio: float = help_field(0.1, "fraction of the steps spent in linear warmup")
    max_grad_norm: float = help_field(1.0, "gradient clipping norm (0: off)")
    mixed_precision: str = help_field("no", f"one of {MIXED_PRECISION} (accelerate autocast / DeepSpeed bf16)")
    # outputs
    output_dir: str = help_field("runs/train", "checkpoints, metrics.jsonl, resolved config, final model")
    export_dir: str | None = help_field(None, "final Hugging Face model dir; default output_dir/final")
    save_steps: int = help_field(0, "checkpoint every this many steps and at the end (0: no checkpoints)")
    keep_checkpoints: int = help_field(2, "newest complete checkpoints kept")
    resume: str = help_field("auto", "auto (latest complete checkpoint in output_dir), none, or a checkpoint dir")
    report_to: list = help_field([], f"trackers besides metrics.jsonl: {list(TRACKERS)}")
    progress_bar: bool = help_field(True, "tqdm bar with tokens/s and ETA")
    overwrite: bool = help_field(False, "start over in output_dir: remove this stage's outputs there (checkpoints, "
                                        "metrics, export) first; without it a rerun must use the same settings")

    def __post_init__(self):
        if self.loss not in MODES:
            raise ValueError(f"loss={self.loss!r}: choose one of {list(MODES)}")
        mode = MODES[self.loss]
        for name in ("beta", "lam", "nll_weight", "nll_mode", "margin"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(mode.defaults, name))
        choices = {"nll_mode": NLL_MODES, "optimizer": OPTIMIZERS, "lr_scheduler": SCHEDULERS,
                   "dtype": DTYPE_NAMES, "mixed_precision": MIXED_PRECISION,
                   "attention_backend": ("auto",) + ATTENTION_BACKENDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {list(allowed)}")
        for name in ("sp_size", "max_length", "pairs_per_micro_batch", "gradient_accumulation_steps", "num_epochs",
                     "tiny_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("max_steps", "save_steps", "keep_checkpoints", "beta", "lam", "nll_weight", "margin", "learning_rate",
                     "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must lie in [0, 1)")
        if self.model != TINY and not self.train_file:
            raise ValueError(f"model={self.model!r} needs train_file=<records>; only model=tiny builds its own data")
        if not mode.preference and (self.nll_mode == "off" or self.nll_weight == 0):
            raise ValueError(f"loss={self.loss} trains on the NLL term alone: set nll_mode to full or responses and "
                             f"nll_weight > 0")
        if mode.preference and self.lam == 0 and (self.nll_weight == 0 or self.nll_mode == "off"):
            raise ValueError("lam=0 and nll_weight=0 leave nothing to train")
        unknown = sorted(set(self.report_to) - set(TRACKERS))
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {unknown}; choose from {list(TRACKERS)}")
        if self.rope_theta is not None and self.rope_theta <= 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be positive")
        check_speed_options(self)


def check_speed_options(cfg: Any) -> None:
    """Validate the speed keys of a train config; messages say what to change."""
    mode = cfg.activation_checkpointing
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"activation_checkpointing={mode!r}: choose one of {list(CHECKPOINT_MODES)}")
    if cfg.checkpoint_every_k < 1:
        raise ValueError(f"checkpoint_every_k={cfg.checkpoint_every_k} must be at least 1 "
                         f"(1 checkpoints every layer, as activation_checkpointing: full)")
    if cfg.gradient_checkpointing and mode != "off":
        raise ValueError(f"gradient_checkpointing: true already recomputes every decoder layer (transformers' "
                         f"own checkpointing); to use activation_checkpointing: {mode}, set gradient_checkpointing: "
                         f"false (activation_checkpointing: full is the same as gradient_checkpointing: true)")
    if cfg.gradient_checkpointing and cfg.offload_activations:
        raise ValueError("offload_activations needs our checkpointing, not transformers': set gradient_checkpointing: "
                         "false and activation_checkpointing: full (or every_k / mlp / off)")
    if cfg.mlp_tile_tokens < 0:
        raise ValueError(f"mlp_tile_tokens={cfg.mlp_tile_tokens} must not be negative (0 turns the tiled MLP off)")
    if cfg.mlp_tile_tokens and cfg.compile_layers:
        raise ValueError("mlp_tile_tokens with compile_layers has not been checked (a compiled layer would trace "
                         "the tile loop): set compile_layers: false, or mlp_tile_tokens: 0")
    if cfg.liger_kernels and cfg.sp_size > 1:
        raise ValueError("liger_kernels with sp_size > 1 has not been checked: set liger_kernels: false, or sp_size: 1")
