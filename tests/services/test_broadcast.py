"""Weights reach N rollout workers from ONE ray.put by the learner, and they sample with them."""

from __future__ import annotations

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.learner import LearnerActor
from actors.records import Sampling, ScoredSample
from actors.rollout import RolloutWorker
from learner.weights import apply_snapshot
from services.config import load_config


def _logprobs(model, sample) -> torch.Tensor:
    ids = torch.tensor([sample.prompt_tokens + sample.response_tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(sample.prompt_tokens) - 1 : -1]
    lp = torch.log_softmax(logits.float(), -1)
    return lp.gather(-1, torch.tensor(sample.response_tokens)[:, None])[:, 0]


def test_one_put_many_readers_sample_with_those_weights(ray_session, micro_world):
    cfg = load_config("deploy/configs/micro.yaml", ["learner.lr=1e-3"])
    sft0 = str(micro_world.sft_dirs[0])
    pad = AutoTokenizer.from_pretrained(micro_world.tokenizer_dir).pad_token_id
    dirs = [str(d) for d in micro_world.sft_dirs]
    learner = ray.remote(LearnerActor).options(num_cpus=0.5).remote(
        cfg.learner_settings(), dirs[0], dirs, pad_token_id=pad)
    workers = [ray.remote(RolloutWorker).options(num_cpus=0.5).remote(
        f"w{i}", sft0, "hf", Sampling(max_new_tokens=8), 0) for i in range(2)]
    v0, ref0, _ = ray.get(learner.publish.remote())
    assert ray.get([w.set_weights.remote(v0, ref0) for w in workers]) == [0, 0]

    # One learner step on arbitrary rewards so that version 1 differs from the files on disk.
    prompts = list(enumerate(micro_world.train_prompts[:16]))
    samples = ray.get(workers[0].generate.remote(prompts))
    scored = [ScoredSample(s, (float(len(s.response_tokens)),), float(len(s.response_tokens)))
              for s in samples]
    stats, ref1, nbytes = ray.get(learner.step.remote(scored))
    assert stats.policy_version == 1 and nbytes > 0
    assert ray.get([w.set_weights.remote(1, ref1) for w in workers]) == [1, 1]
    assert ray.get(learner.info.remote())["puts"] == 2  # v0 and v1: one put per version
    # The learner publishes views of its live parameters; the put is the copy. Version 0 in the
    # object store must be untouched by the optimiser step that made version 1.
    old, new = ray.get(ref0), ray.get(ref1)
    old.verify()
    new.verify()
    assert any(not (old.tensors[k] == new.tensors[k]).all() for k in old.tensors)

    snapshot = ray.get(ref1)
    model = AutoModelForCausalLM.from_pretrained(sft0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_snapshot(model, snapshot, verify=True)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    original = AutoModelForCausalLM.from_pretrained(sft0)
    for w in workers:
        for s in ray.get(w.generate.remote(prompts[:4])):
            assert s.policy_version == 1
            got = torch.tensor(s.logprobs)
            torch.testing.assert_close(got, _logprobs(model, s), atol=1e-4, rtol=1e-4)
            if len(s.response_tokens) > 2:
                assert not torch.allclose(got, _logprobs(original, s), atol=1e-4)
    for actor in (learner, *workers):
        ray.kill(actor)
