"""Rollout engines: sample completions with the log-probs of the sampled tokens.

Both engines report the behaviour log-probs: log mu(a_t) under the distribution each token
was actually drawn from, temperature, top-k and top-p applied (HF: the processed `scores` of
`generate`; vLLM: `logprobs_mode="processed_logprobs"`). Without top-k/top-p that is
log softmax(logits / T)[a_t], what the learner computes; with them it is the renormalised
truncated distribution, which the learner does not reproduce (off_policy then resolves to
tis, and off_policy=none is refused).
Sampling is seeded (HF: per batch, by its first prompt id; vLLM: per prompt) so a batch's
completions do not depend on which worker ran it or when: a resumed run samples what an
uninterrupted one would have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

from actors.records import Prompt, Sample, Sampling
from actors.scoring import pad_token_id
from learner.weights import WeightSnapshot, adopt_snapshot, assign_state, merge_lora


class RolloutEngine(Protocol):
    name: str

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, *, version: int, worker_id: str
    ) -> list[Sample]: ...

    def load_weights(self, snapshot: WeightSnapshot) -> None: ...


def vllm_available() -> bool:
    """True if vLLM imports; False if it is not installed. A broken install (vLLM there, its
    import failing) raises: `auto` must not fall back to transformers silently."""
    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "vllm":
            raise
        return False
    return True


def make_engine(kind: str, model_dir: str | Path, *, seed: int = 0,
                max_prompt_tokens: int | None = None, dtype: str = "float32") -> RolloutEngine:
    """`auto` picks vLLM when it imports, else transformers. `dtype`: the engine's weights and
    compute (snapshots are published in it)."""
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind == "vllm":
        return VLLMEngine(model_dir, seed=seed, max_prompt_tokens=max_prompt_tokens, dtype=dtype)
    if kind == "hf":
        return HFEngine(model_dir, seed=seed, max_prompt_tokens=max_prompt_tokens, dtype=dtype)
    raise ValueError(f"unknown rollout engine '{kind}' (valid: auto, hf, vllm)")


def encode_prompts(tokenizer, prompts: list[Prompt], max_positions: int, sampling: Sampling,
                   max_prompt_tokens: int | None = None):
    """Token ids of each prompt, cut from the left to max_prompt_tokens and to leave room for
    the response (a leading BOS is kept); and which prompts were cut."""
    limit = max(1, max_positions - sampling.max_new_tokens)
    if max_prompt_tokens is not None:
        limit = min(limit, max_prompt_tokens)
    full = [tokenizer(text)["input_ids"] for _, text in prompts]
    bos = tokenizer.bos_token_id
    cut = [x if len(x) <= limit else
           [x[0], *x[len(x) - limit + 1:]] if x[0] == bos and limit > 1 else x[-limit:]
           for x in full]
    return cut, [len(x) > limit for x in full]


def stop_ids(model, tokenizer_eos: int | None = None) -> list[int]:
    """The tokens that end a completion: the model's generation-config EOS id(s) and the
    tokenizer's (as vLLM stops at either)."""
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    return sorted(set(ids) | ({tokenizer_eos} - {None}))


@torch.no_grad()
def hf_sample(model, prompt_ids: list[list[int]], sampling: Sampling, *, pad_id: int,
              stop: list[int]) -> list[tuple[list[int], list[float], bool]]:
    """transformers `generate` on left-padded prompts with the rollout's sampling: per prompt,
    (response tokens up to and including the first stop token, their log-probs under the
    processed distribution they were drawn from, whether a stop token ended it). Seed the
    torch RNG before calling."""
    width = max(len(x) for x in prompt_ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in prompt_ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompt_ids])
    gen = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        do_sample=True,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k or None,
        top_p=sampling.top_p,
        output_scores=True,  # processed: temperature, top-k, top-p applied
        return_dict_in_generate=True,
        pad_token_id=pad_id,
        eos_token_id=stop,
    )
    responses = gen.sequences[:, width:]
    logprobs = torch.log_softmax(torch.stack(gen.scores, dim=1).float(), -1)  # (B, T, V)
    token_lp = logprobs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)  # (B, T)
    out = []
    for i, response in enumerate(responses.tolist()):
        n = next((t + 1 for t, tok in enumerate(response) if tok in stop), None)
        out.append((response[: n or len(response)], token_lp[i, : n or len(response)].tolist(),
                    n is not None))
    return out


class HFEngine:
    """transformers `generate`, batched with left padding."""

    name = "hf"

    def __init__(self, model_dir: str | Path, *, seed: int = 0,
                 max_prompt_tokens: int | None = None, dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.seed, self.max_prompt_tokens = seed, max_prompt_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True,
                                                          dtype=getattr(torch, dtype))
        self.model.eval()
        self._base_state: dict[str, torch.Tensor] | None = None  # for LoRA merges

    def load_weights(self, snapshot: WeightSnapshot) -> None:
        """Full: the model adopts the snapshot's read-only arrays (no copy). LoRA: the merged
        weights are assigned by reference too; nothing is ever written into a model tensor."""
        if snapshot.kind == "full":
            adopt_snapshot(self.model, snapshot)
            self._base_state = None
            return
        if self._base_state is None:  # the last full weights are the base of every LoRA delta
            self._base_state = dict(self.model.state_dict())  # never written: no clone
        assign_state(self.model, merge_lora(self._base_state, snapshot))

    @torch.no_grad()
    def generate(
        self, prompts: list[Prompt], sampling: Sampling, *, version: int, worker_id: str
    ) -> list[Sample]:
        tok = self.tokenizer
        prompts = [p for p in prompts for _ in range(sampling.n)]  # each prompt's group
        ids, cut = encode_prompts(tok, prompts, self.model.config.max_position_embeddings,
                                  sampling, self.max_prompt_tokens)
        # Seeded by the batch's first prompt id: the same batch samples the same completions.
        torch.manual_seed(self.seed + prompts[0][0])
        drawn = hf_sample(self.model, ids, sampling, pad_id=pad_token_id(tok),
                          stop=stop_ids(self.model, tok.eos_token_id))
        return [Sample(prompt_id=prompt_id, prompt_tokens=list(prompt_ids),
                       response_tokens=response, logprobs=logprobs, policy_version=version,
                       worker_id=worker_id, prompt_text=text,
                       response_text=tok.decode(response, skip_special_tokens=True),
                       finished=finished, prompt_truncated=cut[i], index=i % sampling.n)
                for i, ((prompt_id, text), prompt_ids, (response, logprobs, finished))
                in enumerate(zip(prompts, ids, drawn, strict=True))]


class WeightReloadExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): in-place weight reloads."""

    def raylign_reload(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.reload_weights(weights_iterator=iter(named_tensors))  # type: ignore[attr-defined]


class VLLMEngine:
    """vLLM's offline `LLM`, single process per actor, weights reloaded in place."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, *, seed: int = 0,
                 max_prompt_tokens: int | None = None, dtype: str = "float32") -> None:
        # One process per actor, CPU KV cache in GiB, no hub. On CPU, vLLM would bind one
        # OpenMP thread to every core of the machine in every worker ("auto"), so N workers
        # and the learner fight over the same cores; "nobind" keeps the thread count the
        # actor's Ray CPUs set (`use_assigned_cpus`), as the HF engine does.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig
        from vllm import LLM

        self.seed, self.max_prompt_tokens = seed, max_prompt_tokens
        config = AutoConfig.from_pretrained(model_dir)
        self.max_positions = config.max_position_embeddings
        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,  # the config's rollout.dtype (float32 on CPU, as the learner)
            seed=seed,
            enforce_eager=True,
            max_model_len=self.max_positions,
            logprobs_mode="processed_logprobs",  # of the distribution sampled from
            worker_extension_cls="actors.engines.WeightReloadExtension",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._base_state: dict[str, torch.Tensor] | None = None

    def load_weights(self, snapshot: WeightSnapshot) -> None:
        if snapshot.kind == "full":
            # Copy out of the (read-only, zero-copy) object-store arrays.
            state = {k: torch.from_numpy(v.copy()) for k, v in snapshot.tensors.items()}
            self._base_state = state  # the base of later LoRA deltas
        elif self._base_state is None:
            raise RuntimeError("VLLMEngine: a LoRA snapshot arrived before any full snapshot")
        else:
            state = merge_lora(self._base_state, snapshot)
        self.llm.collective_rpc("raylign_reload", args=(list(state.items()),))
        self.llm.reset_prefix_cache()

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, *, version: int, worker_id: str
    ) -> list[Sample]:
        from vllm import SamplingParams, TokensPrompt

        tok = self.tokenizer
        ids, cut = encode_prompts(tok, prompts, self.max_positions, sampling,
                                  self.max_prompt_tokens)
        params = [
            SamplingParams(
                n=sampling.n,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                top_p=sampling.top_p,
                logprobs=0,  # log-prob of the sampled token only
                seed=self.seed + prompt_id,
            )
            for prompt_id, _ in prompts
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False
        )
        out = []
        for i, ((prompt_id, text), prompt_ids, result) in enumerate(zip(prompts, ids, outputs)):
            for index, comp in enumerate(result.outputs):
                response = list(comp.token_ids)
                lp = [step[token].logprob for step, token in zip(comp.logprobs, response)]
                out.append(
                    Sample(
                        prompt_id=prompt_id,
                        prompt_tokens=list(prompt_ids),
                        response_tokens=response,
                        logprobs=lp,
                        policy_version=version,
                        worker_id=worker_id,
                        prompt_text=text,
                        response_text=tok.decode(response, skip_special_tokens=True),
                        finished=comp.finish_reason == "stop",
                        prompt_truncated=cut[i],
                        index=index,
                    )
                )
        return out
