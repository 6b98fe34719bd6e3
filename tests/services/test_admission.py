"""The driver's admission and staleness rules, without Ray (services/admission.py)."""

from __future__ import annotations

from actors.records import Sample, ScoredSample, TrainBatch
from services import admission


def scored(prompt_id: int, version: int) -> ScoredSample:
    return ScoredSample(Sample(prompt_id, [1], [2], [-0.5], version, "w"), (0.0,), 0.0)


def test_staleness_bound_is_inclusive():
    s = scored(0, version=3)
    assert admission.staleness(5, s) == 2
    assert not admission.is_stale(5, s, max_staleness=2)
    assert admission.is_stale(6, s, max_staleness=2)
    assert not admission.is_stale(3, s, max_staleness=0)


def test_issue_room():
    # bound 1: the next 2 steps are open; 64 per step; nothing ahead -> 128
    assert admission.issue_room(samples_per_step=64, max_staleness=1, steps_left=10,
                                step_running=False, ahead=0) == 128
    # a step running takes one of them; 40 already ahead
    assert admission.issue_room(samples_per_step=64, max_staleness=1, steps_left=10,
                                step_running=True, ahead=40) == 24
    # the run's last step: only one step left, whatever the bound
    assert admission.issue_room(samples_per_step=64, max_staleness=3, steps_left=1,
                                step_running=False, ahead=0) == 64
    # on-policy (bound 0) while the learner steps: nothing may be issued
    assert admission.issue_room(samples_per_step=8, max_staleness=0, steps_left=5,
                                step_running=True, ahead=0) == 0
    assert admission.issue_room(samples_per_step=8, max_staleness=0, steps_left=5,
                                step_running=False, ahead=10) == -2


def test_take_batch_lowest_fresh_ids_first():
    buffer = [scored(7, 4), scored(2, 2), scored(5, 4), scored(1, 4), scored(9, 3)]
    batch, rest, stale = admission.take_batch(buffer, learner_version=4, max_staleness=1, n=2)
    assert [s.sample.prompt_id for s in batch] == [1, 5]
    assert [s.sample.prompt_id for s in rest] == [7, 9]
    assert [s.sample.prompt_id for s in stale] == [2]


def test_take_batch_too_few_fresh():
    buffer = [scored(1, 0), scored(2, 5)]
    batch, rest, stale = admission.take_batch(buffer, learner_version=5, max_staleness=1, n=2)
    assert batch is None
    assert [s.sample.prompt_id for s in rest] == [2]
    assert [s.sample.prompt_id for s in stale] == [1]


def test_train_batch_staleness_is_per_sample():
    batch = TrainBatch([scored(0, 3), scored(1, 5), scored(2, 4)], learner_version=5)
    assert batch.staleness == [2, 0, 1]
    assert len(batch) == 3


def grouped(prompt_id: int, index: int, version: int) -> ScoredSample:
    return ScoredSample(Sample(prompt_id, [1], [2], [-0.5], version, "w", index=index),
                        (0.0,), 0.0)


def test_groups_keep_a_prompts_completions_together():
    samples = [grouped(3, 0, 1), grouped(1, 0, 1), grouped(3, 1, 1), grouped(1, 1, 1)]
    assert [(pid, [s.sample.index for s in g]) for pid, g in admission.groups(samples)] == [
        (3, [0, 1]), (1, [0, 1])]


def test_take_batch_cuts_at_group_boundaries():
    buffer = [grouped(p, i, 2) for p in (5, 2, 8) for i in (1, 0)]
    batch, rest, _ = admission.take_batch(buffer, learner_version=2, max_staleness=0, n=4)
    assert [(s.sample.prompt_id, s.sample.index) for s in batch] == [(2, 0), (2, 1), (5, 0),
                                                                     (5, 1)]
    assert [(s.sample.prompt_id, s.sample.index) for s in rest] == [(8, 0), (8, 1)]


def test_generation_is_capped_only_while_the_learner_steps():
    capped = admission.generation_capped
    assert capped(1, step_running=True, in_flight=1) and capped(2, True, 3)
    assert not capped(1, step_running=True, in_flight=0)
    assert not capped(1, step_running=False, in_flight=5)  # between steps: every worker
    assert not capped(None, step_running=True, in_flight=100)  # no cap
    assert capped(0, step_running=True, in_flight=0)  # 0: nothing generates during a step
