"""The memory plan's exact terms equal the bytes the trainer really allocates."""

import torch

from learner.memory import ModelShape, plan_learner
from learner.settings import ElasticResetSettings, KLSettings, LoraSettings, PPOSettings
from learner.shapes import build_model_dir, parameter_count
from learner.trainer import PPOTrainer
from tests.learner.test_trainer_tiny_llama import sample


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_plan_by_hand():
    shape = ModelShape(params=1000, trunk_params=800, hidden=10, layers=2, vocab=50)
    plan = plan_learner(shape, world_size=2, critic=True, ema=True, tokens=3,
                        compute_bytes=2)
    assert plan["policy master weights"] == 2000 and plan["gradients"] == 2000
    assert plan["Adam moments"] == 4000 and plan["initial weights"] == plan["EMA"] == 2000
    assert plan["critic (weights, gradients, Adam, initial)"] == 20 * 811 // 2
    assert plan["activations (estimate)"] == 3 * (2 * 10 * 2 * 24 + 50 * 12)
    lora = plan_learner(shape, lora_params=40, stored_bytes=2)
    assert lora["policy master weights"] == 2 * 1000 + 4 * 40 and lora["Adam moments"] == 320


def test_plan_matches_the_trainers_tensors(tmp_path):
    from services.plan import model_shape

    model_dir = build_model_dir(tmp_path / "m", "test")
    shape, _ = model_shape(model_dir)
    assert shape.params == parameter_count("test")
    from actors.learner import build_policy

    settings = PPOSettings(minibatch_size=8, elastic_reset=ElasticResetSettings(enabled=True))
    tr = PPOTrainer(build_policy(model_dir, [], init="sft")[0], settings, pad_token_id=0)
    tr.step(sample(tr, seed=0, b=8))
    plan = plan_learner(shape, critic=True, ema=True)
    policy = list(tr.policy.parameters())
    assert plan["policy master weights"] == nbytes(policy)  # fp32, from a bf16 checkpoint
    moments = [v for s in tr.policy_opt.state.values() for k, v in s.items() if k != "step"]
    assert plan["Adam moments"] == nbytes(moments)
    assert plan["gradients"] == nbytes(policy)  # one fp32 gradient per parameter
    assert plan["initial weights"] == nbytes(tr.init.values())
    assert plan["EMA"] == nbytes(tr.elastic.ema.values())
    critic = list(tr.critic.parameters())
    critic_moments = [v for s in tr.critic_opt.state.values() for k, v in s.items()
                      if k != "step"]
    assert plan["critic (weights, gradients, Adam, initial)"] == (
        3 * nbytes(critic) + nbytes(critic_moments))


def test_lora_plan_counts_the_adapters(tmp_path):
    from actors.learner import build_policy
    from services.plan import model_shape

    model_dir = build_model_dir(tmp_path / "m", "test")
    lora = LoraSettings(rank=4, alpha=8)
    shape, adapters = model_shape(model_dir, lora)
    tr = PPOTrainer(build_policy(model_dir, [], init="sft")[0],
                    PPOSettings(estimator="rloo", kl=KLSettings(coef=0.0)), pad_token_id=0,
                    lora=lora)
    trainable = [p for p in tr.policy.parameters() if p.requires_grad]
    assert adapters == sum(p.numel() for p in trainable)
    assert all(p.dtype == torch.float32 for p in trainable)  # fp32 adapters on a bf16 base
    frozen = [p for p in tr.policy.parameters() if not p.requires_grad]
    plan = plan_learner(shape, lora_params=adapters, stored_bytes=2)
    assert plan["policy master weights"] == nbytes(frozen) + nbytes(trainable)


def test_gradient_checkpointing_makes_the_same_update(tmp_path):
    from actors.learner import build_policy

    model_dir = build_model_dir(tmp_path / "m", "test")
    weights = []
    for ckpt in (False, True):
        tr = PPOTrainer(build_policy(model_dir, [], init="sft")[0], PPOSettings(minibatch_size=8),
                        pad_token_id=0, gradient_checkpointing=ckpt)
        assert tr.policy.is_gradient_checkpointing == ckpt
        assert tr.critic.trunk.is_gradient_checkpointing == ckpt
        tr.step(sample(tr, seed=0, b=8))
        weights.append({k: v.detach() for k, v in tr.policy.named_parameters()})
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=0, atol=1e-6)
