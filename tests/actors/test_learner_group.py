"""A learner group on real Ray actors (gloo, CPU): world size 2 makes the update world size 1
makes, on a bf16 Qwen2-shaped checkpoint, for a critic-free estimator and for PPO+GAE."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.learner import LearnerActor
from actors.records import Sample, ScoredSample
from learner.settings import KLSettings, PPOSettings
from learner.shapes import build_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("group") / "qwen2", "test")


def samples(n: int = 8) -> list[ScoredSample]:
    """n scored samples in groups of 2 (ragged prompts and responses, behaviour log-probs)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        prompt = torch.randint(1, 500, (3 + i % 3,), generator=g).tolist()
        response = torch.randint(1, 500, (4 + i % 4,), generator=g).tolist()
        logprobs = (-5 - torch.rand(len(response), generator=g)).tolist()
        reward = float(torch.randn((), generator=g))
        out.append(ScoredSample(Sample(i // 2, prompt, response, logprobs, 0, "w", index=i % 2),
                                (reward,), reward))
    return out


def learner(model_dir, settings, world_size):
    return ray.remote(LearnerActor).options(num_cpus=0.5).remote(
        settings, str(model_dir), [], pad_token_id=0, world_size=world_size,
        rank_options={"num_cpus": 0.5}, collective_timeout_s=120)


@pytest.mark.parametrize("estimator", ["rloo", "gae"])
def test_world_size_2_makes_the_update_of_world_size_1(ray_session, model_dir, estimator):
    settings = PPOSettings(estimator=estimator, lr=1e-3, minibatch_size=4, ppo_epochs=2,
                           kl=KLSettings(coef=0.1), off_policy="tis")
    results = {}
    for world in (1, 2):
        actor = learner(model_dir, settings, world)
        stats = [ray.get(actor.step.remote(samples()))[0] for _ in range(2)]
        version, ref, _ = ray.get(actor.publish.remote())
        snap = ray.get(ref)
        info = ray.get(actor.info.remote())
        assert (version, info["world_size"], len(ray.get(actor.rank_infos.remote()))) == (
            2, world, world)
        results[world] = stats, {k: snap.tensor(k).float() for k in snap.tensors}, snap
        ray.kill(actor)
    (stats1, w1, _), (stats2, w2, snap2) = results[1], results[2]
    assert set(snap2.torch_dtypes.values()) == {"bfloat16"}  # published as stored
    for s1, s2 in zip(stats1, stats2):
        for key in ("loss/policy", "loss/total", "kl/ref", "grad/norm", "policy/clipfrac",
                    *(("loss/value",) if estimator == "gae" else ())):
            assert s2.values[key] == pytest.approx(s1.values[key], rel=1e-4, abs=1e-6), key
    # fp32 master weights agree to ~1e-5 (the ranks sum in another order); published in
    # bf16, nearly every weight rounds to the same value
    same = sum(int((w1[k] == w2[k]).sum()) for k in w1) / sum(w.numel() for w in w1.values())
    assert same > 0.99
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 2e-2  # one bf16 step at most
