"""The tiny world's tokenizer and causal LMs: BPE trained locally, a small Llama, plain loops.

Every model dir written here is a stand-alone HF dir (config.json, generation_config.json,
model.safetensors and the tokenizer files), loadable by transformers and by vLLM
(head_dim 64, untied embeddings, no custom code).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.scoring import pad_batch

PAD, BOS, EOS = "<pad>", "<s>", "</s>"  # ids 0, 1, 2


@dataclass(frozen=True)
class ModelSize:
    """Shape of the policy for one world size (head_dim is always 64, vLLM's CPU kernels)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    max_positions: int = 128

    @property
    def num_heads(self) -> int:
        return self.hidden_size // 64


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE (GPT-2 style) with <s> prepended; saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=128
    )
    fast.save_pretrained(out_dir)
    return fast


def new_causal_lm(size: ModelSize, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        head_dim=64,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def save_model(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained (safetensors) + generation config + tokenizer files: a stand-alone dir."""
    from transformers import GenerationConfig

    model.config.pad_token_id = tokenizer.pad_token_id
    if model.can_generate():
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
        )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_policy(model_dir):
    """(AutoModelForCausalLM in eval mode, tokenizer) from an HF dir; safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def encode_docs(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """<s> text </s>, truncated to max_len tokens."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [(x + [tokenizer.eos_token_id])[:max_len] for x in ids]


def pack_blocks(docs: list[list[int]], block: int) -> torch.Tensor:
    """Concatenate documents and cut the stream into (n, block) rows (pretraining)."""
    stream = [t for d in docs for t in d]
    n = len(stream) // block
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def shuffled_batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` batches of `batch_size` indices into n items: passes over a fresh shuffle each
    (rng = seed), a batch running on into the next pass where one ends."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def lm_batches(docs: list[list[int]], batch_size: int, epochs: float, seed: int, pad_id: int):
    """Shuffled, right-padded (ids, mask, labels) batches over `epochs` passes (data order =
    seed)."""
    total = int(math.ceil(len(docs) * epochs / batch_size))
    for idx in shuffled_batches(len(docs), batch_size, total, seed):
        ids, mask = pad_batch([docs[i] for i in idx], pad_id)
        yield ids, mask, ids.masked_fill(mask == 0, -100)


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


def train_loop(
    model,
    batches: list,
    loss_fn,
    lr: float,
    desc: str,
    show: bool,
    warmup_frac: float = 0.05,
    param_groups: list[dict] | None = None,
) -> list[float]:
    """AdamW + warmup/cosine, grad clip 1.0; returns the per-step losses.

    `param_groups` (torch optimizer groups, each may set its own "lr") replaces the default
    single group of all parameters at `lr`.
    """
    groups = param_groups if param_groups is not None else [{"params": model.parameters()}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, max(1, int(warmup_frac * total)))
    )
    model.train()
    losses = []
    bar = tqdm(batches, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    for batch in bar:
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
    model.eval()
    return losses


def lm_loss(model, batch) -> torch.Tensor:
    ids, mask, labels = batch
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


@torch.inference_mode()
def mean_nll(model, docs: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    """Token-mean negative log-likelihood of docs (every token after <s>)."""
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(docs), batch_size):
        ids, mask = pad_batch(docs[i : i + batch_size], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:]
        valid = mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none"
        ).view_as(target)
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total / max(1, count)


@torch.inference_mode()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 64,
    desc: str = "sample",
    show: bool = False,
) -> list[str]:
    """One sampled completion (temperature 1, no top-k/p) per prompt, decoded without specials.

    Uses the global torch RNG: seed it first for reproducible samples.
    """
    model.eval()
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc=desc, disable=not show, leave=False, dynamic_ncols=True):
        chunk = prompts[i : i + batch_size]
        enc = [tokenizer(p)["input_ids"] for p in chunk]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(enc):  # left padding for generation
            ids[j, width - len(e) :] = torch.tensor(e)
            mask[j, width - len(e) :] = 1
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out
