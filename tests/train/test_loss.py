"""The loss against hand-computed values.

    L_pref = -log sigmoid( beta * ((pi_c - ref_c) - (pi_r - ref_r)) )
    L      = nll_weight * nll_sum / nll_tokens + lam * sum(L_pref) / num_pairs
"""

import math

import torch
from torch.testing import assert_close

from longpo.train.loss import PairLogps, combine_loss, preference_losses


def test_preference_loss_by_hand():
    policy = PairLogps(torch.tensor([-10.0, -3.0], dtype=torch.float64), torch.tensor([-12.0, -1.0], dtype=torch.float64))
    reference = PairLogps(torch.tensor([-11.0, -2.0], dtype=torch.float64), torch.tensor([-11.0, -2.0], dtype=torch.float64))
    out = preference_losses(policy, reference, beta=0.5)
    # pair 0: margin 0.5 * ((-10 + 11) - (-12 + 11)) = 1.0; pair 1: 0.5 * ((-3 + 2) - (-1 + 2)) = -1.0
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))], dtype=torch.float64)
    assert_close(out.losses, expected)
    assert_close(out.chosen_rewards, torch.tensor([0.5, -0.5], dtype=torch.float64))
    assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.5], dtype=torch.float64))
    assert not out.chosen_rewards.requires_grad


def test_ln2_when_policy_equals_reference():
    logps = PairLogps(torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    out = preference_losses(logps, PairLogps(logps.chosen.clone(), logps.rejected.clone()), beta=0.01)
    assert_close(out.losses, torch.full((5,), math.log(2.0), dtype=torch.float64))


def test_reference_gets_no_gradient_and_policy_gradient_is_exact():
    pc = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    ref = PairLogps(torch.tensor([-4.5], dtype=torch.float64, requires_grad=True), torch.tensor([-4.0], dtype=torch.float64))
    beta = 0.1
    preference_losses(PairLogps(pc, pr), ref, beta).losses.sum().backward()
    margin = beta * ((-4.0 + 4.5) - (-5.0 + 4.0))
    d = -beta * (1 - 1 / (1 + math.exp(-margin)))  # d/d pi_c of -log sigmoid(margin)
    assert_close(pc.grad, torch.tensor([d], dtype=torch.float64))
    assert_close(pr.grad, torch.tensor([-d], dtype=torch.float64))
    assert ref.chosen.grad is None


def test_combine_loss_divides_by_global_counts():
    nll_sum, pref_sum = torch.tensor(30.0), torch.tensor(2.0)
    assert_close(combine_loss(nll_sum, 10, pref_sum, 4, nll_weight=1.0, lam=0.5), torch.tensor(3.0 + 0.25))
    assert_close(combine_loss(nll_sum, 10, pref_sum, 4, nll_weight=0.0, lam=0.5), torch.tensor(0.25))
    assert_close(combine_loss(nll_sum, 0, pref_sum, 4, nll_weight=1.0, lam=0.0), torch.tensor(0.0))
    # Two micro-batches with global counts add up to the whole batch.
    whole = combine_loss(torch.tensor(7.0), 5, torch.tensor(3.0), 2, 1.0, 0.1)
    parts = combine_loss(torch.tensor(3.0), 5, torch.tensor(1.0), 2, 1.0, 0.1) + combine_loss(
        torch.tensor(4.0), 5, torch.tensor(2.0), 2, 1.0, 0.1)
    assert_close(whole, parts)
