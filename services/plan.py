"""The learner's memory plan for a run, printed (and checked) before Ray starts.

The arithmetic is `learner/memory.py`; this module reads the policy's shape from its config
(a meta-device model: no weights are loaded) and the run's settings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from learner.memory import ModelShape, plan_learner, publish_bytes_on_rank0, table
from services.config import ConfigError, RunConfig, model_dtype

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def model_shape(model_dir: str | Path, lora=None) -> tuple[ModelShape, int | None]:
    """The policy's shape, and its LoRA adapters' parameter count (None without LoRA)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    trunk = sum(p.numel() for p in model.base_model.parameters())
    shape = ModelShape(params, trunk, config.hidden_size, config.num_hidden_layers,
                       config.vocab_size)
    if lora is None:
        return shape, None
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora.rank,
                                               lora_alpha=lora.alpha,
                                               target_modules=lora.target_modules))
    return shape, sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def learner_plan(cfg: RunConfig, model_dir: str | Path, max_prompt_tokens: int | None,
                 context: int | None) -> tuple[dict[str, int], str]:
    """(bytes per rank by item, the printed table) for this run's learner."""
    lc, s = cfg.learner, cfg.learner_settings()
    stored = model_dtype(model_dir)
    shape, lora_params = model_shape(model_dir, cfg.policy.lora)
    prompt = max_prompt_tokens or context or 0
    tokens = lc.minibatch_size // lc.world_size * (prompt + cfg.rollout.sampling.max_new_tokens)
    plan = plan_learner(
        shape, world_size=lc.world_size, lora_params=lora_params,
        stored_bytes=BYTES.get(stored, 4), compute_bytes=BYTES[cfg.learner_dtype()],
        publish_bytes=BYTES.get(cfg.rollout_dtype(stored), 4), critic=s.estimator == "gae",
        ema=s.elastic_reset.enabled or s.kl.reference == "ema",
        soup=s.kl.reference == "soup", tokens=tokens,
        gradient_checkpointing=lc.gradient_checkpointing)
    publish = publish_bytes_on_rank0(shape, BYTES.get(cfg.rollout_dtype(stored), 4))
    return plan, table(plan, lc.world_size, publish, lc.memory_gb)


def check_plan(cfg: RunConfig, plan: dict[str, int]) -> None:
    """ConfigError if the plan exceeds learner.memory_gb (when set)."""
    budget = cfg.learner.memory_gb
    total = sum(plan.values())
    if budget is not None and total > budget * 2**30:
        biggest = max(plan, key=plan.get)
        raise ConfigError(
            f"learner.memory_gb: the learner needs about {total / 2**30:.2f} GiB per rank, more "
            f"than the {budget:g} GiB given (largest: {biggest}, {plan[biggest] / 2**30:.2f} "
            "GiB); raise learner.world_size, set learner.gradient_checkpointing, lower "
            "learner.minibatch_size, or use policy.lora")
