"""What a loss mode declares, importing no torch: `longpo train --help` and the config read it before torch loads.

A mode is a small frozen object (one file per mode in this folder, listed in `MODES` in
`__init__.py`). The trainer asks it, and never compares its name:

- `reference`: where the reference log-probs come from. SHORT_PROMPT: the frozen original model on
  the short prompt, precomputed in the records (`longpo reference`); LONG_PROMPT: a frozen copy of the
  initial policy on the long prompt, run every step; NO_REFERENCE: none.
- `rejected`: how many rejected answers per turn it uses, (least, most); most None: any number M. The
  trainer refuses data outside the range at load (a mode without a preference term reads none).
- `per_answer`: True: M rejected answers are M pairs (record, j) sharing the chosen answer, each a term
  of the preference mean (and of its metrics); False: one term per record over all M (LOGO's average).
- `defaults`: beta, lam, nll_weight, nll_mode and margin when the config leaves them unset.
- `metrics`: the step metrics it reports besides loss, nll and the counts.
- `losses(policy, reference, beta, margin)`: the per-pair preference losses and detached rewards
  (`longpo.train.loss.PreferenceOutput`) from summed log-probs and their token counts; None for a
  mode without a preference term. A pure function: it imports torch itself, when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SHORT_PROMPT = "short prompt, precomputed in the records"
LONG_PROMPT = "long prompt, a frozen copy of the initial policy"
NO_REFERENCE = "none"

REWARD_METRICS = ("pref_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")


def dpo_losses(policy: Any, reference: Any, beta: float, margin: float) -> Any:
    """The DPO term against whichever reference the mode declares (longpo: short prompt; dpo: long prompt):
    mean_j -log sigmoid( beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l^j) - log ref(y_l^j))) )."""
    from longpo.train.loss import preference_losses

    return preference_losses(policy, reference, beta)


@dataclass(frozen=True)
class Defaults:
    beta: float  # temperature of the preference term
    lam: float  # weight of the preference term (a pair mean)
    nll_weight: float  # weight of the NLL term (a token mean)
    nll_mode: str  # tokens of the chosen long sequence in the NLL: full, responses, off
    margin: float = 0.0  # target reward margin gamma, subtracted after beta (SimPO / LOGO)


@dataclass(frozen=True)
class LossMode:
    name: str
    summary: str  # one line: --help and the docs' table
    formula: str  # the per-pair loss, as the docs print it
    reference: str  # SHORT_PROMPT, LONG_PROMPT or NO_REFERENCE
    rejected: tuple[int, int | None]  # (least, most) rejected answers per turn; most None: any M
    defaults: Defaults
    losses: Callable[..., Any] | None  # (policy, reference, beta, margin) -> PreferenceOutput; None: NLL only
    metrics: tuple[str, ...] = REWARD_METRICS
    per_answer: bool = True  # M rejected answers: M pairs (record, j) in the preference mean; False: one per record
    source: str = ""  # paper and official code it was written from; where it differs on purpose

    @property
    def preference(self) -> bool:
        """Whether the mode has a preference term (rewards, lam) at all."""
        return self.losses is not None

    def refuse_rejected(self, m: int, where: str) -> str | None:
        """Why data with M rejected answers per turn (first at `where`) cannot train this mode; None: it can."""
        least, most = self.rejected
        if not self.preference or (least <= m and (most is None or m <= most)):
            return None
        wanted = f"{least}..{most}" if most is not None else f"at least {least}"
        return (f"{where}: records with {m} rejected answer(s) per turn, loss={self.name} takes {wanted}; "
                f"regenerate with num_rejected in that range, or choose a loss mode that takes {m}")
