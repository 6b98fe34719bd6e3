"""WeightSnapshot round trips (full and LoRA), checksum, and merge_lora vs peft."""

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from learner.weights import apply_snapshot, compute_checksum, merge_lora, snapshot_from_model


def _lora(model, seed=0):
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter (B is zero at init)
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


def _read_only(snap):
    for a in snap.tensors.values():
        a.flags.writeable = False  # what a reader gets from Ray's object store


def test_full_snapshot_round_trip_bit_exact(make_llama):
    src, dst = make_llama(0, tie_word_embeddings=True), make_llama(1, tie_word_embeddings=True)
    snap = snapshot_from_model(src, version=3)
    assert snap.kind == "full" and snap.version == 3 and snap.lora is None
    assert all(isinstance(a, np.ndarray) for a in snap.tensors.values())
    # tied weights appear under both names, each its own copy
    head, emb = snap.tensors["lm_head.weight"], snap.tensors["model.embed_tokens.weight"]
    assert np.array_equal(head, emb) and not np.shares_memory(head, emb)
    _read_only(snap)
    apply_snapshot(dst, snap, verify=True)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # the snapshot is a copy: training the source later does not change it
    with torch.no_grad():
        src.model.norm.weight.add_(1.0)
    snap.verify()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snapshot_without_copy_is_views_of_the_parameters(make_llama, dtype):
    model = make_llama(0).to(dtype)
    views = snapshot_from_model(model, 1, copy=False)
    copied = snapshot_from_model(model, 1)
    assert views.checksum == copied.checksum
    w = model.model.norm.weight
    with torch.no_grad():
        w.add_(1.0)  # training after the snapshot: the views see it, the copy does not
    assert torch.equal(torch.from_numpy(views.tensors["model.norm.weight"]).view(dtype), w)
    assert not torch.equal(torch.from_numpy(copied.tensors["model.norm.weight"]).view(dtype), w)
    copied.verify()
    with pytest.raises(ValueError, match="checksum mismatch"):
        views.verify()


def test_bf16_round_trip(make_llama):
    src = make_llama(0).to(torch.bfloat16)
    dst = make_llama(1).to(torch.bfloat16)
    snap = snapshot_from_model(src, 1)
    assert snap.torch_dtypes["model.norm.weight"] == "bfloat16"
    apply_snapshot(dst, snap, verify=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(),
                                                  dst.state_dict().values(), strict=True))


def test_checksum_detects_changes(make_llama):
    snap = snapshot_from_model(make_llama(0), 1)
    tensors = dict(snap.tensors)
    arr = tensors["model.norm.weight"].copy()
    arr[0] += 1
    tensors["model.norm.weight"] = arr
    assert compute_checksum(tensors) != snap.checksum
    bad = type(snap)(version=1, tensors=tensors, kind="full", checksum=snap.checksum)
    with pytest.raises(ValueError, match="checksum mismatch"):
        apply_snapshot(make_llama(1), bad, verify=True)
    with pytest.raises(KeyError, match="missing"):
        smaller = {k: v for k, v in snap.tensors.items() if k != "model.norm.weight"}
        apply_snapshot(make_llama(1), type(snap)(1, smaller, "full", compute_checksum(smaller)))


def test_lora_snapshot_round_trip_and_merge(make_llama):
    base = make_llama(0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    src = _lora(base, seed=1)
    snap = snapshot_from_model(src, version=5, kind="lora")
    assert snap.kind == "lora" and snap.lora["r"] == 4 and snap.lora["scaling"] == 2.0
    assert all(".lora_" in k for k in snap.tensors)  # only adapter bytes move
    assert snap.nbytes < sum(v.numel() * 4 for v in base_state.values()) / 10
    _read_only(snap)

    dst = _lora(make_llama(0), seed=2)
    apply_snapshot(dst, snap, verify=True)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    merged = merge_lora(base_state, snap)
    reference = copy.deepcopy(src).merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for k in reference:
        assert torch.equal(merged[k], reference[k]), k
    # a full snapshot of a peft model is the merged HF-named weights
    full = snapshot_from_model(src, 5, kind="full")
    plain = make_llama(3)
    apply_snapshot(plain, full)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, reference[k]), k

    with pytest.raises(ValueError, match="peft model"):
        apply_snapshot(make_llama(0), snap)
    with pytest.raises(ValueError, match="LoRA snapshot"):
        merge_lora(base_state, full)
