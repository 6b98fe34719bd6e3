"""PPO on the micro tiny world, in one process (no Ray): sample, score, step, repeat.

    .venv/bin/python examples/ppo_in_process.py [deploy/configs/micro.yaml] [steps]

Builds (or loads from its cache) the world, starts the policy from SFT model 0, samples with
transformers `generate`, scores with the mean of the proxy reward models and runs PPOTrainer.
"""

from __future__ import annotations

import random
import sys

import torch

from learner.trainer import PPOTrainer, RolloutBatch, TrainerSettings
from services.config import load_config
from services.records import Sample, ScoredSample
from services.tasks.tiny_world import RewardScorer, load_policy, prepare


def main(config: str = "deploy/configs/micro.yaml", steps: int = 10, overrides=None,
         verbose: bool = True, **settings_overrides) -> tuple[list[dict], PPOTrainer]:
    cfg = load_config(config, overrides)
    world = prepare(cfg.task)
    policy, tok = load_policy(world.sft_dirs[0])
    scorers = [RewardScorer(d) for d in world.rm_dirs]
    settings = TrainerSettings.from_config(
        cfg.learner, lora_rank=cfg.policy.lora_rank, lora_alpha=cfg.policy.lora_alpha,
        score_clip=cfg.reward.score_clip, seed=cfg.seed, **settings_overrides)
    trainer = PPOTrainer(policy, settings, pad_token_id=tok.pad_token_id)
    rng, history = random.Random(cfg.seed), []
    torch.manual_seed(cfg.seed)
    for step in range(steps):
        # 1. sample: left-padded prompts, on-policy completions (cut after EOS)
        prompts = rng.sample(world.train_prompts, cfg.learner.samples_per_step)
        enc = [tok(p)["input_ids"] for p in prompts]
        width = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
        with torch.no_grad():
            out = trainer.policy.generate(
                input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), do_sample=True,
                top_k=0, max_new_tokens=cfg.rollout.sampling.max_new_tokens,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                output_logits=True, return_dict_in_generate=True)
        logp = torch.stack([torch.log_softmax(x.float(), -1) for x in out.logits], 1)
        samples = []
        for i, (p, e) in enumerate(zip(prompts, enc, strict=True)):
            resp = out.sequences[i, width:].tolist()
            n = resp.index(tok.eos_token_id) + 1 if tok.eos_token_id in resp else len(resp)
            lp = logp[i, torch.arange(n), out.sequences[i, width:width + n]].tolist()
            samples.append(Sample(i, e, resp[:n], lp, trainer.version, "local", p,
                                  tok.decode(resp[:n], skip_special_tokens=True)))
        # 2. score: mean of the proxy reward models
        member = [s.score(prompts, [x.response_text for x in samples]) for s in scorers]
        scored = [ScoredSample(x, tuple(m[i] for m in member), sum(m[i] for m in member) /
                               len(member)) for i, x in enumerate(samples)]
        # 3. learn
        stats = trainer.step(RolloutBatch.from_samples(scored, tok.pad_token_id))
        history.append(stats)
        if verbose:
            print(f"step {step}: proxy reward {stats['reward/score_mean']:+.3f}  "
                  f"kl/init {stats['kl/init_k1']:.3f}  loss/policy {stats['loss/policy']:+.4f}")
    return history, trainer


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3]))
