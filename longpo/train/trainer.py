"""`longpo train`: train a policy with the LongPO loss (or another loss mode, `longpo.train.losses`) on accelerate.

    longpo train --config tiny                  # built-in tiny run, CPU, < 1 min
    longpo recipes copy accelerate/zero3        # writes zero3.yaml here (accelerate reads a file)
    accelerate launch --config_file zero3.yaml -m longpo.cli train \\
        --config mistral-7b-128k

One optimizer step, read top to bottom in `Trainer.train_step`:
  1. fetch ALL micro-batches of the step (`data.py`: exactly `gradient_accumulation_steps` per
     rank, weight-0 fillers where a rank's share ran short);
  2. sum the step's NLL-token and pair counts over data-parallel ranks (pairs whose chosen and rejected
     answers are equal carry no preference gradient: out of the preference mean, NLL kept);
  3. for every micro-batch: forward (`PairModel`, the one place the model runs), loss =
     `combine_loss(sums, GLOBAL counts)`, stop on a non-finite loss on every rank together (before
     any backward: DeepSpeed steps inside the last one), backward;
  4. sum the step's metrics over data-parallel ranks; clip, optimizer step, scheduler step; log;
     checkpoint every `save_steps`.
Because every micro-batch loss is already its share of the global step mean, the gradients add
up to exactly the big-batch gradient. accelerate divides each backward by the accumulation steps
and DDP / ZeRO / FSDP average over ranks; `backward_scale` undoes both. Launch plumbing lives in
`launch.py`, sequence parallelism in `parallel.py`, model loading in `longpo.models`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from longpo.config import config_to_dict, write_resolved_config
from longpo.data.records import RECORD_SUFFIXES
from longpo.data.released import is_released
from longpo.data.sources import open_records
from longpo.errors import InputError
from longpo.families import check_model_folder
from longpo.files import check_writable
from longpo.fingerprint import guard, identity, remove
from longpo.models import load_model, load_tokenizer
from longpo.train.attention import DEFAULT_BACKEND
from longpo.train.checkpoint import (
    export_model,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    truncate_metrics,
)
from longpo.train.config import TINY, Config  # there, so `longpo train` checks it before torch loads
from longpo.train.data import (
    check_some_pair_fits,
    epoch_order,
    filler_pair,
    micro_batches,
    no_pair_fits,
    rank_share,
    steps_per_epoch,
    tokenize_share,
)
from longpo.train.launch import make_accelerator, plain_init, prepare_reference
from longpo.train.logps import ForwardOutput
from longpo.train.loss import PairLogps, PreferenceOutput, combine_loss
from longpo.train.losses import LONG_PROMPT, MODES, SHORT_PROMPT, LossMode
from longpo.train.metrics import MetricsWriter, StepSums
from longpo.train.packing import PackedBatch, batch_to
from longpo.train.parallel import Mesh, forward_pairs_parallel, init_mesh, parallelize, reduce_sum
from longpo.train.plots import plot_training
from longpo.train.runs import BUILT_RUNS
from longpo.train.speed import apply_speed_options

logger = logging.getLogger("longpo.train")

def step_shape(cfg: Config, world: int) -> dict:
    """The optimizer step of `cfg` on `world` processes: pairs (micro-batch x accumulation x data-parallel
    groups, a group being sp_size processes) and the most tokens it holds (max_length x pairs)."""
    if world % cfg.sp_size:
        raise ValueError(f"sp_size={cfg.sp_size} must divide the {world} process(es)")
    pairs = cfg.pairs_per_micro_batch * cfg.gradient_accumulation_steps * (world // cfg.sp_size)
    return {"pairs_per_step": pairs, "tokens_per_step": cfg.max_length * pairs, "data_parallel": world // cfg.sp_size}


# Keys that do not change what is trained (the folder itself, memory / speed knobs computing the same maths, logging, where
# and how often to save): a rerun with other values resumes. Every other key is in the run's fingerprint.
FINGERPRINT_EXEMPT = ("output_dir", "progress_bar", "save_steps", "keep_checkpoints", "report_to", "resume", "export_dir",
                      "gradient_checkpointing", "logp_chunk_size", "attention_backend", "activation_checkpointing",
                      "checkpoint_every_k", "offload_activations", "compile_layers", "liger_kernels",
                      "mlp_tile_tokens")
OUTPUTS = ("checkpoint-*", ".tmp-checkpoint-*", "metrics.jsonl", "resolved_config.yaml", "logs", "final",
           ".tmp-final", "original_model", "tiny_records.jsonl")


def check_rerun(cfg: Config, main_process: bool) -> None:
    """Before anything is loaded or written: the output and export folders are writable, and a rerun
    into output_dir uses the settings and inputs of the run there (see longpo.fingerprint)."""
    export_dir = Path(cfg.export_dir) if cfg.export_dir else None

    def clear() -> None:
        remove(cfg.output_dir, OUTPUTS)
        if export_dir is not None:
            remove(export_dir.parent, [export_dir.name, f".tmp-{export_dir.name}"])

    inputs = {} if cfg.model == TINY else {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer),
                                          "train_file": identity(cfg.train_file, None if is_released(cfg.train_file) else RECORD_SUFFIXES)}
    guard("train", cfg.output_dir, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite, clear, write=main_process)
    if main_process and export_dir is not None:  # found now, not after all the training
        check_writable(export_dir.parent, "export_dir's parent folder")


# Records read at start-up to find one pair that fits max_length (the first usually does); beyond them the
# check waits for the end of training.
STARTUP_SCAN = 256


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss); the message names the step and the records."""


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


def select_pairs(pref: PreferenceOutput, keep: torch.Tensor) -> PreferenceOutput:
    """The pairs of `pref` that carry a preference signal (the step's preference means count these)."""
    return PreferenceOutput(losses=pref.losses[keep], chosen_rewards=pref.chosen_rewards[keep],
                            rejected_rewards=pref.rejected_rewards[keep])


def check_policy(cfg: Config) -> None:
    """The policy's folder exists and its family trains exactly under shared-prefix attention (longpo.families)."""
    check_model_folder(cfg.model, training=True, attention_backend=cfg.attention_backend,
                       rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings)


def load_policy(cfg: Config) -> Any:
    """The model with the policy's RoPE base / max positions (applied before it is built)."""
    return load_model(cfg.model, cfg.dtype, rope_theta=cfg.rope_theta,
                      max_position_embeddings=cfg.max_position_embeddings)


def prepare_tiny(cfg: Config, accelerator: Any) -> Config:
    """model=tiny: the tiny original model and records in output_dir (built once, by the main process), by the
    run its user registered (`longpo.train.runs.BUILT_RUNS`)."""
    if cfg.model not in BUILT_RUNS:
        raise InputError(f"model={cfg.model}: no built run of that name is registered here ({sorted(BUILT_RUNS)}; "
                         "the demo registers tiny: longpo.demo.extensions.register())")
    run = BUILT_RUNS[cfg.model]
    if accelerator.is_main_process:
        with plain_init(accelerator):  # the original model is built whole, not as ZeRO-3 shards
            run.prepare(cfg.output_dir, cfg.tiny_records)
    accelerator.wait_for_everyone()
    model_dir, records_file = run.paths(cfg.output_dir)
    return replace(cfg, model=str(model_dir), train_file=str(records_file))


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


# --------------------------------------------------------------------------------------------
# The loop


class Trainer:
    def __init__(self, cfg: Config):
        if cfg.model != TINY:  # from config.json, before accelerate, any record or any device memory
            check_policy(cfg)
        self.accelerator = accelerator = make_accelerator(cfg)
        self.mesh = init_mesh(cfg.sp_size)  # data parallel x sequence parallel; 1 x 1 in one process
        self.world = accelerator.num_processes
        check_rerun(cfg, accelerator.is_main_process)
        accelerator.wait_for_everyone()
        if cfg.model == TINY:
            cfg = prepare_tiny(cfg, accelerator)
        self.cfg = cfg
        if accelerator.is_main_process:
            write_resolved_config(cfg, cfg.output_dir)
        set_seed(cfg.seed)
        check_policy(cfg)  # before anything loads: a hub id or an unsupported family is refused here
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        self.filler = filler_pair(self.tokenizer)
        self.mode: LossMode = MODES[cfg.loss]  # the trainer asks the mode; it never compares loss names
        self.records = open_records(cfg.train_file, require_reference=self.mode.reference == SHORT_PROMPT)
        # Before any model loads: a run in which no pair fits max_length would export the start model unchanged.
        if not check_some_pair_fits(self.tokenizer, self.records, cfg.max_length, STARTUP_SCAN):
            logger.warning(f"the first {STARTUP_SCAN} records are all over max_length={cfg.max_length}; if no pair "
                           f"fits, the run stops before its export")
        self.setup_models()
        self.setup_schedule()
        self.step, self.skipped_total, self.pairs_trained = 0, 0, 0
        self.overlong: dict[str, int] = {}  # id -> length of the pairs this process skipped (no-pair-fits message)
        self.resume()
        self.metrics = MetricsWriter(accelerator, cfg.output_dir, cfg.report_to, config_to_dict(cfg))
        logger.info(f"{len(self.records)} records, {self.steps_per_epoch} steps per epoch, {self.total_steps} "
                    f"steps, {self.pairs_per_step} pairs per step ({cfg.pairs_per_micro_batch} per micro-batch x "
                    f"{cfg.gradient_accumulation_steps} accumulation x {self.mesh.dp_size} data-parallel), "
                    f"{cfg.max_length * self.pairs_per_step} tokens per step at most (max_length x pairs) on "
                    f"{self.world} rank(s) "
                    f"({accelerator.distributed_type.value}, sp_size {self.mesh.sp_size}), loss={cfg.loss}")

    def setup_models(self) -> None:
        """The policy (and, for a mode whose reference is the long prompt, its frozen copy), parallelised,
        wrapped, prepared with the optimizer."""
        cfg, accelerator = self.cfg, self.accelerator
        backend = DEFAULT_BACKEND if cfg.attention_backend == "auto" else cfg.attention_backend
        policy = load_policy(cfg)
        parallelize(policy, self.mesh, backend)
        apply_speed_options(policy, cfg)  # gradient_checkpointing too
        self.reference = None
        if self.mode.reference == LONG_PROMPT:  # the initial policy, loaded again (a deep copy of ZeRO-3 shards is not a model)
            reference = load_policy(cfg)
            parallelize(reference, self.mesh, backend)
            self.reference = prepare_reference(accelerator, PairModel(reference, self.mesh, cfg.logp_chunk_size,
                                                                      backend))
        module = PairModel(policy, self.mesh, cfg.logp_chunk_size, backend)
        module.train()
        self.optimizer = build_optimizer(cfg, module.parameters())
        self.module, self.optimizer = accelerator.prepare(module, self.optimizer)
        self.backward_scale = accelerator.gradient_accumulation_steps * self.world

    def setup_schedule(self) -> None:
        cfg = self.cfg
        self.pairs_per_step = cfg.pairs_per_micro_batch * cfg.gradient_accumulation_steps * self.mesh.dp_size
        self.steps_per_epoch = steps_per_epoch(len(self.records), self.pairs_per_step)
        total = self.steps_per_epoch * cfg.num_epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.scheduler = build_scheduler(cfg, self.optimizer, self.total_steps)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def resume(self) -> None:
        cfg = self.cfg
        resume_from = resolve_resume(cfg.resume, cfg.output_dir)
        if resume_from is not None:
            state = load_checkpoint(self.accelerator, resume_from)
            if state["pairs_per_step"] != self.pairs_per_step:
                raise InputError(f"{resume_from} was written with {state['pairs_per_step']} pairs per step, this run "
                                 f"has {self.pairs_per_step}: the data position would not match; resume with the "
                                 f"same pairs_per_micro_batch x gradient_accumulation_steps x ranks, or resume=none")
            self.step, self.skipped_total = state["step"], state["skipped_overlong"]
            # Checkpoints written before pairs were counted: their steps are taken as trained.
            self.pairs_trained = state.get("pairs_trained", self.step)
            logger.info(f"resumed from {resume_from} at step {self.step}")
        if self.accelerator.is_main_process:
            truncate_metrics(Path(cfg.output_dir) / "metrics.jsonl", self.step)

    def fetch_step(self, step: int) -> tuple[list, list[tuple[str, int]]]:
        """This rank's micro-batches of global step `step` (0-based) and the pairs it skipped as overlong."""
        cfg = self.cfg
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.records), cfg.seed, epoch)
        share = rank_share(order, in_epoch, self.pairs_per_step, self.mesh.dp_rank, self.mesh.dp_size)
        pairs, skipped = tokenize_share(self.tokenizer, [self.records[i] for i in share], cfg.max_length,
                                        cfg.skip_overlong)
        self.overlong.update(skipped)
        for rid, length in skipped:
            logger.warning(f"step {step + 1}: skipped record {rid!r}: {length} tokens > max_length={cfg.max_length}")
        pad = self.tokenizer.pad_token_id or 0
        batches = micro_batches(pairs, cfg.pairs_per_micro_batch, cfg.gradient_accumulation_steps, cfg.nll_mode,
                                self.filler, pad)
        return batches, skipped

    def train_step(self, micro: list, skipped: int) -> StepSums:
        """Forward and backward every micro-batch of one step with the step's global counts; the
        step's metric sums over data-parallel ranks (the ranks of an SP group hold the same sample)."""
        cfg, accelerator = self.cfg, self.accelerator
        real = [mb for mb in micro if mb.weight > 0]
        counts = torch.tensor([sum(mb.batch.num_nll_tokens for mb in real), sum(mb.batch.num_pairs for mb in real),
                               sum(mb.batch.num_pairs - sum(mb.batch.equal_answers) for mb in real)],
                              dtype=torch.float64, device=accelerator.device)
        nll_tokens, num_pairs, pref_pairs = reduce_sum(counts, self.mesh).tolist()
        mode = self.mode
        lam = cfg.lam if mode.preference else 0.0
        sums = StepSums(skipped=skipped)
        if num_pairs == 0:  # every pair of the step was over max_length on every rank: no forward, no update
            logger.warning(f"step {self.step + 1}: every pair was over max_length={cfg.max_length}; step skipped")
            return sums.reduce(self.mesh, accelerator.device)
        for mb in micro:
            batch = batch_to(mb.batch, accelerator.device)
            with accelerator.accumulate(self.module):
                out = self.module(batch)
                pref, pref_sum = None, out.nll_sum.new_zeros(())
                if mode.preference:
                    pref = mode.losses(out.policy, self.reference_logps(batch), cfg.beta, cfg.margin)
                    keep = ~torch.tensor(batch.equal_answers, dtype=torch.bool, device=pref.losses.device)
                    # 0 * the whole sum keeps the graph when every pair of the micro-batch is left out
                    pref_sum = pref.losses[keep].sum() + 0.0 * pref.losses.sum()
                    pref = select_pairs(pref, keep)
                loss = combine_loss(out.nll_sum, nll_tokens, pref_sum, pref_pairs, cfg.nll_weight, lam) * mb.weight
                self.check_finite(loss, micro)
                accelerator.backward(loss * self.backward_scale)
            if mb.weight > 0:
                sums.add(float(loss.detach()), float(out.nll_sum.detach()), out.nll_tokens, batch.num_pairs,
                         batch.num_tokens, pref, equal_answers=sum(batch.equal_answers))
        return sums.reduce(self.mesh, accelerator.device)

    def check_finite(self, loss: torch.Tensor, micro: list) -> None:
        """Stop on a non-finite micro-batch loss before its backward, on every rank together. The check
        after the step's backwards is too late under DeepSpeed: its engine steps inside the last one."""
        bad = reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1), self.mesh, over="world")
        if bad.item():
            self.stop(f"non-finite loss (this rank's micro-batch: {float(loss.detach())})", micro)

    def reference_logps(self, batch: PackedBatch) -> PairLogps | None:
        """The log-probs the mode compares with: precomputed on the short prompt, the frozen copy on the long one, or none."""
        if self.mode.reference == SHORT_PROMPT:
            return PairLogps(chosen=batch.ref_chosen, rejected=batch.ref_rejected)
        if self.mode.reference == LONG_PROMPT:
            with torch.no_grad():
                return self.reference(batch).policy
        return None

    def train(self) -> dict:
        cfg, accelerator = self.cfg, self.accelerator
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not (cfg.progress_bar and accelerator.is_main_process))
        row: dict = {}
        while self.step < self.total_steps:
            start = time.perf_counter()
            micro, skipped = self.fetch_step(self.step)
            sums = self.train_step(micro, len(skipped))
            grad_norm = accelerator.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm or math.inf)
            if grad_norm is not None and not math.isfinite(float(grad_norm)):
                self.stop(f"non-finite gradient norm ({float(grad_norm)})", micro)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.step += 1
            self.skipped_total += int(sums.skipped)
            self.pairs_trained += int(sums.pairs)
            seconds = time.perf_counter() - start
            row = {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch}
            if sums.pairs:
                row |= {**sums.metrics(self.mode.metrics),
                        "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "tokens_per_s": sums.tokens / seconds, "pairs_per_s": sums.pairs / seconds, "seconds": seconds}
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            else:  # no loss to log: a 0.0 would read as a perfect step
                row |= {"skipped": True, "skipped_overlong": int(sums.skipped), "lr": lr, "seconds": seconds}
                bar.set_postfix(skipped=f"step {self.step}")
            self.metrics.log(row)
            bar.update(1)
            if cfg.save_steps and (self.step % cfg.save_steps == 0 or self.step == self.total_steps):
                saved = save_checkpoint(accelerator, cfg.output_dir, self.checkpoint_state(), cfg.keep_checkpoints)
                logger.info(f"step {self.step}: checkpoint {saved}")
        bar.close()
        if self.skipped_total:
            logger.warning(f"{self.skipped_total} pair(s) skipped in all for exceeding max_length={cfg.max_length}")
        if not self.pairs_trained:  # the start-up check could not read every record: the last chance before export
            raise InputError(no_pair_fits(len(self.records), list(self.overlong.values()), cfg.max_length))
        export_dir = Path(cfg.export_dir or Path(cfg.output_dir) / "final")
        export_model(accelerator, self.module, self.tokenizer, export_dir)
        self.metrics.close()
        logger.info(f"exported the policy to {export_dir}")
        if accelerator.is_main_process and self.metrics.path.is_file():
            if figure := plot_training(cfg.output_dir):
                logger.info(f"training curves: {figure}")
        return {"export_dir": str(export_dir), "steps": self.step, "last": row, "skipped_overlong": self.skipped_total}

    def stop(self, what: str, micro: list) -> None:
        """Raise before the optimizer step: the weights and the last checkpoint stay as they were."""
        ids = sorted({i for mb in micro if mb.weight > 0 for i in mb.batch.ids})
        raise TrainingError(
            f"{what} at step {self.step + 1}; records of this step on rank {self.accelerator.process_index}: {ids}. "
            f"No update and no checkpoint were written for this step; the last good checkpoint in "
            f"{self.cfg.output_dir} is intact"
        )

    def checkpoint_state(self) -> dict:
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        return {"step": self.step, "epoch": epoch, "step_in_epoch": in_epoch, "total_steps": self.total_steps,
                "skipped_overlong": self.skipped_total, "pairs_trained": self.pairs_trained, "seed": self.cfg.seed,
                "pairs_per_step": self.pairs_per_step}


def train(cfg: Config) -> dict:
    """Library entry point: set up, train, export; returns the export dir and the last metrics."""
    return Trainer(cfg).train()


def main(cfg: Config) -> int:
    result = train(cfg)
    print(f"trained {result['steps']} steps; model in {result['export_dir']}")
    return 0
