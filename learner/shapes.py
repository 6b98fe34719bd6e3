"""Models of real shape, built from config (no download): the Qwen2 architecture (GQA, RoPE,
tied embeddings, a vocabulary of realistic size), saved in bf16 as published checkpoints are.

    test    ~0.4M parameters: the tests' bf16 checkpoint
    100m    ~100M: the benchmarks' real-shape row (hidden 768, 12 layers, vocab 32000)
    0.5b    ~0.49B: the shape of Qwen2.5-0.5B (hidden 896, 24 layers, vocab 151936)

The weights are random: these models are for memory, speed and numerics, not for text.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPES = {
    "test": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                 num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 max_position_embeddings=2048),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 max_position_embeddings=32768),
}


def qwen2_config(shape: str, **overrides):
    """A transformers Qwen2Config of the named shape (`SHAPES`), pad id 0, no BOS/EOS."""
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}'; valid: {', '.join(SHAPES)}")
    kw = dict(SHAPES[shape], tie_word_embeddings=True, rope_theta=1e6, pad_token_id=0,
              bos_token_id=None, eos_token_id=None)
    return Qwen2Config(**{**kw, **overrides})


def build_model_dir(out: str | Path, shape: str = "test", *, seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16, **overrides) -> Path:
    """Write a randomly initialised Qwen2ForCausalLM of `shape` in `dtype` to `out` (an HF
    model dir, safetensors); returns `out`."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(qwen2_config(shape, **overrides)).to(dtype)
    out = Path(out)
    model.save_pretrained(out)
    return out


def parameter_count(shape: str) -> int:
    """Parameters of a model of `shape` (tied embeddings counted once), without building it."""
    c = SHAPES[shape]
    h = c["hidden_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    attn = h * h * 2 + h * kv * 2 + h + kv * 2  # q, o; k, v; q/k/v biases
    layer = attn + 3 * h * c["intermediate_size"] + 2 * h
    return c["vocab_size"] * h + c["num_hidden_layers"] * layer + h
