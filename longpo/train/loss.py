"""The preference objectives' shared math: pure functions of summed log-probs, no model, no process group.

For a pair with long prompt x_L, short prompt x_S, chosen answer y_w and rejected answers
y_l^1..y_l^M (all turns of a multi-turn sample summed):

    r(y)    = beta * ( log pi_theta(y | x_L) - log pi_ref(y | x_ref) )
    L_pref  = mean_j -log sigmoid( r(y_w) - r(y_l^j) )
    L       = nll_weight * NLL(chosen long sequence) + lam * L_pref

Which reference a mode passes (the short prompt, the long prompt, none) and which per-pair loss it
takes is the mode's own business: `longpo.train.losses` (one file per mode). Log-prob containers
carry (P,) chosen sums and (P,) or (P, M) rejected sums, with their response token counts where the
forward counted them (the length-normalised modes divide by them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """Summed log-probs of the chosen and rejected responses of each pair, and their token counts."""

    chosen: torch.Tensor  # (P,)
    rejected: torch.Tensor  # (P,) one rejected answer per pair, or (P, M)
    chosen_tokens: torch.Tensor | None = None  # (P,) response tokens summed in `chosen`
    rejected_tokens: torch.Tensor | None = None  # shaped as `rejected`


@dataclass
class PreferenceOutput:
    losses: torch.Tensor  # (P,) per-pair loss, differentiable
    chosen_rewards: torch.Tensor  # (P,) the mode's reward of the chosen answer, detached
    rejected_rewards: torch.Tensor  # (P,) the mode's reward of the rejected answers (their mean), detached


def branches(x: torch.Tensor) -> torch.Tensor:
    """Rejected statistics as (P, M): a (P,) tensor is one rejected answer per pair."""
    return x.reshape(x.shape[0], -1)


def mean_logps(logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean log-probs: chosen (P,) and rejected (P, M), each sum divided by its token count."""
    assert logps.chosen_tokens is not None and logps.rejected_tokens is not None, (
        "a length-normalised loss needs the response token counts (pair_stats counts them)"
    )
    chosen = logps.chosen / logps.chosen_tokens.to(logps.chosen.dtype).clamp(min=1)
    rejected = branches(logps.rejected) / branches(logps.rejected_tokens).to(logps.rejected.dtype).clamp(min=1)
    return chosen, rejected


def preference_losses(policy: PairLogps, reference: PairLogps, beta: float) -> PreferenceOutput:
    """Per-pair  mean_j -log sigmoid( beta * ((pi_c - ref_c) - (pi_r^j - ref_r^j)) ).

    `policy` holds log pi_theta(y | x_L); `reference` holds log pi_ref(y | x_S) for LongPO (or
    log pi_ref(y | x_L) for plain DPO). M rejected answers are M pairs sharing the chosen one; each
    record weighs the same whatever its M. The reference carries no gradient.
    """
    assert policy.chosen.shape == reference.chosen.shape, (
        f"policy {tuple(policy.chosen.shape)} and reference {tuple(reference.chosen.shape)} pair counts differ"
    )
    ref_c = reference.chosen.detach().to(policy.chosen.dtype)
    ref_r = branches(reference.rejected).detach().to(policy.rejected.dtype)
    chosen_logratio = policy.chosen - ref_c  # (P,)
    rejected_logratio = branches(policy.rejected) - ref_r  # (P, M)
    losses = -F.logsigmoid(beta * (chosen_logratio[:, None] - rejected_logratio)).mean(dim=1)
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratio).detach(),
        rejected_rewards=(beta * rejected_logratio).mean(dim=1).detach(),
    )


def combine_loss(
    nll_sum: torch.Tensor,
    nll_tokens: float,
    pref_sum: torch.Tensor,
    num_pairs: float,
    nll_weight: float,
    lam: float,
) -> torch.Tensor:
    """nll_weight * nll_sum / nll_tokens + lam * pref_sum / num_pairs.

    The counts are the GLOBAL counts of one optimizer step (every micro-batch, every data-parallel
    rank), so the gradients of the micro-batch losses add up to exactly the big-batch gradient:
    the NLL is a token mean over the whole step, the preference term a pair mean.
    """
    loss = pref_sum.new_zeros(()) if torch.is_tensor(pref_sum) else nll_sum.new_zeros(())
    if nll_weight and nll_tokens > 0:
        loss = loss + nll_weight * nll_sum / nll_tokens
    if lam and num_pairs > 0:
        loss = loss + lam * pref_sum / num_pairs
    return loss


def answer_pairs(logps: PairLogps) -> PairLogps:
    """M rejected answers as M pairs (record, j) sharing the chosen answer: chosen (P,) repeated to (P*M,),
    rejected (P, M) flattened row by row; (P,) statistics pass unchanged. Gradients reach the chosen sums
    once per pair it is in."""
    m = branches(logps.rejected).shape[1]
    if logps.rejected.dim() == 1:
        return logps
    repeat = lambda t: None if t is None else t.repeat_interleave(m)  # noqa: E731
    flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
    return PairLogps(chosen=repeat(logps.chosen), rejected=flat(logps.rejected),
                     chosen_tokens=repeat(logps.chosen_tokens), rejected_tokens=flat(logps.rejected_tokens))


def preference_keep(equal_answers: tuple[tuple[bool, ...], ...], per_answer: bool) -> list[bool]:
    """Which preference terms carry a signal: per (record, j) when each rejected answer is its own pair (a
    rejected answer equal to the chosen one gives a constant term), else per record (all M equal: constant)."""
    if per_answer:
        return [not equal for row in equal_answers for equal in row]
    return [not all(row) for row in equal_answers]


def select_pairs(pref: PreferenceOutput, keep: torch.Tensor) -> PreferenceOutput:
    """The pairs of `pref` that carry a preference signal (the step's preference means count these)."""
    return PreferenceOutput(losses=pref.losses[keep], chosen_rewards=pref.chosen_rewards[keep],
                            rejected_rewards=pref.rejected_rewards[keep])
