"""A bf16 checkpoint trains: fp32 master weights, autocast compute, published back in bf16."""

from pathlib import Path

import pytest
import torch

from actors.learner import build_policy
from learner.settings import KLSettings, PPOSettings
from learner.shapes import build_model_dir, parameter_count
from learner.trainer import PPOTrainer
from tests.learner.test_trainer_tiny_llama import sample


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("qwen2") / "model", "test")


def _train(model_dir: Path, compute_dtype: torch.dtype, steps: int = 3):
    policy, _ = build_policy(model_dir, [], init="sft")
    assert policy.dtype == torch.bfloat16  # loaded in its stored dtype
    settings = PPOSettings(estimator="rloo", lr=1e-5, minibatch_size=8, ppo_epochs=1,
                           kl=KLSettings(coef=0.0))
    tr = PPOTrainer(policy, settings, pad_token_id=0, compute_dtype=compute_dtype)
    start = {k: v.detach().clone() for k, v in tr.policy.named_parameters()}
    for i in range(steps):
        batch = sample(tr, seed=i, b=8)
        batch.groups = torch.arange(8) // 2
        batch.scores = torch.randn(8, generator=torch.Generator().manual_seed(i))
        assert tr.step(batch)["step/skipped"] == 0
    return tr, {k: v.detach() - start[k] for k, v in tr.policy.named_parameters()}


def test_shape_parameter_count_matches_the_built_model(bf16_dir):
    policy, _ = build_policy(bf16_dir, [], init="sft")
    assert sum(p.numel() for p in policy.parameters()) == parameter_count("test")
    assert policy.config.tie_word_embeddings and policy.config.num_key_value_heads == 2


def test_bf16_checkpoint_every_weight_moves_at_lr_1e_5(bf16_dir):
    tr, delta = _train(bf16_dir, torch.float32)
    assert all(p.dtype == torch.float32 for p in tr.policy.parameters())  # master weights
    for name, d in delta.items():  # layer norms included (at 1.0, bf16's spacing is 2^-7)
        assert (d != 0).float().mean() > 0.99, f"{name} did not move"
    opt = tr.policy_opt.state_dict()["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.values())
    snap = tr.snapshot()  # published (and exported) in the checkpoint's dtype
    assert set(snap.torch_dtypes.values()) == {"bfloat16"}
    assert snap.tensor("model.norm.weight").dtype == torch.bfloat16


def test_bf16_autocast_matches_the_fp32_reference(bf16_dir):
    """The same batches with bf16 compute: the update is the fp32 one within 10% (relative,
    over all weights); per tensor the directions agree (cosine > 0.95) except the key biases,
    whose gradient is zero up to rounding (softmax ignores a shift common to every key)."""
    _, ref = _train(bf16_dir, torch.float32)
    _, bf = _train(bf16_dir, torch.bfloat16)
    flat_ref = torch.cat([d.flatten() for d in ref.values()])
    flat_bf = torch.cat([d.flatten() for d in bf.values()])
    assert (flat_bf - flat_ref).norm() / flat_ref.norm() < 0.1
    for name in ref:
        if "k_proj.bias" not in name:
            cos = torch.nn.functional.cosine_similarity(ref[name].flatten(),
                                                        bf[name].flatten(), dim=0)
            assert cos > 0.95, (name, float(cos))
