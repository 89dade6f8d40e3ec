"""`longpo train`: train a policy with the LongPO loss (or another loss mode, `longpo.train.losses`) on accelerate.

    longpo train --config tiny                  # built-in tiny run, CPU, < 1 min
    longpo recipes copy accelerate/zero3        # writes zero3.yaml here (accelerate reads a file)
    accelerate launch --config_file zero3.yaml -m longpo.cli train \\
        --config mistral-7b-128k

One optimizer step, read top to bottom in `Trainer.train_step`:
  1. fetch ALL micro-batches of the step (`data.py`: exactly `gradient_accumulation_steps` per
     rank, weight-0 fillers where a rank's share ran short);
  2. sum the step's NLL-token and pair counts over data-parallel ranks (a record with M rejected answers
     is M pairs (record, j), or one for a mode that averages them, `LossMode.per_answer`; pairs whose
     chosen and rejected answers are equal carry no preference gradient: out of the preference mean, NLL kept);
  3. for every micro-batch: forward (`PairModel`, the one place the model runs), loss =
     `combine_loss(sums, GLOBAL counts)`, stop on a non-finite loss on every rank together (before
     any backward: DeepSpeed steps inside the last one), backward;
  4. sum the step's metrics over data-parallel ranks; clip, optimizer step, scheduler step; log;
     checkpoint every `save_steps`.
Because every micro-batch loss is already its share of the global step mean, the gradients add
up to exactly the big-batch gradient. accelerate divides each backward by the accumulation steps
and DDP / ZeRO / FSDP average over ranks; `backward_scale` undoes both.

This file is the loop; its parts are where a torchtitan or torchtune reader looks for them:
  model.py       the policy: family check, loading with the run's RoPE, `PairModel` (the forward)
  data.py        records -> steps -> packed micro-batches (`packing.py`: the shared-prefix layout)
  losses/        the loss modes, one file each (`loss.py`: their shared math)
  optim.py       optimizer and learning-rate schedule
  checkpoint.py  the run folder: rerun guard, checkpoints, resume, the final export
  launch.py      accelerate and its plugins; parallel.py: the DP x SP mesh and Ulysses attention
  metrics.py     step sums, metrics.jsonl and trackers (`plots.py`: the curves)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from longpo.config import config_to_dict, write_resolved_config
from longpo.data.sources import open_records
from longpo.errors import InputError
from longpo.models import load_tokenizer
from longpo.train.attention import DEFAULT_BACKEND
from longpo.train.checkpoint import (
    FINGERPRINT_EXEMPT,  # noqa: F401  (evolve reads each stage's FINGERPRINT_EXEMPT beside its Config)
    check_rerun,
    export_model,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    truncate_metrics,
)
from longpo.train.config import TINY, Config  # there, so `longpo train` checks it before torch loads
from longpo.train.data import (
    check_rejected_answers,
    check_some_pair_fits,
    epoch_order,
    filler_pair,
    micro_batches,
    no_pair_fits,
    rank_share,
    steps_per_epoch,
    tokenize_share,
)
from longpo.train.launch import make_accelerator, prepare_reference
from longpo.train.loss import PairLogps, answer_pairs, combine_loss, preference_keep, select_pairs
from longpo.train.losses import LONG_PROMPT, MODES, SHORT_PROMPT, LossMode
from longpo.train.metrics import MetricsWriter, StepSums
from longpo.train.model import PairModel, check_policy, load_policy
from longpo.train.optim import build_optimizer, build_scheduler
from longpo.train.packing import PackedBatch, batch_to
from longpo.train.parallel import init_mesh, parallelize, reduce_sum
from longpo.train.plots import plot_training
from longpo.train.runs import prepare_tiny
from longpo.train.speed import apply_speed_options

logger = logging.getLogger("longpo.train")

# Records read at start-up to find one pair that fits max_length (the first usually does); beyond them the
# check waits for the end of training.
STARTUP_SCAN = 256


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss); the message names the step and the records."""


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
        check_rejected_answers(self.mode, self.records.rejected_counts())
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
        mode = self.mode
        counts = torch.tensor([sum(mb.batch.num_nll_tokens for mb in real), sum(mb.batch.num_pairs for mb in real),
                               sum(sum(preference_keep(mb.batch.equal_answers, mode.per_answer)) for mb in real)],
                              dtype=torch.float64, device=accelerator.device)
        nll_tokens, num_pairs, pref_pairs = reduce_sum(counts, self.mesh).tolist()
        lam = cfg.lam if mode.preference else 0.0
        sums = StepSums(skipped=skipped)
        if num_pairs == 0:  # every pair of the step was over max_length on every rank: no forward, no update
            logger.warning(f"step {self.step + 1}: every pair was over max_length={cfg.max_length}; step skipped")
            return sums.reduce(self.mesh, accelerator.device)
        for mb in micro:
            batch = batch_to(mb.batch, accelerator.device)
            with accelerator.accumulate(self.module):
                out = self.module(batch)
                pref, pref_sum, left_out = None, out.nll_sum.new_zeros(()), 0
                if mode.preference:
                    policy, reference = out.policy, self.reference_logps(batch)
                    if mode.per_answer:  # M rejected answers: M pairs (record, j) sharing the chosen answer
                        policy, reference = answer_pairs(policy), reference and answer_pairs(reference)
                    pref = mode.losses(policy, reference, cfg.beta, cfg.margin)
                    keep = torch.tensor(preference_keep(batch.equal_answers, mode.per_answer), dtype=torch.bool,
                                        device=pref.losses.device)
                    left_out = int((~keep).sum())
                    # 0 * the whole sum keeps the graph when every pair of the micro-batch is left out
                    pref_sum = pref.losses[keep].sum() + 0.0 * pref.losses.sum()
                    pref = select_pairs(pref, keep)
                loss = combine_loss(out.nll_sum, nll_tokens, pref_sum, pref_pairs, cfg.nll_weight, lam) * mb.weight
                self.check_finite(loss, micro)
                accelerator.backward(loss * self.backward_scale)
            if mb.weight > 0:
                sums.add(float(loss.detach()), float(out.nll_sum.detach()), out.nll_tokens, batch.num_pairs,
                         batch.num_tokens, pref, equal_answers=left_out)
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
        accelerator.wait_for_everyone()  # no rank leaves while another still writes (see `main`)
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
    # Every rank is past the export (train waits for all): the process group goes down here, before the
    # interpreter's exit would tear it down in no set order (a ZeRO-3 rank was seen to abort there).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(f"trained {result['steps']} steps; model in {result['export_dir']}")
    return 0
