"""The driver's admission rules, as pure functions (unit-tested without Ray).

Staleness: a sample made by weight version v may train at learner version u only if
u - v <= max_staleness. The driver hands out a prompt only if it will be trained within that
bound, so `stale` drops happen only after faults or scaling.
"""

from __future__ import annotations

from actors.records import ScoredSample


def staleness(learner_version: int, sample: ScoredSample) -> int:
    """u - v: learner versions between the sample's weights and the weights it trains."""
    return learner_version - sample.sample.policy_version


def is_stale(learner_version: int, sample: ScoredSample, max_staleness: int) -> bool:
    return staleness(learner_version, sample) > max_staleness


def issue_room(*, samples_per_step: int, max_staleness: int, steps_left: int,
               step_running: bool, ahead: int) -> int:
    """Prompts that may be handed out now.

    A prompt issued at published version v trains in one of the next steps that start at
    versions v..v+max_staleness (and before the run ends): max_staleness + 1 steps, less the
    step already running. `ahead` prompts (in generation, scoring or buffered) fill those
    steps first.
    """
    steps_open = min(max_staleness + 1, steps_left) - int(step_running)
    return steps_open * samples_per_step - ahead


def generation_capped(cap: int | None, step_running: bool, in_flight: int) -> bool:
    """No new generate call now: the learner steps and `cap` calls are in flight already
    (`rollout.max_generating_during_step`; None = no cap). Where rollout workers share the
    learner's cores, the step is what every sample waits for."""
    return cap is not None and step_running and in_flight >= cap


def take_batch(buffer: list[ScoredSample], learner_version: int, max_staleness: int,
               n: int) -> tuple[list[ScoredSample] | None, list[ScoredSample], list[ScoredSample]]:
    """(batch, rest, stale): the first n fresh samples of `buffer` by (prompt id, index) (None
    if fewer than n are fresh), the fresh samples left over, and the samples over the bound.
    Groups (a prompt's completions) are whole when n is a multiple of their size."""
    stale = [s for s in buffer if is_stale(learner_version, s, max_staleness)]
    fresh = sorted((s for s in buffer if not is_stale(learner_version, s, max_staleness)),
                   key=lambda s: (s.sample.prompt_id, s.sample.index))
    if len(fresh) < n:
        return None, fresh, stale
    return fresh[:n], fresh[n:], stale


def groups(samples: list[ScoredSample]) -> list[tuple[int, list[ScoredSample]]]:
    """(prompt id, its samples) in order of first appearance: the ledger counts prompts."""
    out: dict[int, list[ScoredSample]] = {}
    for s in samples:
        out.setdefault(s.sample.prompt_id, []).append(s)
    return list(out.items())
