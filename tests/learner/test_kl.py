"""KL estimators (exact values, sign, Monte Carlo unbiasedness) and KL controllers."""

import math

import pytest
import torch
from torch.testing import assert_close

from learner.kl import (
    AdaptiveKLController,
    FixedKLController,
    get_kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_per_token,
    make_kl_controller,
)


def test_estimators_exact_values():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    logp_ref = torch.log(torch.tensor([[0.25, 0.4]]))
    r = torch.tensor([[0.5, 2.0]])  # pi_ref / pi
    assert_close(kl_k1(logp, logp_ref), -torch.log(r))
    assert_close(kl_k2(logp, logp_ref), 0.5 * torch.log(r) ** 2)
    assert_close(kl_k3(logp, logp_ref), (r - 1) - torch.log(r))
    assert_close(kl_per_token(logp, logp_ref, "k3"), (r - 1) - torch.log(r))
    # k3 >= 0 everywhere, 0 iff equal
    x = torch.randn(1000, dtype=torch.float64) * 3
    y = torch.randn(1000, dtype=torch.float64) * 3
    assert (kl_k3(x, y) >= 0).all() and (kl_k2(x, y) >= 0).all()
    assert kl_k3(x, x).abs().max() == 0


def test_unknown_estimator_names_valid_ones():
    with pytest.raises(ValueError, match="k4.*valid: k1, k2, k3"):
        get_kl_estimator("k4")


def test_k1_k3_unbiased_by_monte_carlo():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)  # pi
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)  # pi_ref
    exact = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    for est in (kl_k1, kl_k3):
        vals = est(logp, logq)
        se = float(vals.std()) / math.sqrt(len(x))
        assert abs(float(vals.mean()) - exact) < 4 * se, (est.__name__, float(vals.mean()), exact)
    # the inverted-ratio k3 (the common bug: r = pi / pi_ref) is biased
    inverted = kl_k3(logq, logp)
    se = float(inverted.std()) / math.sqrt(len(x))
    assert abs(float(inverted.mean()) - exact) > 10 * se


def test_fixed_controller():
    c = FixedKLController(0.1)
    c.update(100.0, 64)
    assert c.value == 0.1
    c2 = FixedKLController(0.5)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.1


def test_adaptive_controller_ziegler_update_and_state():
    c = AdaptiveKLController(0.2, target=6.0, horizon=1000)
    c.update(9.0, 100)  # e = clip(9/6 - 1, -.2, .2) = .2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 1000))
    v = c.value
    c.update(5.4, 50)  # e = -0.1
    assert c.value == pytest.approx(v * (1 - 0.1 * 50 / 1000))
    v = c.value
    c.update(0.0, 10)  # e clipped to -0.2
    assert c.value == pytest.approx(v * (1 - 0.2 * 10 / 1000))
    d = AdaptiveKLController(1.0, target=1.0, horizon=1)
    d.load_state_dict(c.state_dict())
    assert (d.value, d.target, d.horizon) == (c.value, 6.0, 1000)
    d.update(7.0, 3)
    c.update(7.0, 3)
    assert d.value == c.value
    assert isinstance(make_kl_controller(0.1, True, 6.0, 10), AdaptiveKLController)
    assert isinstance(make_kl_controller(0.1, False, 6.0, 10), FixedKLController)
