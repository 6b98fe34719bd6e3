"""Exact PPO math on small hand-computed tensors (no model)."""

import math

import pytest
import torch
from torch.testing import assert_close

from learner.ppo import (
    entropy_from_logits,
    gae,
    kl_penalised_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)

T = torch.tensor


def test_masked_mean_var_whiten():
    x = T([[1.0, 2.0, 99.0], [3.0, 4.0, 99.0]])
    m = T([[1, 1, 0], [1, 1, 0]])
    assert_close(masked_mean(x, m), T(2.5))
    assert_close(masked_mean(x, m, dim=1), T([1.5, 3.5]))
    # unbiased var of {1,2,3,4} = 5/3
    assert_close(masked_var(x, m), T(5.0 / 3.0))
    assert_close(masked_var(x, m, unbiased=False), T(1.25))
    w = masked_whiten(x, m, eps=0.0)
    sd = (5.0 / 3.0) ** 0.5
    assert_close(w, T([[-1.5 / sd, -0.5 / sd, 0.0], [0.5 / sd, 1.5 / sd, 0.0]]))
    assert_close(masked_mean(w, m), T(0.0), atol=1e-7, rtol=0)
    w2 = masked_whiten(x, m, shift_mean=False, eps=0.0)
    assert_close(w2, (w + 2.5) * m)  # only the scale changes
    assert_close(masked_mean(T([[1.0, 2.0]]), T([[0, 0]])), T(0.0))  # no NaN on empty rows


def test_kl_penalised_rewards_score_at_last_real_token():
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    m = T([[1, 1, 0], [1, 1, 1]])
    r = kl_penalised_rewards(T([1.0, 2.0]), kl, m, beta=0.5)
    assert_close(r, T([[-0.05, -0.1 + 1.0, 0.0], [-0.2, -0.25, -0.3 + 2.0]]))
    with pytest.raises(ValueError, match="no real token"):
        kl_penalised_rewards(T([1.0]), T([[0.0, 0.0]]), T([[0, 0]]), beta=0.1)


def test_gae_hand_computed_2x3_with_padding():
    rewards = T([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = T([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])  # 9.0 sits on padding: must be ignored
    mask = T([[1, 1, 1], [1, 1, 0]])
    g, lam = 0.9, 0.8
    # row 0: d2 = 1 - .3 = .7; d1 = 0 + .9*.3 - .2 = .07; d0 = 0 + .9*.2 - .1 = .08
    a2 = 0.7
    a1 = 0.07 + g * lam * a2
    a0 = 0.08 + g * lam * a1
    # row 1 (length 2): d1 = 2 - .5 = 1.5; d0 = .5 + .9*.5 - .4 = .55
    b1 = 1.5
    b0 = 0.55 + g * lam * b1
    adv, ret = gae(rewards, values, mask, gamma=g, lam=lam)
    assert_close(adv, T([[a0, a1, a2], [b0, b1, 0.0]]))
    assert_close(ret, T([[a0 + 0.1, a1 + 0.2, a2 + 0.3], [b0 + 0.4, b1 + 0.5, 0.0]]))


def _gae_reference(rewards, values, mask, gamma, lam):
    """Per-sequence python loop over the real tokens only."""
    b, t = rewards.shape
    adv = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        n = int(mask[i].sum())
        last = 0.0
        for j in reversed(range(n)):
            nv = float(values[i, j + 1]) if j + 1 < n else 0.0
            delta = float(rewards[i, j]) + gamma * nv - float(values[i, j])
            last = delta + gamma * lam * last
            adv[i, j] = last
    return adv, (adv + values.double()) * mask.double()


def test_gae_loop_vs_vectorised():
    g = torch.Generator().manual_seed(0)
    b, t = 6, 9
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = T([9, 1, 5, 3, 8, 2])
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    for gamma, lam in ((1.0, 0.95), (0.99, 1.0), (0.5, 0.0)):
        adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
        ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
        assert_close(adv, ref_adv, rtol=1e-12, atol=1e-12)
        assert_close(ret, ref_ret, rtol=1e-12, atol=1e-12)


def test_policy_loss_clipping_and_diagnostics():
    logp = torch.log(T([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1.0 against old logp 0
    old = torch.zeros(1, 3)
    adv = T([[1.0, 1.0, -2.0]])
    mask = T([[1, 1, 1]])
    loss, st = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # token0: max(-1.5, -1.2) = -1.2 (clipped); token1: max(-0.5, -0.8) = -0.5; token2: 2
    assert_close(loss, T((-1.2 - 0.5 + 2.0) / 3))
    assert_close(st["clipfrac"], T(1.0 / 3))
    k3 = [(1.5 - 1) - torch.log(T(1.5)), (0.5 - 1) - torch.log(T(0.5)), 0.0]
    assert_close(st["approx_kl"], T(sum(float(x) for x in k3) / 3))
    # padding does not count
    loss_p, _ = policy_loss(logp, old, adv, T([[1, 1, 0]]), clip_eps=0.2)
    assert_close(loss_p, T((-1.2 - 0.5) / 2))
    # gradient flows only through unclipped tokens
    lp = logp.clone().requires_grad_(True)
    policy_loss(lp, old, adv, mask, 0.2)[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] != 0


def test_value_loss_clipped_and_unclipped():
    v = T([[1.0, 0.0, 2.0]])
    v_old = T([[0.5, 0.1, 2.0]])
    ret = T([[0.0, 1.0, 3.0]])
    m = T([[1, 1, 1]])
    loss, st = value_loss(v, v_old, ret, m, value_clip=0.2)
    # token0: clip(1.0, .3, .7) = .7 -> max(1, .49) = 1; token1: clip(0, -.1, .3) = 0 -> 1 vs 1;
    # token2: 1 vs 1
    assert_close(loss, T(0.5 * (1.0 + 1.0 + 1.0) / 3))
    v2 = T([[0.0, 0.0, 2.0]])  # token0: (0-0)^2 = 0 vs clip(0, .3, .7)=.3 -> .09: clipped wins
    loss2, st2 = value_loss(v2, v_old, ret, m, value_clip=0.2)
    assert_close(loss2, T(0.5 * (0.09 + 1.0 + 1.0) / 3))
    assert_close(st2["clipfrac"], T(1.0 / 3))
    loss3, _ = value_loss(v2, v_old, ret, m, value_clip=None)
    assert_close(loss3, T(0.5 * (0.0 + 1.0 + 1.0) / 3))
    loss4, _ = value_loss(v2, v_old, ret, T([[1, 0, 0]]), value_clip=0.2)
    assert_close(loss4, T(0.5 * 0.09))


def test_entropy_and_logprobs_from_logits():
    logits = torch.log(T([[[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]]))
    h = entropy_from_logits(logits)
    assert_close(h, T([[1.5 * torch.log(T(2.0)).item(), 0.0]]), atol=1e-6, rtol=0)
    lp = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    assert_close(lp, torch.log(T([[0.25, 1.0]])))


def test_group_advantages_grpo_and_rloo_by_hand():
    from learner.ppo import group_advantages

    # group 7: returns 1, 2, 3 (mean 2, unbiased std 1); group 4: returns 0, 4 (mean 2, std 2.828)
    returns = torch.tensor([1.0, 0.0, 2.0, 4.0, 3.0])
    groups = torch.tensor([7, 4, 7, 4, 7])
    grpo = group_advantages(returns, groups, "grpo", eps=0.0)
    s = math.sqrt(8.0)
    torch.testing.assert_close(grpo, torch.tensor([-1.0, -2 / s, 0.0, 2 / s, 1.0]))
    rloo = group_advantages(returns, groups, "rloo")
    # 1 - (2+3)/2, 0 - 4, 2 - (1+3)/2, 4 - 0, 3 - (1+2)/2
    torch.testing.assert_close(rloo, torch.tensor([-1.5, -4.0, 0.0, 4.0, 1.5]))


def test_group_advantages_need_groups_of_two():
    from learner.ppo import group_advantages

    with pytest.raises(ValueError, match=">= 2 samples"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]), "rloo")
    with pytest.raises(ValueError, match="not one of grpo, rloo"):
        group_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), "ppo")
