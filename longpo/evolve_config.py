"""`longpo evolve`'s config, importing neither torch nor transformers (`longpo evolve --help` and its
config errors come from here, before the stages are imported; `longpo.evolve` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longpo.config import build_config, help_field
from longpo.evolve_target import BEYOND_TARGET, Mark, expand
from longpo.launcher import normalize_devices

LAUNCH = ("processes", "inline")


@dataclass(kw_only=True)
class Iteration:
    name: str = help_field(help="folder name of the iteration, e.g. 256k")
    target_length: int | None = help_field(None, "context length (tokens) the iteration extends to: "
                                                 "max_position_embeddings, train.max_length, generate's document "
                                                 "sizes (half of it to all of it), vLLM's max_model_len and RULER's "
                                                 "lengths follow from it where the stage leaves them unset "
                                                 "(docs/stages/evolve.md)")
    rope_theta: float | None = help_field(None, "RoPE base of the iteration's policy and of the generator of its long "
                                                "answers (train.rope_theta, generate.rope_theta); None: the model's own")
    beyond_target: list = help_field([], f"stage keys ({', '.join(BEYOND_TARGET)}) whose value set in the stage "
                                         f"may exceed target_length (refused otherwise)")
    generate: dict = help_field({}, "`longpo generate` keys (model and output_dir are set here)")
    reference: dict = help_field({}, "`longpo reference` keys, used when generate has reference: false")
    train: dict = help_field({}, "`longpo train` keys (model, train_file, output_dir are set here)")
    eval: dict = help_field({}, "`longpo eval` keys (model and out_dir are set here)")
    accelerate_config: str | None = help_field(None, "train with `accelerate launch --config_file` this file "
                                                     "or packaged recipe (e.g. accelerate/zero3); None: torchrun (DDP)")

    def __post_init__(self) -> None:
        self.marks: list[Mark] | None = None  # the target-dependent keys, once `expand_targets` filled them in


def expand_targets(iterations: list[Iteration]) -> None:
    """Fill every iteration's stage keys that follow from its target_length and rope_theta (longpo.evolve_target);
    an iteration expanded before (a Config built from Iteration objects) keeps its keys and marks."""
    previous = None
    for it in iterations:
        if it.marks is None:
            stages, it.marks = expand(it.name, {"generate": it.generate, "train": it.train, "eval": it.eval},
                                      it.target_length, it.rope_theta, it.beyond_target, previous)
            it.generate, it.train, it.eval = stages["generate"], stages["train"], stages["eval"]
        previous = it.train.get("max_position_embeddings")


@dataclass(kw_only=True)
class Config:
    base_model: str = help_field(help="the starting short-context model (a local folder)")
    output_dir: str = help_field("runs/evolve", "one folder per iteration, plus evolve.md / evolve.json")
    eval_base: bool = help_field(True, "evaluate the starting model with the first iteration's eval keys, at the "
                                       "lengths it holds (the rest listed as skipped)")
    iterations: list = help_field([], "list of iterations: {name, target_length, rope_theta, "
                                      "beyond_target, generate, reference, train, eval, accelerate_config}")
    devices: Any = help_field(1, "GPUs of one node: a count (8) or ids ([0, 1, 2, 3]); on a machine without GPUs "
                                 "the same number of CPU worker processes (gloo for train)")
    nodes: int = help_field(1, "nodes of every stage: train's processes span them, generate / reference / eval "
                               "have a shard per device group of each node (merged on the driver's node)")
    launcher: str = help_field("", "template that starts a stage's per-node command on every node, e.g. "
                                   "'srun --nodes={nodes} --ntasks-per-node=1 {command}'; empty: run it here")
    rdzv_endpoint: str = help_field("", "host:port of the rendezvous when nodes > 1, e.g. $MASTER_ADDR:29500")
    master_port: int = help_field(0, "port of a one-node train launch; 0: torchrun --standalone picks a free one")
    gpu_memory_gib: float | None = help_field(None, "memory per GPU, GiB: each iteration's train keys left unset "
                                                    "(sp_size, activation_checkpointing, checkpoint_every_k, "
                                                    "mlp_tile_tokens, offload_activations, "
                                                    "gradient_accumulation_steps, accelerate_config) come from "
                                                    "`longpo plan` for the base model, train.max_length and the "
                                                    "devices x nodes GPUs; keys set win; None: no planning")
    launch: str = help_field("processes", "processes: every stage as its own processes (the driver); inline: in "
                                          "this process, one device (library use, the CPU demo)")
    dry_run: bool = help_field(False, "resolve and validate every stage's config, topology and command lines; "
                                      "print the plan and run nothing")
    overwrite: bool = help_field(False, "start over in output_dir: remove every iteration's folders there first; "
                                        "without it a rerun must use the same settings")

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("base_model= is required")
        if not self.iterations:
            raise ValueError("iterations: give at least one {name, generate, train, eval}")
        self.iterations = [it if isinstance(it, Iteration) else build_config(Iteration, it, f"iterations[{i}]")
                           for i, it in enumerate(self.iterations)]
        expand_targets(self.iterations)
        names = [it.name for it in self.iterations]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"iteration names must be unique and not 'base': {names}")
        if self.launch not in LAUNCH:
            raise ValueError(f"launch={self.launch!r}: choose one of {list(LAUNCH)}")
        self.devices = normalize_devices(self.devices)
        if self.nodes < 1:
            raise ValueError(f"nodes={self.nodes} must be at least 1")
        if self.nodes > 1 and not (self.launcher and self.rdzv_endpoint):
            raise ValueError(f"nodes={self.nodes}: set launcher= (e.g. 'srun --nodes={{nodes}} --ntasks-per-node=1 "
                             "{command}') and rdzv_endpoint=<head node>:29500")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ValueError(f"gpu_memory_gib={self.gpu_memory_gib} must be positive (or unset: no planning)")
        if self.launch == "inline" and (len(self.devices) > 1 or self.nodes > 1):
            raise ValueError("launch=inline runs every stage in this process on one device; use launch=processes")
