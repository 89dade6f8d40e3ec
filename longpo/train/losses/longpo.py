"""LongPO (Chen et al., ICLR 2025, arXiv 2502.13922): short-to-long DPO plus the NLL on the chosen long sequence."""

from __future__ import annotations

from longpo.train.losses.base import SHORT_PROMPT, Defaults, LossMode, dpo_losses

MODE = LossMode(
    name="longpo",
    summary="reference = the original model on the SHORT prompt (from the records), plus the NLL",
    formula="-log σ(β[(log π(y_w|x_L) - log π_S(y_w|x_S)) - (log π(y_l|x_L) - log π_S(y_l|x_S))])",
    reference=SHORT_PROMPT,
    rejected=(1, None),
    defaults=Defaults(beta=0.01, lam=0.01, nll_weight=1.0, nll_mode="full"),  # the released train script
    losses=dpo_losses,
    source="paper eq. 14 and the released code (beta 0.01, lambda 0.01, NLL weight 1 over the whole chosen sequence)",
)
