"""The actor classes in-process (plain Python objects, as the driver's `ray.remote` wraps
them) on the micro world, and the RewardPool on real Ray actors with a member that returns
NaN."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.learner import LearnerActor
from actors.records import Sample, Sampling, ScoredSample
from actors.reward import RewardMember, RewardPool, combine_scores
from actors.rollout import RolloutWorker
from learner.settings import PPOSettings
from learner.weights import snapshot_from_model

SAMPLING = Sampling(max_new_tokens=6)
PROMPTS = [(0, "The movie"), (1, "I bought a lamp and"), (2, "My sister")]


def test_rollout_worker_needs_weights_then_samples_with_their_version(micro_world):
    worker = RolloutWorker("w0", micro_world.sft_dirs[0], "hf", SAMPLING, seed=0)
    with pytest.raises(RuntimeError, match="before any weights"):
        worker.generate(PROMPTS)
    model = AutoModelForCausalLM.from_pretrained(micro_world.sft_dirs[1], use_safetensors=True)
    assert worker.set_weights(7, snapshot_from_model(model, 7)) == 7
    samples = worker.generate(PROMPTS)
    assert [s.prompt_id for s in samples] == [0, 1, 2]
    for s in samples:
        assert s.policy_version == 7 and s.worker_id == "w0"
        assert 1 <= len(s.response_tokens) == len(s.logprobs) <= 6
        assert all(lp <= 0 for lp in s.logprobs)
    assert worker.generate(PROMPTS) == samples  # seeded by prompt id: the same batch again
    with pytest.raises(ValueError, match="expected 8"):
        worker.set_weights(8, snapshot_from_model(model, 9))
    assert worker.info()["pid"] == os.getpid()


def test_reward_member_and_combine(micro_world):
    worker = RolloutWorker("w0", micro_world.sft_dirs[0], "hf", SAMPLING, seed=0)
    model = AutoModelForCausalLM.from_pretrained(micro_world.sft_dirs[0], use_safetensors=True)
    worker.set_weights(0, snapshot_from_model(model, 0))
    samples = worker.generate(PROMPTS)
    a, b = (RewardMember(k, micro_world.rm_dirs[k], 16) for k in (0, 1))
    sa, sb = a.score(samples), b.score(samples)
    assert len(sa) == 3 and all(math.isfinite(x) for x in sa + sb)
    out = combine_scores(samples, sa, sb, aggregation="min",
                         gold="tasks.gold:gold_score")
    for s, x, y in zip(out, sa, sb):
        assert s.member_scores == (x, y) and s.reward == min(x, y) and s.gold is not None
    assert a.info()["scored"] == 3


def test_learner_actor_steps_publishes_once_and_keeps_one_version(ray_session, micro_world,
                                                                  tmp_path):
    dirs = [str(d) for d in micro_world.sft_dirs]
    learner = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    version, ref, nbytes = learner.publish()
    assert version == 0 and nbytes > 0 and ray_session.get(ref).version == 0
    worker = RolloutWorker("w0", dirs[0], "hf", SAMPLING, seed=0)
    worker.set_weights(0, ray_session.get(ref))
    samples = worker.generate([(i, f"The movie {i}") for i in range(8)])
    batch = [ScoredSample(s, (float(i),), float(i)) for i, s in enumerate(samples)]
    stats, snap_ref, _ = learner.step(batch)
    assert (stats.step, stats.policy_version, stats.skipped) == (1, 1, False)
    assert ray_session.get(snap_ref).version == 1
    assert learner.info()["version"] == 1 and learner.info()["puts"] == 2
    learner.save(str(tmp_path / "l"))
    again = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    assert again.load(str(tmp_path / "l")) == 1
    drift = learner.evaluate([[1, 5, 6, 7, 2], [1, 8, 9, 2]])
    assert drift["drift/ppl_policy"] > 1 and drift["drift/ppl_init"] > 1
    # held-out completions: the same draws at every call, the run's RNG left as it was
    rng = torch.get_rng_state()
    held_out = learner.sample([[1, 5, 6], [1, 7]], SAMPLING, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert learner.sample([[1, 5, 6], [1, 7]], SAMPLING, seed=3) == held_out
    assert len(held_out) == 2 and all(len(r) <= SAMPLING.max_new_tokens for r in held_out)
    fresh = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    assert fresh.kl_to_init([[1, 5, 6], [1, 7]], [[8, 9], []]) == [0.0, 0.0]  # policy = init
    kl = learner.kl_to_init([[1, 5, 6], [1, 7]], [[8, 9], []])
    assert kl[0] != 0.0 and kl[1] == 0.0  # one step away from init; no tokens, no KL


class FlakyMember:
    """A reward member that returns NaN for prompt id 1 (a broken model's output)."""

    def score(self, samples: list[Sample], labels=None) -> list[float]:
        return [math.nan if s.prompt_id == 1 else 0.5 for s in samples]

    def info(self) -> dict:
        return {"pid": os.getpid()}


def test_reward_pool_quarantines_a_nan_member(ray_session, micro_world):
    import ray

    def make(k: int, _name: str):
        cls = RewardMember if k == 0 else FlakyMember
        args = (0, str(micro_world.rm_dirs[0]), 16) if k == 0 else ()
        return ray.remote(cls).options(num_cpus=0).remote(*args)

    failures = []
    pool = RewardPool(2, make, {"aggregation": "mean"}, lambda m, e: failures.append(m.name))
    pool.scale_to(1)
    pool.wait_ready()
    samples = [Sample(i, [1, 5], [6, 2], [-1.0, -0.5], 0, "w", f"p{i}", "good fun")
               for i in range(3)]
    pool.submit("batch-a", ray.put(samples))
    assert pool.in_flight() == ["batch-a"]
    (ref,) = list(pool.jobs)
    ray.wait([ref])
    scored = pool.collect(ref)
    assert scored.key == "batch-a" and not failures and pool.in_flight() == []
    assert [s.sample.prompt_id for s in scored.samples] == [0, 2]
    assert [s.sample.prompt_id for s in scored.quarantined] == [1]
    assert all(s.member_scores[1] == 0.5 for s in scored.samples)
    pool.shutdown()


def test_reward_pool_requeues_a_batch_when_a_member_dies(ray_session, micro_world):
    import ray

    def make(k: int, _name: str):
        return ray.remote(FlakyMember).options(num_cpus=0, max_restarts=0).remote()

    failures = []
    pool = RewardPool(2, make, {"aggregation": "mean"}, lambda m, e: failures.append(m.name))
    pool.scale_to(1)
    pool.wait_ready()
    ray.kill(pool.groups[1].active()[0].handle)
    samples = [Sample(0, [1], [2], [-1.0], 0, "w")]
    pool.submit("b", ray.put(samples))
    (ref,) = list(pool.jobs)
    ray.wait([ref])
    assert pool.collect(ref) is None
    assert failures == ["reward1-0"] and pool.in_flight() == ["b"]  # queued again
    pool.shutdown()


def test_the_learners_held_out_sample_is_the_hf_engines_sample(ray_session, micro_world):
    """One generation path: with the same weights and seed, `LearnerActor.sample` draws the
    tokens the HF rollout engine draws (the stop token kept), and leaves the learner's RNG as
    it was."""
    from actors.engines import HFEngine

    dirs = [str(d) for d in micro_world.sft_dirs]
    learner = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    engine = HFEngine(dirs[0], seed=5)  # seeds each batch with seed + its first prompt id
    sampling = Sampling(max_new_tokens=12)
    samples = engine.generate([(0, "The movie"), (1, "I bought a lamp and")], sampling,
                              version=0, worker_id="w")
    before = torch.random.get_rng_state()
    drawn = learner.sample([s.prompt_tokens for s in samples], sampling, seed=5)
    assert drawn == [s.response_tokens for s in samples]
    assert any(s.finished for s in samples)  # a stop token was drawn and kept
    assert torch.equal(torch.random.get_rng_state(), before)
