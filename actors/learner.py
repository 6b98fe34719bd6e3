"""LearnerActor: wraps PPOTrainer; publishes each new version with exactly one `ray.put`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
import torch

from learner.soup import average_state_dicts
from learner.trainer import PPOTrainer, RolloutBatch, TrainerSettings
from learner.weights import snapshot_from_model
from services.config import RunConfig
from services.records import Sample, ScoredSample, StepStats


def trainer_settings(cfg: RunConfig) -> TrainerSettings:
    """The trainer's flat settings: the `learner` section plus what lives elsewhere."""
    return TrainerSettings.from_config(
        cfg.learner, lora_rank=cfg.policy.lora_rank, lora_alpha=cfg.policy.lora_alpha,
        score_clip=cfg.reward.score_clip, temperature=cfg.rollout.sampling.temperature,
        seed=cfg.seed)


def _load_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).state_dict()


def build_policy(cfg: RunConfig, sft_dirs: list[Path]):
    """The initial policy (SFT model 0, the soup, or policy.model_dir) and the soup state."""
    from transformers import AutoModelForCausalLM

    start = Path(cfg.policy.model_dir) if cfg.policy.model_dir else sft_dirs[0]
    policy = AutoModelForCausalLM.from_pretrained(start, use_safetensors=True)
    soup = None
    if cfg.policy.init == "soup" or cfg.learner.kl.reference == "soup":
        soup = average_state_dicts([_load_state(d) for d in sft_dirs], cfg.learner.soup_weights)
    if cfg.policy.init == "soup":
        policy.load_state_dict(soup)
    return policy, soup


class LearnerActor:
    """A plain class; the driver wraps it with `ray.remote(num_cpus=..., num_gpus=...)`."""

    def __init__(self, cfg: RunConfig, sft_dirs: list[str], pad_token_id: int) -> None:
        torch.manual_seed(cfg.seed)
        policy, soup = build_policy(cfg, [Path(d) for d in sft_dirs])
        self.pad_token_id = pad_token_id
        # Under LoRA the base weights never change: workers load them once, then adapters.
        self.base = snapshot_from_model(policy, 0) if cfg.policy.lora_rank else None
        self.trainer = PPOTrainer(
            policy, trainer_settings(cfg), pad_token_id=pad_token_id, soup_state=soup
        )
        self.version = 0
        self.puts = 0  # ray.put calls: exactly one per published version

    def _put(self, snap) -> ray.ObjectRef:
        self.puts += 1
        return ray.put(snap)

    def publish(self) -> tuple[int, ray.ObjectRef, int]:
        """One `ray.put` of the current weights; every worker reads that same object."""
        # Views, not a clone: the put below is the copy, made before the next optimiser step.
        snap = self.trainer.snapshot(self.version, copy=False)
        return self.version, self._put(snap), snap.nbytes

    def publish_base(self) -> tuple[int, ray.ObjectRef] | None:
        """Under LoRA, the frozen base weights that every adapter snapshot applies to."""
        return None if self.base is None else (self.base.version, self._put(self.base))

    def step(
        self, samples: list[ScoredSample]
    ) -> tuple[StepStats, ray.ObjectRef | None, int]:
        """One PPO iteration; then publish the new version (one `ray.put`) unless skipped."""
        t0 = time.perf_counter()
        batch = RolloutBatch.from_samples(samples, self.pad_token_id)
        values = self.trainer.step(batch)
        skipped = bool(values.get("step/skipped", 0.0))
        if not skipped:
            self.version += 1
        values["time/learner_step_s"] = time.perf_counter() - t0
        stats = StepStats(
            step=self.version,
            policy_version=self.version,
            num_samples=len(samples),
            reset=bool(values.get("elastic/reset", 0.0)),
            skipped=skipped,
            values=values,
        )
        if skipped:
            return stats, None, 0
        _, ref, nbytes = self.publish()
        return stats, ref, nbytes

    def evaluate(self, texts: list[list[int]]) -> dict[str, float]:
        """Drift on held-out corpus text: perplexity exp(-mean_t log pi(x_t | x_<t)) of the
        policy and of the initial model (token ids with BOS first; BOS is not scored)."""
        items = [ScoredSample(Sample(i, ids[:1], ids[1:], [0.0] * (len(ids) - 1), self.version,
                                     "eval"), (0.0,), 0.0) for i, ids in enumerate(texts)]
        batch = RolloutBatch.from_samples(items, self.pad_token_id)
        n = batch.response_mask.sum()
        out = {}
        for which in ("policy", "init"):
            logp = self.trainer.compute_logprobs(batch, which)
            out[f"drift/ppl_{which}"] = float(torch.exp(-logp.sum() / n))
        return out

    def save(self, directory: str) -> None:
        self.trainer.save(Path(directory))
        (Path(directory) / "version.txt").write_text(str(self.version))

    def load(self, directory: str) -> int:
        self.trainer.load(Path(directory))
        self.version = int((Path(directory) / "version.txt").read_text())
        return self.version

    def info(self) -> dict:
        return {"version": self.version, "pid": os.getpid(), "puts": self.puts}
