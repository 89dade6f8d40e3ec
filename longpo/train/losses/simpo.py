"""SimPO (Meng et al. 2024, arXiv 2405.14734): reference-free, length-normalised, with a target margin."""

from __future__ import annotations

from typing import Any

from longpo.train.losses.base import NO_REFERENCE, Defaults, LossMode


def losses(policy: Any, reference: Any, beta: float, margin: float) -> Any:
    """mean_j -log sigmoid( beta * (lp(y_w) - lp(y_l^j)) - gamma ),  lp(y) = log pi(y | x_L) / |y|

    TRL's CPOTrainer with loss_type="simpo" (simpo_gamma = gamma, no label smoothing). M rejected
    answers are M pairs sharing the chosen one. `reference` is unused. Rewards: beta * lp.
    """
    import torch.nn.functional as F

    from longpo.train.loss import PreferenceOutput, mean_logps

    chosen, rejected = mean_logps(policy)  # (P,), (P, M)
    return PreferenceOutput(
        losses=-F.logsigmoid(beta * (chosen[:, None] - rejected) - margin).mean(dim=1),
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).mean(dim=1).detach(),
    )


MODE = LossMode(
    name="simpo",
    summary="reference-free, per-token mean log-probs, target margin gamma; no NLL",
    formula="-log σ(β(lp(y_w) - lp(y_l)) - γ),  lp(y) = log π(y|x_L)/|y|",
    reference=NO_REFERENCE,
    rejected=(1, None),
    defaults=Defaults(beta=2.0, lam=1.0, nll_weight=0.0, nll_mode="off", margin=1.0),  # gamma/beta 0.5, the paper's range
    losses=losses,
    source="arXiv 2405.14734; TRL CPOTrainer loss_type='simpo' (cpo_alpha 0: no NLL)",
)
