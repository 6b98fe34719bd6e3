"""Weight adoption: the HF engine's model uses a full snapshot's arrays as its tensors (no copy),
bit-exact, and never writes into them (in-process and through Ray's object store)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from actors.engines import HFEngine
from actors.records import Sampling
from actors.rollout import RolloutWorker
from learner.weights import adopt_snapshot, apply_snapshot, snapshot_from_model
from tests.actors.test_engines import forward_logprobs, perturbed

IDS = [[1, 5, 9, 42, 7, 3, 11, 2]]


def logits(model, ids=IDS) -> torch.Tensor:
    """One thread, so that the same weights give the same bits in any process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(torch.tensor(ids)).logits
    finally:
        torch.set_num_threads(threads)


def tied_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      pad_token_id=0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def assert_adopted(model, snap) -> None:
    """Every state-dict tensor of `model` is the snapshot's array itself (no copy)."""
    for k, t in model.state_dict().items():
        assert t.data_ptr() == pointer(snap.tensors[k]), k


def copies(snap) -> dict[str, np.ndarray]:
    return {k: a.copy() for k, a in snap.tensors.items()}


def assert_unchanged(snap, before: dict[str, np.ndarray]) -> None:
    for k, a in snap.tensors.items():
        assert np.array_equal(a, before[k]), k
    snap.verify()


def test_adopt_is_bit_exact_without_a_copy_and_keeps_tied_weights():
    learner = tied_llama(0)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    snap = snapshot_from_model(learner, 1)
    for a in snap.tensors.values():
        a.flags.writeable = False  # what a reader gets from Ray's object store
    model = tied_llama(1)
    assert not torch.equal(logits(model), logits(learner))
    adopt_snapshot(model, snap, verify=True)
    assert torch.equal(logits(model), logits(learner))
    assert_adopted(model, snap)
    # tied weights: each name is its own snapshot array, with the learner's values
    head, emb = model.lm_head.weight, model.model.embed_tokens.weight
    assert torch.equal(head, learner.lm_head.weight) and torch.equal(emb, head)
    assert not any(p.requires_grad for p in model.parameters())


def test_engine_adopts_full_snapshots_and_samples_with_them(micro_world):
    engine = HFEngine(micro_world.sft_dirs[0], seed=3)
    target = perturbed(micro_world.sft_dirs[0])
    snap = snapshot_from_model(target, version=1)
    before = copies(snap)
    engine.load_weights(snap)
    assert_adopted(engine.model, snap)
    assert torch.equal(logits(engine.model), logits(target))
    ps = list(enumerate(micro_world.train_prompts[:4]))
    for s in engine.generate(ps, Sampling(max_new_tokens=10), version=1, worker_id="w"):
        torch.testing.assert_close(torch.tensor(s.logprobs), forward_logprobs(target, s),
                                   atol=1e-4, rtol=1e-4)
    assert_unchanged(snap, before)


def test_lora_after_a_full_adoption_merges_without_writing_the_snapshot(micro_world):
    engine = HFEngine(micro_world.sft_dirs[0], seed=3)
    base = perturbed(micro_world.sft_dirs[0])
    full = snapshot_from_model(base, version=1)
    before = copies(full)
    engine.load_weights(full)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    for version in (2, 3):  # two adapter versions on the same base
        with torch.no_grad():  # a trained-looking adapter (B is zero at init)
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        engine.load_weights(snapshot_from_model(peft_model, version, kind="lora"))
        merged = AutoModelForCausalLM.from_pretrained(micro_world.sft_dirs[0]).eval()
        apply_snapshot(merged, snapshot_from_model(peft_model, version, kind="full"))
        assert torch.equal(logits(engine.model), logits(merged))
        torch.testing.assert_close(logits(engine.model), logits(peft_model), atol=1e-4,
                                   rtol=1e-4)
        assert_unchanged(full, before)


def test_adopt_refuses_bad_input_and_leaves_the_model_alone():
    model = tied_llama(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    snap = snapshot_from_model(tied_llama(1), 1)
    lora = snapshot_from_model(get_peft_model(tied_llama(1), LoraConfig(r=2)), 2, kind="lora")
    with pytest.raises(ValueError, match="apply_snapshot"):
        adopt_snapshot(model, lora)
    with pytest.raises(ValueError, match="apply_snapshot"):
        adopt_snapshot(get_peft_model(tied_llama(2), LoraConfig(r=2)), snap)
    tensors = dict(snap.tensors)
    del tensors["model.norm.weight"]
    with pytest.raises(KeyError, match=r"missing \['model.norm.weight'\]"):
        adopt_snapshot(model, dataclasses.replace(snap, tensors=tensors))
    tensors = {**snap.tensors, "model.norm.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="'model.norm.weight' is \\(3,\\)"):
        adopt_snapshot(model, dataclasses.replace(snap, tensors=tensors))
    bf16 = snapshot_from_model(tied_llama(1).to(torch.bfloat16), 1)
    with pytest.raises(ValueError, match="torch.bfloat16 cpu in the snapshot"):
        adopt_snapshot(model, bf16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


class LogitsWorker(RolloutWorker):
    def logits(self, ids) -> torch.Tensor:
        return logits(self.engine.model, ids)


def test_ray_worker_adopts_each_version_and_never_writes_the_object_store(ray_session,
                                                                           micro_world):
    ray = ray_session
    sft0 = str(micro_world.sft_dirs[0])
    worker = ray.remote(LogitsWorker).options(num_cpus=1).remote(
        "w0", sft0, "hf", Sampling(max_new_tokens=8), 0)
    v1, v2 = perturbed(sft0, seed=1), perturbed(sft0, seed=2)
    ref1 = ray.put(snapshot_from_model(v1, 1))
    before1 = copies(ray.get(ref1))
    assert ray.get(worker.set_weights.remote(1, ref1)) == 1
    got1 = ray.get(worker.logits.remote(IDS))
    assert torch.equal(got1, logits(v1))

    ref2 = ray.put(snapshot_from_model(v2, 2))
    before2 = copies(ray.get(ref2))
    assert torch.equal(ray.get(worker.logits.remote(IDS)), got1)  # still v1 until told
    assert ray.get(worker.set_weights.remote(2, ref2)) == 2
    got2 = ray.get(worker.logits.remote(IDS))
    assert torch.equal(got2, logits(v2)) and not torch.equal(got2, got1)
    assert len(ray.get(worker.generate.remote([(0, micro_world.train_prompts[0])]))) == 1

    # A LoRA version on top of v2 is merged into new tensors, not written into v2's arrays.
    peft_model = get_peft_model(v2, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    ref3 = ray.put(snapshot_from_model(peft_model, 3, kind="lora"))
    assert ray.get(worker.set_weights.remote(3, ref3)) == 3
    merged = AutoModelForCausalLM.from_pretrained(sft0).eval()
    apply_snapshot(merged, snapshot_from_model(peft_model, 3, kind="full"))
    assert torch.equal(ray.get(worker.logits.remote(IDS)), logits(merged))

    assert_unchanged(ray.get(ref1), before1)
    assert_unchanged(ray.get(ref2), before2)
    ray.kill(worker)
