"""Plain DPO on the long prompt, LongPO's baseline (and the loss of LongReward / LongMab-PO, which differ in data)."""

from __future__ import annotations

from longpo.train.losses.base import LONG_PROMPT, Defaults, LossMode, dpo_losses

MODE = LossMode(
    name="dpo",
    summary="reference = a frozen copy of the initial policy on the LONG prompt, plus the NLL",
    formula="-log σ(β[(log π(y_w|x_L) - log π_0(y_w|x_L)) - (log π(y_l|x_L) - log π_0(y_l|x_L))])",
    reference=LONG_PROMPT,
    rejected=(1, None),
    defaults=Defaults(beta=0.01, lam=0.01, nll_weight=1.0, nll_mode="full"),  # LongPO's, so the baseline differs in the reference alone
    losses=dpo_losses,
    source="Rafailov et al. 2023; LongPO's plain-DPO baseline",
)
