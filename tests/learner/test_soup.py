"""Soups of state dicts and of HF model dirs; the interpolation-path loss check."""

import json

import pytest
import torch
from torch.testing import assert_close

from learner.soup import (
    average_model_dirs,
    average_state_dicts,
    interpolation_barrier,
    interpolation_losses,
    load_model_dir,
    soup_state_for,
)


def test_soup_of_two_models_is_parameter_wise_average(make_llama):
    a, b = make_llama(0).state_dict(), make_llama(1).state_dict()
    soup = average_state_dicts([a, b])
    for k in a:
        assert_close(soup[k], (a[k].double() * 0.5 + b[k].double() * 0.5).float())
    w = average_state_dicts([a, b], [0.25, 0.75])
    k = "model.layers.0.self_attn.q_proj.weight"
    assert_close(w[k], (0.25 * a[k].double() + 0.75 * b[k].double()).float())


def test_state_dict_errors():
    a = {"x": torch.zeros(2), "y": torch.zeros(1)}
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([a, {"x": torch.zeros(2)}])
    with pytest.raises(ValueError, match=r"'x' has shape \(3,\) in model 1"):
        average_state_dicts([a, {"x": torch.zeros(3), "y": torch.zeros(1)}])
    with pytest.raises(ValueError, match="sum to 1"):
        average_state_dicts([a, a], [0.5, 0.6])


def test_model_dirs_average_and_errors(make_llama, tmp_path):
    m0, m1 = make_llama(0), make_llama(1)
    d0, d1 = tmp_path / "sft0", tmp_path / "sft1"
    m0.save_pretrained(d0)
    m1.save_pretrained(d1)
    _, soup = average_model_dirs([d0, d1])
    s0, s1 = m0.state_dict(), m1.state_dict()
    for k in soup:
        assert_close(soup[k], ((s0[k].double() + s1[k].double()) / 2).float())
    cfg, loaded = load_model_dir(d0)
    assert cfg["model_type"] == "llama" and set(loaded) == set(soup)

    wide = make_llama(2, hidden_size=32, intermediate_size=64)
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"wide has config.json hidden_size=32 .* has 64"):
        average_model_dirs([d0, tmp_path / "wide"])

    # same config, one tensor missing / reshaped -> the error names the dir
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    m1.save_pretrained(bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop("model.norm.weight")
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="bad has different keys"):
        average_model_dirs([d0, bad])
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        average_model_dirs([d0, bad])
    with pytest.raises(FileNotFoundError, match="config.json"):
        average_model_dirs([d0, tmp_path / "nothing"])


def test_interpolation_losses(make_llama):
    a, b = make_llama(0).state_dict(), make_llama(1).state_dict()
    model = make_llama(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    key = "model.norm.weight"

    def loss_fn(m):  # a quadratic in the weights: ||w||^2 of one tensor
        return float((m.state_dict()[key].double() ** 2).sum())

    losses = interpolation_losses(a, b, model, loss_fn, alphas=[0.0, 0.5, 1.0])
    assert losses[0] == pytest.approx(float((a[key].double() ** 2).sum()))
    assert losses[2] == pytest.approx(float((b[key].double() ** 2).sum()))
    mid = (a[key].double() + b[key].double()) / 2
    assert losses[1] == pytest.approx(float((mid.float().double() ** 2).sum()))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # restored
    assert interpolation_barrier([1.0, 3.0, 2.0]) == 1.0
    assert interpolation_barrier([1.0, 0.5, 2.0]) == 0.0


def test_a_soup_for_a_model_with_tied_weights_fills_in_the_tied_head(make_llama, tmp_path):
    """The files of a tied model leave out lm_head.weight: the soup's head is the soup of the
    embeddings, and the state dict loads strictly."""
    m0, m1 = make_llama(0, tie_word_embeddings=True), make_llama(1, tie_word_embeddings=True)
    d0, d1 = tmp_path / "a", tmp_path / "b"
    m0.save_pretrained(d0)
    m1.save_pretrained(d1)
    assert "lm_head.weight" not in load_model_dir(d0)[1]
    soup = soup_state_for(m0, [d0, d1], [0.25, 0.75])
    emb = "model.embed_tokens.weight"
    want = (0.25 * m0.state_dict()[emb].double() + 0.75 * m1.state_dict()[emb].double()).float()
    assert_close(soup[emb], want) and assert_close(soup["lm_head.weight"], want)
    make_llama(2, tie_word_embeddings=True).load_state_dict(soup, strict=True)

    untied = make_llama(3)  # its own lm_head, which the tied files do not have
    with pytest.raises(ValueError, match="lacks 'lm_head.weight'"):
        soup_state_for(untied, [d0, d1])
