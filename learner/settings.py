"""The learner's settings: the one definition of every PPO, KL, Elastic Reset and LoRA knob.

Frozen pydantic dataclasses: constructing one validates it (`PPOSettings(lr=-1)` raises), and
the run config (services/config.py) embeds these same classes, so defaults, bounds and
descriptions exist once. docs/algorithms.md gives the sources of the defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictInt, model_validator
from pydantic.dataclasses import dataclass

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf and .nan are never settings


@dataclass(frozen=True, config=STRICT)
class KLSettings:
    """KL to the reference: a per-token reward penalty (Ziegler et al.) or a loss term."""

    estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token estimator of KL(pi || ref) with r = ref / pi (Schulman's "
        "note): k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r")
    mode: Literal["reward", "loss"] = Field(
        "reward", description="reward = subtract beta * KL from each token's reward (Ziegler); "
        "loss = add beta * mean KL to the policy loss: with k2 its gradient is that of "
        "KL(pi || ref), with k3 that of KL(ref || pi); k1 is rejected (zero expected gradient)")
    coef: float = Field(0.05, ge=0,
                        description="beta (the initial beta if adaptive)")
    adaptive: bool = Field(False, description="Ziegler's proportional controller on beta")
    target: float = Field(6.0, gt=0,
                          description="adaptive controller's target KL (summed k1 per sequence)")
    horizon: StrictInt = Field(10000, ge=1, description="adaptive controller's horizon in samples")
    reference: Literal["init", "ema", "soup"] = Field(
        "init", description="the KL reference: the initial policy, the Elastic Reset EMA, or "
        "the soup (weight average of the SFT models)")

    @model_validator(mode="after")
    def _loss_needs_a_gradient(self) -> KLSettings:
        if self.mode == "loss" and self.estimator == "k1":
            raise ValueError("kl.mode=loss with estimator k1 has zero expected gradient on "
                             "samples from pi (it does nothing); use k2 (the gradient of "
                             "KL(pi || ref)) or k3 (that of KL(ref || pi))")
        return self


@dataclass(frozen=True, config=STRICT)
class ElasticResetSettings:
    """Elastic Reset (Noukhovitch et al. 2023): online <- EMA every `reset_every`, EMA <- init."""

    enabled: bool = Field(False, description="periodic resets on or off")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="eta: ema <- eta * ema + (1-eta) * "
                             "online")
    reset_every: StrictInt = Field(
        17, ge=1, description="reset at iterations k * reset_every, k >= 1")
    ema_update: Literal["iteration", "epoch", "step"] = Field(
        "iteration", description="when the EMA moves: once per PPO iteration (the paper's "
        "code), per epoch, or per optimizer step")
    reset_value_head: bool = Field(False, description="also reset the critic to its initial "
                                   "weights (the paper keeps it)")
    reset_optimizer: bool = Field(False, description="also clear the Adam state at a reset")
    target: Literal["ema", "init"] = Field(
        "ema", description="what the policy is reset to: ema (Elastic Reset) or init (the "
        "reset-to-init baseline)")
    reset_ema: bool = Field(True, description="EMA <- init after each reset (false: the "
                            "reset-to-EMA baseline that keeps its EMA)")


@dataclass(frozen=True, config=STRICT)
class LoraSettings:
    """peft LoRA on the policy and the critic trunk; only adapters (and the value head) train."""

    rank: StrictInt = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0,
                         description="LoRA alpha (scaling = alpha / r)")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt (None = peft's default for the architecture)")


@dataclass(frozen=True, config=STRICT)
class PPOSettings:
    """PPO with a separate critic, GAE and a clipped objective (Schulman et al. 2017)."""

    estimator: Literal["gae", "grpo", "rloo", "reinforce_pp"] = Field(
        "gae", description="advantage estimator: gae (a critic, the papers' PPO set-up); "
        "grpo (group-normalised returns), rloo (leave-one-out group baseline) and "
        "reinforce_pp (whitened returns-to-go) need no critic; grpo and rloo need "
        "rollout.sampling.n >= 2 completions per prompt")
    lr: float = Field(1e-4, gt=0, description="policy Adam learning rate")
    value_lr: float | None = Field(None, gt=0,
                                   description="critic learning rate (None = lr)")
    ppo_epochs: StrictInt = Field(2, ge=1, description="passes over each batch")
    minibatch_size: StrictInt = Field(16, ge=1, description="samples per gradient step")
    gamma: float = Field(1.0, ge=0, le=1, description="discount (1: one episode per text)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_eps: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip: float | None = Field(0.2, gt=0,
                                     description="value clip around the old values (None = off)")
    ent_coef: float = Field(0.0, ge=0,
                            description="entropy bonus weight (0 = off, as in most RLHF runs)")
    max_grad_norm: float = Field(1.0, gt=0,
                                 description="clip each model's gradient norm to this")
    whiten_advantages: bool = Field(True, description="masked whitening over the batch")
    off_policy: Literal["none", "tis", "decoupled"] | None = Field(
        None, description="correction for samples from an older or different policy than the "
        "learner's (behaviour mu, proximal pi_prox = the learner at the step's start, "
        "w = pi_prox / mu per token): none = train as on-policy, with the engine's log-probs as "
        "the old log-probs (no recompute forward); tis = loss * min(w, cap); decoupled = loss * "
        "w, tokens with w > cap dropped (AReaL). None = tis if rollout.max_staleness > 0, the "
        "engine is vLLM, the engines compute in another dtype than the learner, or sampling "
        "uses top-k/top-p; else none")
    off_policy_cap: float = Field(2.0, ge=1,
                                  description="the cap C on the behaviour weight w")
    kl: KLSettings = Field(default_factory=KLSettings, description="KL to the reference")
    elastic_reset: ElasticResetSettings = Field(default_factory=ElasticResetSettings,
                                                description="Elastic Reset schedule")
