"""Held-out evaluation at every `learner.eval_every` steps, of one policy version: drift
(perplexity of the policy and of the initial model on held-out corpus text) and, with
`learner.eval_prompts`, gold and KL to the initial model (k1, summed over each completion's
tokens) on held-out prompts: a fixed, stratified set, one completion each from the learner's
policy with the rollout's sampling and the same random draws every time. A held-out prompt
longer than task.max_prompt_tokens (or than the context less the response) is cut from the
left, BOS kept, as the rollout engines cut one."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from actors.engines import encode_prompts
from actors.records import Sampling
from actors.scoring import load_callable
from services.config import ConfigError, RunConfig
from tasks.base import Task, stratified

EVAL_SEED = 1234  # the held-out draws: the same for every eval point, seed and arm


@dataclass
class HeldOut:
    texts: list[list[int]]  # "<s> text </s>" token ids (drift)
    prompts: list[str]  # held-out prompts ([] = no gold evaluation)
    prompt_ids: list[list[int]]
    sampling: Sampling
    gold: str | None  # "module:callable" (prompts, completions, labels)
    decode: Callable[[list[int]], str]

    @classmethod
    def check(cls, cfg: RunConfig, task: Task, gold: str | None) -> None:
        """ConfigError unless the task can give what learner.eval_prompts asks for (called
        before Ray starts)."""
        n = cfg.learner.eval_prompts
        if n and gold is None:
            raise ConfigError(f"learner.eval_prompts={n}: task {task.name} has no gold scorer "
                              "(nor a reward function with gold: true)")
        if n and not task.eval_prompts:
            raise ConfigError(f"learner.eval_prompts={n}: task {task.name} has no eval prompts")

    @classmethod
    def build(cls, cfg: RunConfig, task: Task, tokenizer, gold: str | None) -> HeldOut:
        texts = [(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])
                 [: tokenizer.model_max_length]
                 for t in task.heldout_texts[: cfg.learner.eval_texts]]
        cls.check(cfg, task, gold)
        prompts = stratified(task.eval_prompts, cfg.learner.eval_prompts)
        prompt_ids, _ = encode_prompts(tokenizer, list(enumerate(prompts)),
                                       tokenizer.model_max_length, cfg.rollout.sampling,
                                       task.max_prompt_tokens)
        return cls(texts, prompts, prompt_ids, cfg.rollout.sampling, gold,
                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    def evaluate(self, learner, get: Callable) -> dict[str, float]:
        """Drift, then (same version: the learner runs one call at a time) held-out gold."""
        out = dict(get(learner.evaluate.remote(self.texts)))
        if not self.prompts:
            return out
        responses = get(learner.sample.remote(self.prompt_ids, self.sampling, EVAL_SEED))
        kl = get(learner.kl_to_init.remote(self.prompt_ids, responses))
        texts = [self.decode(r) for r in responses]
        golds = load_callable(self.gold)(self.prompts, texts, [None] * len(texts))
        out["eval/gold"] = statistics.fmean(float(g) for g in golds)
        out["eval/kl_init"] = statistics.fmean(kl)
        out["eval/response_tokens"] = statistics.fmean(len(r) for r in responses)
        return out
