"""Tiny randomly initialised Llama models for the learner tests (no download)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 50


def tiny_llama_config(**overrides) -> LlamaConfig:
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=None, eos_token_id=None)
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture
def make_llama():
    return tiny_llama
