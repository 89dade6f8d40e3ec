"""ORPO (Hong et al. 2024, arXiv 2403.07691): NLL on the chosen answer plus an odds-ratio term, no reference."""

from __future__ import annotations

from typing import Any

from longpo.train.losses.base import NO_REFERENCE, Defaults, LossMode


def log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, without cancellation (branch at -ln 2)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def losses(policy: Any, reference: Any, beta: float, margin: float) -> Any:
    """mean_j -beta * log sigmoid( log odds(y_w) - log odds(y_l^j) ),  odds(y) = P(y) / (1 - P(y)),
    log P(y) = lp(y) = log pi(y | x_L) / |y|   (so log odds = lp - log(1 - exp(lp)))

    TRL's ORPOTrainer.odds_ratio_loss with its beta (the paper's lambda) as the weight; the NLL is the
    trainer's term (nll_mode responses, weight 1). `reference` and `margin` are unused. Rewards: beta * lp.
    """
    import torch.nn.functional as F

    from longpo.train.loss import PreferenceOutput, mean_logps

    chosen, rejected = mean_logps(policy)  # (P,), (P, M)
    log_odds = (chosen[:, None] - rejected) - (log1mexp(chosen)[:, None] - log1mexp(rejected))
    return PreferenceOutput(
        losses=-(beta * F.logsigmoid(log_odds)).mean(dim=1),
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).mean(dim=1).detach(),
    )


MODE = LossMode(
    name="orpo",
    summary="reference-free odds-ratio term weighted by beta, plus the NLL of the chosen answer",
    formula="CE(y_w) - β log σ(log odds(y_w) - log odds(y_l)),  odds(y) = P/(1-P), log P = log π(y|x_L)/|y|",
    reference=NO_REFERENCE,
    rejected=(1, None),
    defaults=Defaults(beta=0.1, lam=1.0, nll_weight=1.0, nll_mode="responses"),  # TRL ORPOConfig beta 0.1
    losses=losses,
    source="arXiv 2403.07691; TRL ORPOTrainer.odds_ratio_loss (which computes in float32; here in the log-probs' dtype)",
)
