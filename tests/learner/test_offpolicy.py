"""Behaviour-policy corrections (learner/ppo.py behaviour_weights, policy_loss weights), on
hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from learner.ppo import behaviour_weights, policy_loss

# pi_prox / mu per token: 0.5, 1.0, 3.0 | 2.0, (padding)
PROX = torch.log(torch.tensor([[0.5, 0.4, 0.6], [0.2, 0.7, 0.7]]))
BEHAV = torch.log(torch.tensor([[1.0, 0.4, 0.2], [0.1, 0.7, 0.7]]))
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("mode,expected", [
    ("none", [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
    ("tis", [[0.5, 1.0, 2.0], [2.0, 0.0, 0.0]]),  # min(w, 2)
    ("decoupled", [[0.5, 1.0, 0.0], [2.0, 0.0, 0.0]]),  # w > 2 dropped; w == 2 kept
])
def test_weights_by_mode(mode, expected):
    w, stats = behaviour_weights(PROX, BEHAV, MASK, mode, cap=2.0)
    torch.testing.assert_close(w, torch.tensor(expected), atol=1e-6, rtol=0)
    assert stats["ratio_mean"].item() == pytest.approx((0.5 + 1 + 3 + 2) / 4)
    assert stats["truncated_frac"].item() == pytest.approx(1 / 4)
    k3 = [(x - 1) - math.log(x) for x in (0.5, 1.0, 3.0, 2.0)]
    assert stats["kl_behaviour"].item() == pytest.approx(sum(k3) / 4)


def test_weights_carry_no_gradient():
    prox = PROX.clone().requires_grad_(True)
    w, _ = behaviour_weights(prox, BEHAV, MASK, "tis", cap=2.0)
    assert not w.requires_grad


def test_unknown_mode():
    with pytest.raises(ValueError, match="not one of none, tis, decoupled"):
        behaviour_weights(PROX, BEHAV, MASK, "vtrace", cap=2.0)


def test_policy_loss_weights_each_token():
    # ratio 1 everywhere (logp == old): per-token loss = -A; weighted token mean
    logp = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -2.0, 4.0]])
    mask = torch.ones(1, 3)
    weights = torch.tensor([[0.5, 1.0, 0.0]])
    loss, _ = policy_loss(logp, logp, adv, mask, 0.2, weights=weights)
    assert loss.item() == pytest.approx((-0.5 * 1 + 2.0 * 1 + 0) / 3)
    plain, _ = policy_loss(logp, logp, adv, mask, 0.2)
    assert plain.item() == pytest.approx((-1 + 2 - 4) / 3)
