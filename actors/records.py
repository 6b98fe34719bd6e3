"""Typed records that cross process boundaries.

Every record that leaves a rollout worker carries the `policy_version` that produced it, so the
driver can enforce the staleness bound and the learner can report it. Token ids and log-probs
are plain lists (cheap to pickle, no tensor device questions across actors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import ConfigDict, Field
from pydantic import dataclasses as pydantic_dataclasses

Prompt = tuple[int, str]  # (prompt_id, text): the id is the ledger's key


@pydantic_dataclasses.dataclass(frozen=True,
                                config=ConfigDict(extra="forbid", allow_inf_nan=False))
class Sampling:
    """How rollout engines sample (the run config's `rollout.sampling`)."""

    max_new_tokens: int = Field(24, ge=1, description="most tokens sampled per completion")
    temperature: float = Field(1.0, gt=0,
                               description="softmax temperature of the sampling distribution")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0 = off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1 = off)")
    n: int = Field(1, ge=1, description="completions per prompt: a group, trained or dropped "
                   "as one (the grpo/rloo estimators' baseline needs n >= 2)")


@dataclass(frozen=True)
class Sample:
    """One sampled completion from a rollout worker."""

    prompt_id: int  # index into the task's prompt stream; the ledger's key
    prompt_tokens: list[int]  # (P,) token ids of the prompt, no padding
    response_tokens: list[int]  # (T,) sampled token ids, EOS included if generated
    logprobs: list[float]  # (T,) log pi_behaviour(a_t | s_<t) of each sampled token
    policy_version: int  # weight version of the engine that sampled it
    worker_id: str  # rollout worker that made it
    prompt_text: str = ""
    response_text: str = ""
    finished: bool = False  # True if the engine stopped at EOS (not at max tokens)
    prompt_truncated: bool = False  # the prompt was cut (from the left) to fit the context
    index: int = 0  # which of the prompt's n completions (its group shares the prompt id)

    def __post_init__(self) -> None:
        if len(self.response_tokens) != len(self.logprobs):
            raise ValueError(
                f"Sample {self.prompt_id}: {len(self.response_tokens)} response tokens but "
                f"{len(self.logprobs)} log-probs"
            )


@dataclass(frozen=True)
class ScoredSample:
    """A sample with the reward ensemble's verdict."""

    sample: Sample
    member_scores: tuple[float, ...]  # (K,) raw score of each reward-model member
    reward: float  # aggregate of member_scores (mean | min | mean - lambda * var)
    gold: float | None = None  # gold (evaluation-only) score, if a gold scorer ran

    @property
    def is_finite(self) -> bool:
        """False if any member score or the aggregate is NaN/inf: such a sample is quarantined."""
        return all(math.isfinite(s) for s in (*self.member_scores, self.reward))


@dataclass
class TrainBatch:
    """The scored samples of one learner step, plus the learner version they are used at."""

    samples: list[ScoredSample]
    learner_version: int  # version of the learner weights that consume the batch

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def staleness(self) -> list[int]:
        """learner_version - policy_version for every sample (0 = on-policy)."""
        return [self.learner_version - s.sample.policy_version for s in self.samples]


@dataclass
class StepStats:
    """What one learner step reports. `values` holds namespaced scalars (`loss/policy`, ...)."""

    step: int  # learner steps completed, this one included
    policy_version: int  # version of the weights published after this step
    num_samples: int
    reset: bool = False  # an Elastic Reset happened at the end of this step
    skipped: bool = False  # the step was skipped (non-finite loss or gradient)
    values: dict[str, float] = field(default_factory=dict)
