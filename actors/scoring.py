"""Reward-model scoring: an HF sequence classifier reads prompt + completion, one float out.

Input text: <s> prompt + completion (concatenated as they are), no </s>. Pooling: a model
whose config says `reward_pooling = "completion_mean"` (the tiny world's members) is read at
the MEAN of the final hidden states over the completion's tokens; any other model at the last
non-padding token, as transformers does.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

POOLING = "completion_mean"  # written into each trained member's config (`reward_pooling`)


def encode_inputs(
    tokenizer, prompts: list[str], completions: list[str], max_len: int
) -> list[tuple[list[int], int]]:
    """(ids of <s> prompt + completion truncated to max_len, index of the first completion
    token), the index found as the prompt's tokens shared with the joint tokenization (BPE may
    merge across the boundary; that merged token counts as the completion's)."""
    ids = tokenizer([p + c for p, c in zip(prompts, completions)])["input_ids"]
    heads = tokenizer(list(prompts))["input_ids"]
    out = []
    for x, h in zip(ids, heads):
        k = 0
        while k < min(len(x), len(h)) and x[k] == h[k]:
            k += 1
        x = x[:max_len]
        out.append((x, min(max(1, k), len(x) - 1)))
    return out


def reward_forward(model, seqs: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """One score per (ids, completion start) from `encode_inputs`, pooled as the model's config
    says (`reward_pooling`): the completion-token mean, or else the last non-padding token."""
    ids, mask = pad_batch([s for s, _ in seqs], pad_id)
    if getattr(model.config, "reward_pooling", None) != POOLING:
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    weight = mask.to(hidden.dtype)
    for i, (_, start) in enumerate(seqs):
        weight[i, :start] = 0
    pooled = (hidden * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp_min(1.0)
    return model.score(pooled)[:, 0].float()



def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (GPT-2-style tokenizers have no pad token;
    padding is masked out either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path}: no pad and no EOS token")
    return pad


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class RewardScorer:
    """One proxy reward model loaded from its HF dir; `score` returns one float per sample."""

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), use_safetensors=True
        ).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.pad_id = pad_token_id(self.tokenizer)
        if self.model.config.pad_token_id is None:  # transformers finds the last token by it
            self.model.config.pad_token_id = self.pad_id
        self.max_len = int(self.model.config.max_position_embeddings)

    @torch.inference_mode()
    def score(
        self, prompts: list[str], completions: list[str], batch_size: int = 32
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        for i in range(0, len(prompts), batch_size):
            seqs = encode_inputs(
                self.tokenizer,
                prompts[i : i + batch_size],
                completions[i : i + batch_size],
                self.max_len,
            )
            out += reward_forward(self.model, seqs, self.pad_id).tolist()
        return out



def load_callable(ref: str) -> Callable:
    """`package.module:name` or `path/to/file.py:name` -> the callable it names; a clear
    ValueError if the module, the file or the callable does not exist."""
    source, sep, attr = ref.rpartition(":")
    if not sep or not source or not attr:
        raise ValueError(f"'{ref}': expected 'module:callable' or 'file.py:callable'")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"'{ref}': no such file '{path}'")
        spec = importlib.util.spec_from_file_location(f"raylign_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SystemExit as e:  # a file that exits on import must not end raylign silently
            raise ValueError(f"'{ref}': importing {path} called sys.exit({e.code})") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise ValueError(f"'{ref}': cannot import {source}: {e}") from None
        except SystemExit as e:
            raise ValueError(f"'{ref}': importing {source} called sys.exit({e.code})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"'{ref}': {source} has no callable '{attr}'")
    return fn
