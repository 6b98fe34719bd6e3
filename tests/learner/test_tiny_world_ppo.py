"""examples/ppo_in_process.py on the micro tiny world: 10 PPO steps raise the proxy reward.

Marked slow: building the micro world takes minutes on 2 cores the first time (then it is
cached under task.cache_dir), and 10 steps take about a minute.
"""

import math

import pytest
import torch

pytestmark = pytest.mark.slow


def test_in_process_ppo_raises_proxy_reward():
    from examples.ppo_in_process import main

    history, trainer = main(steps=10, verbose=False,
                            overrides=["learner.lr=1e-3", "learner.kl.coef=0.01"])
    init = trainer.init
    rewards = [h["reward/score_mean"] for h in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3, rewards
    for h in history:
        assert h["step/skipped"] == 0
        assert all(math.isfinite(h[k]) for k in ("loss/policy", "loss/value", "kl/ref"))
    live = {n: p for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert set(live) == set(init)
    unchanged = [n for n, p in live.items() if torch.equal(p.detach(), init[n])]
    assert not unchanged, unchanged
    critic = {n: p for n, p in trainer.critic.named_parameters() if p.requires_grad}
    unchanged = [n for n, p in critic.items() if torch.equal(p.detach(), trainer.critic_init[n])]
    assert not unchanged, unchanged
