"""Reward ensemble: K reward-model members (each may have replicas) and the combine step.

The driver places `RewardMember` actors (K members x replicas) and runs `combine_scores` as a
Ray task over the members' score refs, so sample payloads flow between workers, not through
the driver. A sample with any non-finite member score is quarantined by the driver.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from learner.ensemble import aggregate
from services.records import Sample, ScoredSample


class RewardMember:
    """One proxy reward model (an HF sequence classifier) scoring prompt + completion."""

    def __init__(self, member: int, model_dir: str | Path, batch_size: int = 32) -> None:
        from services.tasks.tiny_world import RewardScorer

        self.member = member
        self.batch_size = batch_size
        self.scorer = RewardScorer(Path(model_dir))
        self.scored = 0

    def score(self, samples: list[Sample]) -> list[float]:
        prompts = [s.prompt_text for s in samples]
        completions = [s.response_text for s in samples]
        scores = self.scorer.score(prompts, completions, batch_size=self.batch_size)
        self.scored += len(samples)
        return [float(x) for x in scores]

    def info(self) -> dict:
        return {"member": self.member, "pid": os.getpid(), "scored": self.scored}


def combine_scores(
    samples: list[Sample],
    *member_scores: list[float],
    aggregation: str,
    uwo_lambda: float = 0.1,
    ddof: int = 1,
    score_clip: float | None = None,
    with_gold: bool = False,
    gold_in_reward: bool = False,
) -> list[ScoredSample]:
    """Stack the K members' scores (K, B), aggregate them, optionally add the gold score."""
    scores = torch.tensor(member_scores, dtype=torch.float64)  # (K, B)
    combined = aggregate(scores, aggregation, uwo_lambda=uwo_lambda, ddof=ddof)
    if score_clip is not None:
        combined = combined.clamp(-score_clip, score_clip)
    gold = None
    if with_gold or gold_in_reward:
        from services.tasks.tiny_world import gold_score

        gold = gold_score([s.prompt_text for s in samples], [s.response_text for s in samples])
    out = []
    for i, sample in enumerate(samples):
        reward = float(gold[i]) if gold_in_reward else float(combined[i])
        out.append(
            ScoredSample(
                sample=sample,
                member_scores=tuple(float(x) for x in scores[:, i]),
                reward=reward,
                gold=None if gold is None else float(gold[i]),
            )
        )
    return out
