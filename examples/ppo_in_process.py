"""PPO on the micro tiny world, in one process (no Ray): sample, score, step, repeat.

    .venv/bin/python examples/ppo_in_process.py [deploy/configs/micro.yaml] [steps]

The same parts as a `raylign train` run, called directly: the task's prompt stream, the
`HFEngine` a rollout worker builds (loaded with the trainer's weights before each batch), the
`RewardMember`s and `combine_scores` of the reward pool, and the `PPOTrainer` the learner actor
wraps, all configured by the run config.
"""

from __future__ import annotations

import sys

from transformers import AutoModelForCausalLM

from actors.engines import HFEngine
from actors.reward import RewardMember, combine_scores
from actors.scoring import pad_token_id
from learner.trainer import PPOTrainer, RolloutBatch
from services.config import load_config
from services.fleet import combine_options, reward_specs
from tasks import load_task


def main(config: str = "deploy/configs/micro.yaml", steps: int = 10, overrides=None,
         verbose: bool = True) -> tuple[list[dict], PPOTrainer]:
    cfg = load_config(config, overrides)
    task = load_task(cfg)
    start = cfg.start_dir(task)
    engine = HFEngine(start, seed=cfg.seed)
    members = [RewardMember(k, spec, cfg.reward.batch_size)
               for k, spec in enumerate(reward_specs(cfg, task))]
    combine = combine_options(cfg, task)
    policy = AutoModelForCausalLM.from_pretrained(start, use_safetensors=True)
    pad = pad_token_id(engine.tokenizer)
    trainer = PPOTrainer(policy, cfg.learner_settings(), pad_token_id=pad,
                         lora=cfg.policy.lora, temperature=cfg.rollout.sampling.temperature,
                         seed=cfg.seed)
    n, history = cfg.learner.samples_per_step, []
    for step in range(steps):
        # 1. sample with the current weights
        engine.load_weights(trainer.snapshot(copy=False))
        prompts = [(i, task.train.text(i)) for i in range(step * n, (step + 1) * n)]
        samples = engine.generate(prompts, cfg.rollout.sampling, version=trainer.version,
                                  worker_id="local")
        # 2. score: every reward member, then the ensemble's aggregate
        labels = {i: task.train.label(i) for i, _ in prompts}
        scored = combine_scores(samples, *(m.score(samples, labels) for m in members),
                                labels=labels, **combine)
        # 3. learn
        stats = trainer.step(RolloutBatch.from_samples(scored, pad))
        history.append(stats)
        if verbose:
            print(f"step {step}: proxy reward {stats['reward/score_mean']:+.3f}  "
                  f"kl/init {stats['kl/init_k1']:.3f}  loss/policy {stats['loss/policy']:+.4f}")
    return history, trainer


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3]))
