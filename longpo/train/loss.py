"""The LongPO objective as pure functions of summed log-probs: no model, no process group.

For a pair with long prompt x_L, short prompt x_S, chosen answer y_w and rejected answer y_l
(all turns of a multi-turn sample summed):

    r(y)    = beta * ( log pi_theta(y | x_L) - log pi_ref(y | x_S) )
    L_pref  = -log sigmoid( r(y_w) - r(y_l) )
    L       = nll_weight * NLL(chosen long sequence) + lambda * L_pref

The loss modes differ only in what the caller passes as the reference:
  longpo: pi_ref = the frozen original model on the SHORT prompt (precomputed, in the records);
  dpo:    pi_ref = the frozen initial policy on the LONG prompt (the paper's plain-DPO baseline);
  sft:    no preference term; the NLL term alone (the paper's SFT-on-chosen baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longpo.train.config import LOSS_MODES, NLL_MODES  # noqa: F401 (re-exported; the config checks them without torch)


@dataclass
class PairLogps:
    """Summed log-probs of the chosen and rejected responses of each pair."""

    chosen: torch.Tensor  # (P,)
    rejected: torch.Tensor  # (P,)


@dataclass
class PreferenceOutput:
    losses: torch.Tensor  # (P,) per-pair -log sigmoid(margin), differentiable
    chosen_rewards: torch.Tensor  # (P,) beta * (pi_c - ref_c), detached
    rejected_rewards: torch.Tensor  # (P,) beta * (pi_r - ref_r), detached


def preference_losses(policy: PairLogps, reference: PairLogps, beta: float) -> PreferenceOutput:
    """Per-pair preference loss  -log sigmoid( beta * ((pi_c - ref_c) - (pi_r - ref_r)) ).

    `policy` holds log pi_theta(y | x_L); `reference` holds log pi_ref(y | x_S) for LongPO (or
    log pi_ref(y | x_L) for plain DPO). The reference carries no gradient.
    """
    assert policy.chosen.shape == reference.chosen.shape, (
        f"policy {tuple(policy.chosen.shape)} and reference {tuple(reference.chosen.shape)} pair counts differ"
    )
    ref_c = reference.chosen.detach().to(policy.chosen.dtype)
    ref_r = reference.rejected.detach().to(policy.rejected.dtype)
    chosen_logratio = policy.chosen - ref_c
    rejected_logratio = policy.rejected - ref_r
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratio).detach(),
        rejected_rewards=(beta * rejected_logratio).detach(),
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
