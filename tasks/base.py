"""What a run needs from a task, whichever kit built it (the tiny world, a user's dataset).

A `Task` names files and prompts, nothing else: the policy's tokenizer and initial model
dir(s), the reward members, the training prompt stream, evaluation prompts, an optional gold
scorer (evaluation only) and optional held-out texts for the drift metric.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PromptStream:
    """Training prompts as an endless stream of ids, reshuffled every epoch.

    Prompt id i is position i % n of epoch i // n, whose order is a permutation seeded by
    (seed, epoch): every run seed (and every arm sharing it) sees its own order, and a prompt
    id means the same text after a resume.
    """

    prompts: tuple[str, ...]
    seed: int
    labels: tuple[str | None, ...] | None = None  # per prompt, for reward functions
    token_counts: tuple[int, ...] | None = None  # per prompt, under the policy tokenizer

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("PromptStream: no training prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def epoch(self, prompt_id: int) -> int:
        """The epoch (0-based) that prompt id `prompt_id` belongs to."""
        return prompt_id // len(self.prompts)

    def row(self, prompt_id: int) -> int:
        """The row of `prompts` that prompt id `prompt_id` stands for."""
        epoch, position = divmod(prompt_id, len(self.prompts))
        return _permutation(len(self.prompts), self.seed, epoch)[position]

    def text(self, prompt_id: int) -> str:
        return self.prompts[self.row(prompt_id)]

    def label(self, prompt_id: int) -> str | None:
        return None if self.labels is None else self.labels[self.row(prompt_id)]

    def tokens(self, prompt_id: int) -> int | None:
        return None if self.token_counts is None else self.token_counts[self.row(prompt_id)]


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def stratified(prompts: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` prompts spread over prompt types (the first word, case-folded): types in sorted
    order, one prompt of each in turn, each type's prompts in an order fixed by `seed`.
    The same list for every run and arm (a fixed held-out set)."""
    groups: dict[str, list[str]] = {}
    for text in prompts:
        groups.setdefault((text.split() or [""])[0].casefold(), []).append(text)
    rng = random.Random(seed)
    queues = []
    for key in sorted(groups):
        group = sorted(groups[key])
        rng.shuffle(group)
        queues.append(group)
    out: list[str] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


@dataclass(frozen=True)
class Task:
    """Everything the driver and the actors read of a task."""

    name: str
    tokenizer_dir: Path
    policy_dirs: list[Path]  # [0] starts the policy; all of them make the soup (>= 2 for one)
    reward_dirs: list[Path]  # HF sequence classifiers: the ensemble's K members
    train: PromptStream
    eval_prompts: list[str]
    gold: str | None = None  # "module:callable" (prompts, completions, labels); eval only
    heldout_texts: list[str] = field(default_factory=list)  # drift: perplexity on these
    max_prompt_tokens: int | None = None  # longer prompts: dropped (too_long) or cut
    truncate: str = "drop"  # drop | left (cut from the left, BOS kept)
