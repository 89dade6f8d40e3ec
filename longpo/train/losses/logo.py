"""LOGO (Tang et al. 2024, arXiv 2410.18533): reference-free, length-averaged, M rejected answers averaged, margin, NLL."""

from __future__ import annotations

from typing import Any

from longpo.train.losses.base import NO_REFERENCE, Defaults, LossMode


def losses(policy: Any, reference: Any, beta: float, margin: float) -> Any:
    """-log sigmoid( beta * (lp(y_w) - mean_j lp(y_l^j)) - gamma ),  lp(y) = log pi(y | x_L) / |y|

    The rejected answers are averaged INSIDE the sigmoid (one term per record), as the official
    trainer does with (rejected_1 + rejected_2) / 2. `reference` is unused. Rewards: beta * lp.
    """
    import torch.nn.functional as F

    from longpo.train.loss import PreferenceOutput, mean_logps

    chosen, rejected = mean_logps(policy)  # (P,), (P, M)
    rejected = rejected.mean(dim=1)
    return PreferenceOutput(
        losses=-F.logsigmoid(beta * (chosen - rejected) - margin),
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).detach(),
    )


MODE = LossMode(
    name="logo",
    summary="reference-free, per-token mean log-probs, the M rejected answers averaged, margin, NLL on the chosen answer",
    formula="-log σ(β(lp(y_w) - mean_j lp(y_l^j)) - γ) + w_sft·CE(y_w),  lp(y) = log π(y|x_L)/|y|",
    reference=NO_REFERENCE,
    rejected=(1, None),
    # ZetangForward/LCM_Stack training/scripts/llama3_logo.sh: beta 10, gamma_beta_ratio 0.3, sft_weight 0.1
    # (the llama2 script uses beta 3, 0.2; the mistral one beta 2.5, 0.1); its CE is over the chosen answer.
    defaults=Defaults(beta=10.0, lam=1.0, nll_weight=0.1, nll_mode="responses", margin=3.0),
    losses=losses,
    per_answer=False,  # the M answers are averaged inside one term: a record is one preference pair
    source="arXiv 2410.18533; ZetangForward/LCM_Stack training/logo_train.py. The official forward slices the "
           "rejected log-probs as all_logps[len_chosen:] (both rejected answers) where [2*len_chosen:] (the second) "
           "is meant; here each rejected answer is its own branch, so rejected j is always answer j",
)
