"""Per-step training metrics: summed on each rank, reduced once, written as JSONL (and trackers).

Every metric is a sum over the step's real pairs / tokens divided by the step's global count, the
same "sum, then normalise" rule as the loss, so the numbers do not depend on how the step was cut
into micro-batches or ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from longpo.files import append_jsonl
from longpo.train.parallel import Mesh, reduce_sum


@dataclass
class StepSums:
    """What one rank adds up over the micro-batches of one optimizer step."""

    loss: float = 0.0  # sum of the micro-batch losses: the step loss once summed over ranks
    nll_sum: float = 0.0
    nll_tokens: float = 0.0
    pref_sum: float = 0.0
    pairs: float = 0.0
    chosen_rewards: float = 0.0
    rejected_rewards: float = 0.0
    correct: float = 0.0  # pairs whose chosen reward beats the rejected one
    tokens: float = 0.0  # packed tokens, padding and fillers excluded
    skipped: float = 0.0  # pairs of this step dropped for exceeding max_length
    # pairs in the preference means (a pair: (record, rejected answer j), or a record for a mode with one term
    # per record): those whose chosen and rejected answers differ
    pref_pairs: float = 0.0
    equal_answers: float = 0.0  # pairs left out: chosen and rejected answers the same tokens (NLL only)

    def add(self, loss: float, nll_sum: float, nll_tokens: int, pairs: int, tokens: int, pref: Any = None,
            equal_answers: int = 0) -> None:
        """One real micro-batch; `pref` is its `PreferenceOutput` over the pairs with a preference signal
        (None without a preference term); `equal_answers` counts the pairs left out of it."""
        self.equal_answers += equal_answers
        self.loss += loss
        self.nll_sum += nll_sum
        self.nll_tokens += nll_tokens
        self.pairs += pairs
        self.tokens += tokens
        if pref is not None:
            self.pref_sum += float(pref.losses.detach().sum())
            self.pref_pairs += pref.losses.numel()
            self.chosen_rewards += float(pref.chosen_rewards.sum())
            self.rejected_rewards += float(pref.rejected_rewards.sum())
            self.correct += float((pref.chosen_rewards > pref.rejected_rewards).sum())

    def reduce(self, mesh: Mesh, device: Any) -> StepSums:
        """Sum over data-parallel ranks (one all-reduce; `parallel.reduce_sum`)."""
        if mesh.dp_size == 1:
            return self
        values = torch.tensor([getattr(self, f.name) for f in fields(self)], dtype=torch.float64, device=device)
        return StepSums(*reduce_sum(values, mesh).tolist())

    def metrics(self, names: tuple[str, ...]) -> dict:
        """Step means: loss and nll always, then the loss mode's `names` (its `LossMode.metrics`), means over
        the pairs with a preference signal."""
        pairs = max(self.pref_pairs, 1.0)
        out = {"loss": self.loss, "nll": self.nll_sum / self.nll_tokens if self.nll_tokens else 0.0}
        means = {
            "pref_loss": self.pref_sum / pairs,
            "rewards/chosen": self.chosen_rewards / pairs,
            "rewards/rejected": self.rejected_rewards / pairs,
            "rewards/accuracy": self.correct / pairs,
            "rewards/margin": (self.chosen_rewards - self.rejected_rewards) / pairs,
        }
        unknown = sorted(set(names) - set(means))
        assert not unknown, f"metrics {unknown} are not summed by StepSums; known: {sorted(means)}"
        out.update({name: means[name] for name in names})
        return out | {"pairs": int(self.pairs), "tokens": int(self.tokens), "skipped_overlong": int(self.skipped),
                      "equal_answer_pairs": int(self.equal_answers)}


class MetricsWriter:
    """Appends one JSON line per step to `output_dir/metrics.jsonl` (main process) and forwards to
    the accelerate trackers (TensorBoard, W&B) named in `report_to`."""

    def __init__(self, accelerator: Any, output_dir: str | os.PathLike, report_to: list[str], config: dict):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"
        self.trackers = bool(report_to)
        if self.trackers:
            flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
            accelerator.init_trackers(__name__.split(".")[0], config=flat)  # the project: the package's name

    def log(self, row: dict) -> None:
        if self.accelerator.is_main_process:
            append_jsonl(self.path, row)
        if self.trackers:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])

    def close(self) -> None:
        """Finish the trackers (the process group is the trainer's to end, after every rank has exported)."""
        for tracker in self.accelerator.trackers if self.trackers else ():
            tracker.finish()
