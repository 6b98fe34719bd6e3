"""The reward ensemble: K members (each may have replicas), fanned out, combined, quarantined.

    RewardPool.submit(key, samples_ref)     one call per generated batch
      -> member_k.score(samples)  for k in 1..K   (one live replica of each member)
      -> Combiner.combine(samples, s_1..s_K)      combine_scores: mean | min | mean - lambda*var
      -> RewardPool.collect(ref) -> ScoredBatch   finite samples, and the quarantined ones

Sample payloads go worker -> members -> the combiner actor by reference; only the scored records
reach the caller. A member call that fails puts the batch back in the queue (scored again as
soon as every member has a live replica) and is reported to `on_failure`. A sample with a
non-finite member score or aggregate is quarantined: returned apart, never trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayError

from actors.fleet import ActorGroup, Member, process_info, use_assigned_cpus
from actors.records import Sample, ScoredSample
from actors.scoring import RewardScorer, load_callable
from learner.ensemble import aggregate


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned the wrong number of scores: a bug in the user's
    code, which no retry or replacement fixes (the pool re-raises it; the run stops)."""


@dataclass(frozen=True)
class RewardSpec:
    """One member: a reward model dir, or a function `module:callable` / `file.py:callable`
    called as fn(prompts, completions, labels) -> one score per completion."""

    model_dir: str | None = None
    function: str | None = None
    weight: float = 1.0  # scales the member's scores

    def __post_init__(self) -> None:
        if (self.model_dir is None) == (self.function is None):
            raise ValueError("RewardSpec: give exactly one of model_dir, function")


class RewardMember:
    """One member of the ensemble scoring prompt + completion: an HF sequence classifier
    (its own tokenizer: it scores text) or a reward function."""

    def __init__(self, member: int, spec: RewardSpec | str | Path, batch_size: int) -> None:
        use_assigned_cpus()
        spec = spec if isinstance(spec, RewardSpec) else RewardSpec(model_dir=str(spec))
        self.member, self.spec, self.batch_size = member, spec, batch_size
        self.scorer = RewardScorer(Path(spec.model_dir)) if spec.model_dir else None
        self.fn = load_callable(spec.function) if spec.function else None
        self.scored = 0

    def score(self, samples: list[Sample], labels: dict[int, str | None] | None = None
              ) -> list[float]:
        """One score per sample; `labels` maps a prompt id to its label (functions get them).
        A function returning the wrong number of scores raises (a member failure)."""
        prompts = [s.prompt_text for s in samples]
        completions = [s.response_text for s in samples]
        if self.scorer is not None:
            scores = self.scorer.score(prompts, completions, batch_size=self.batch_size)
        else:
            rows = [None if labels is None else labels.get(s.prompt_id) for s in samples]
            try:
                scores = [float(x) for x in self.fn(prompts, completions, rows)]
            except Exception as e:  # the user's code: its bug, not a fault to retry
                raise RewardFunctionError(f"reward function {self.spec.function} raised "
                                          f"{type(e).__name__}: {e}") from e
            if len(scores) != len(samples):
                raise RewardFunctionError(f"reward function {self.spec.function} returned "
                                          f"{len(scores)} scores for {len(samples)} "
                                          "completions")
        self.scored += len(samples)
        return [self.spec.weight * float(x) for x in scores]

    def info(self) -> dict:
        return {"member": self.member, "scored": self.scored, **process_info()}


def combine_scores(
    samples: list[Sample],
    *member_scores: list[float],
    aggregation: str,
    uwo_lambda: float | None = None,
    ddof: int | None = None,
    score_clip: float | None = None,
    gold: str | None = None,
    gold_in_reward: bool = False,
    labels: dict[int, str | None] | None = None,
) -> list[ScoredSample]:
    """Stack the K members' scores (K, B), aggregate, clip to +-score_clip; `gold` (a
    "module:callable" scorer, called with the labels) adds the gold score, or replaces the
    reward if gold_in_reward."""
    scores = torch.tensor(member_scores, dtype=torch.float64)  # (K, B)
    combined = aggregate(scores, aggregation, uwo_lambda=uwo_lambda, ddof=ddof)
    if score_clip is not None:
        combined = combined.clamp(-score_clip, score_clip)
    golds = None
    if gold is not None:
        rows = [None if labels is None else labels.get(s.prompt_id) for s in samples]
        golds = load_callable(gold)([s.prompt_text for s in samples],
                                    [s.response_text for s in samples], rows)
    return [
        ScoredSample(
            sample=sample,
            member_scores=tuple(float(x) for x in scores[:, i]),
            reward=float(golds[i]) if gold_in_reward else float(combined[i]),
            gold=None if golds is None else float(golds[i]),
        )
        for i, sample in enumerate(samples)
    ]


class Combiner:
    """Runs `combine_scores` for the pool, one batch at a time, in one process."""

    def __init__(self) -> None:
        use_assigned_cpus()  # the reward role's niceness
        torch.set_num_threads(1)

    def combine(self, samples: list[Sample], *member_scores: list[float],
                **options) -> list[ScoredSample]:
        return combine_scores(samples, *member_scores, **options)


@dataclass
class ScoredBatch:
    key: Any  # what the caller submitted the batch with
    samples: list[ScoredSample]  # finite: fit to train on
    quarantined: list[ScoredSample]  # a non-finite member score or aggregate


@dataclass
class _Job:
    key: Any
    samples_ref: ray.ObjectRef
    labels: dict[int, str | None] | None
    members: list[Member]
    member_refs: list[ray.ObjectRef]
    started: float = field(default_factory=time.monotonic)


def combiner_actor(**options) -> Any:
    """A `Combiner` actor with no CPU of its own, restarted (and its calls retried) by Ray;
    `options`: more Ray actor options (name, namespace, resources, runtime_env)."""
    return ray.remote(Combiner).options(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                        **options).remote()


class RewardPool:
    """K member groups (replicas scale together) and the batches being scored.

    make_member(k, name) starts one actor of member k; combine: keyword arguments of
    `combine_scores`; on_failure(member, error) hears of every failed member call;
    make_combiner() starts the `Combiner` actor (default: one with no CPU, restarted by Ray).
    """

    def __init__(self, k: int, make_member: Callable[[int, str], Any], combine: dict,
                 on_failure: Callable[[Member, Exception], None],
                 make_combiner: Callable[[], Any] | None = None) -> None:
        self.groups = [ActorGroup(f"reward{i}", lambda name, i=i: make_member(i, name))
                       for i in range(k)]
        self.combine_kw = combine
        self.on_failure = on_failure
        # A long-lived actor, not a task: Ray kills idle task workers past its soft limit (the
        # CPU count) after a second, so with many actors each combine would start a new
        # process that imports torch again (seconds of CPU per batch).
        self.combiner = (make_combiner or combiner_actor)()
        self.queued: list[tuple[Any, ray.ObjectRef, dict | None]] = []  # waiting for replicas
        self.jobs: dict[ray.ObjectRef, _Job] = {}  # combine ref -> its job
        self.blocked_since: float | None = None  # batches wait: a member has no ready replica

    def submit(self, key: Any, samples_ref: ray.ObjectRef,
               labels: dict[int, str | None] | None = None) -> None:
        """Score the samples behind `samples_ref`; `labels`: prompt id -> label, for reward
        functions and the gold scorer."""
        self.queued.append((key, samples_ref, labels))
        self.pump()

    def pump(self) -> None:
        """Start queued batches while every member has a live replica (not backing off)."""
        while self.queued:
            members = [g.pick(cap=10**9) for g in self.groups]
            if any(m is None for m in members):
                self.blocked_since = self.blocked_since or time.monotonic()
                return
            self.blocked_since = None
            key, samples_ref, labels = self.queued.pop(0)
            member_refs = []
            for m in members:
                m.inflight += 1
                member_refs.append(m.handle.score.remote(samples_ref, labels))
            ref = self.combiner.combine.remote(samples_ref, *member_refs, labels=labels,
                                      **self.combine_kw)
            self.jobs[ref] = _Job(key, samples_ref, labels, members, member_refs)

    def collect(self, ref: ray.ObjectRef) -> ScoredBatch | None:
        """The finished batch of combine ref `ref`; None if a member failed (the batch is
        queued again, and the failure reported). A reward function's own error is raised
        (RewardFunctionError)."""
        job = self.jobs.pop(ref)
        for m in job.members:
            m.inflight -= 1
        try:
            scored: list[ScoredSample] = ray.get(ref)
        except RayError as e:
            for m, member_ref in zip(job.members, job.member_refs):
                try:
                    ray.get(member_ref)
                except RewardFunctionError as bug:  # Ray's error is also of the cause's class
                    raise RewardFunctionError(str(bug.cause if hasattr(bug, "cause") else bug)
                                              ) from None
                except RayError:
                    self.on_failure(m, e)
            self.queued.append((job.key, job.samples_ref, job.labels))
            return None
        for m in job.members:
            m.succeeded()
        return ScoredBatch(job.key, [s for s in scored if s.is_finite],
                           [s for s in scored if not s.is_finite])

    def unplaced(self, blocked_before: float) -> list[int]:
        """Members with no ready replica while batches have waited since before
        `blocked_before` (monotonic): e.g. their node is gone and no other has room."""
        if self.blocked_since is None or self.blocked_since >= blocked_before:
            return []
        return [k for k, g in enumerate(self.groups) if not any(m.ready for m in g.active())]

    def overdue(self, started_before: float) -> list[Member]:
        """Members with a score call started before `started_before` (monotonic) unfinished."""
        late = []
        for job in self.jobs.values():
            if job.started < started_before:
                done, _ = ray.wait(job.member_refs, num_returns=len(job.member_refs), timeout=0)
                late += [m for m, r in zip(job.members, job.member_refs)
                         if r not in done and m not in late]
        return late

    def replace(self, member: Member) -> Member:
        """Kill `member` and start a new replica; its batches are queued to be scored again."""
        for ref, job in list(self.jobs.items()):
            if member in job.members:
                del self.jobs[ref]
                for m in job.members:
                    m.inflight -= 1
                self.queued.append((job.key, job.samples_ref, job.labels))
        group = next(g for g in self.groups if member.name in g.members)
        return group.replace(member)

    def in_flight(self) -> list[Any]:
        """Keys of the batches queued or being scored."""
        return [k for k, _, _ in self.queued] + [j.key for j in self.jobs.values()]

    def clear(self) -> None:
        self.queued.clear()
        self.jobs.clear()

    def scale_to(self, replicas: int) -> None:
        for g in self.groups:
            g.scale_to(replicas)

    def reap(self) -> list[str]:
        return [name for g in self.groups for name in g.reap()]

    def wait_ready(self, timeout: float = 600) -> None:
        for g in self.groups:
            g.wait_ready(timeout)

    def members(self) -> list[Member]:
        return [m for g in self.groups for m in g.members.values()]

    def replicas(self) -> int:
        """Active replicas per member (the fewest, while a scale-up is under way)."""
        return min(len(g.active()) for g in self.groups)

    def live(self) -> int:
        """Replicas that answered their last probe, over all members."""
        return sum(m.ready for g in self.groups for m in g.active())

    def shutdown(self) -> None:
        for g in self.groups:
            g.shutdown()
        ray.kill(self.combiner, no_restart=True)
