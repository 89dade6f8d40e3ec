"""SFT on the chosen answers: the NLL term alone (LongPO's SFT baseline)."""

from __future__ import annotations

from longpo.train.losses.base import NO_REFERENCE, Defaults, LossMode

MODE = LossMode(
    name="sft",
    summary="no preference term: the NLL of the chosen long sequence alone",
    formula="NLL(chosen long sequence) only",
    reference=NO_REFERENCE,
    rejected=(0, 0),
    defaults=Defaults(beta=0.01, lam=0.0, nll_weight=1.0, nll_mode="full"),
    losses=None,
    metrics=(),
    source="LongPO's SFT-on-chosen baseline",
)
