"""PromptFlow without Ray: every transition by hand, the illegal ones refused, and a seeded
random sequence of events checked against a reference model (a plain dict)."""

from __future__ import annotations

import random

import pytest

from services.flow import (
    BUFFERED,
    GENERATING,
    QUEUED,
    SCORING,
    TRAINING,
    FlowError,
    PromptFlow,
)
from services.ledger import Ledger


def test_one_prompts_path():
    flow = PromptFlow()
    issued, dropped = flow.issue(3)
    assert (issued, dropped, flow.cursor) == ([0, 1, 2], [], 3)
    assert {flow.at(p) for p in issued} == {GENERATING}
    flow.generated([0, 1, 2])
    flow.buffered([0, 1])
    flow.drop(2, "stale")
    flow.batched([0, 1])
    assert flow.at(0) == TRAINING and flow.at(2) is None
    flow.trained([0, 1])
    assert flow.counts() == {"trained": 2, "dropped:stale": 1}
    assert flow.ledger.check() == flow.counts()


def test_requeued_prompts_are_issued_first_lowest_first():
    flow = PromptFlow()
    flow.issue(4)
    flow.generated([0, 1])
    flow.requeue([3, 1])  # a generating one and one being scored
    assert flow.queued() == [1, 3] and flow.at(1) == QUEUED
    issued, _ = flow.issue(3)
    assert issued == [1, 3, 4] and flow.cursor == 5


def test_too_long_prompts_are_dropped_at_issue():
    flow = PromptFlow()
    issued, dropped = flow.issue(3, too_long=lambda pid: pid % 2 == 1)
    assert issued == [0, 2, 4] and dropped == [1, 3]
    assert flow.counts() == {"pending": 3, "dropped:too_long": 2}


@pytest.mark.parametrize("event", [
    lambda f: f.buffered([0]),  # still generating
    lambda f: f.trained([0]),
    lambda f: f.batched([0]),
    lambda f: f.generated([9]),  # never issued
    lambda f: (f.drop(1, "x"), f.drop(1, "x")),  # closed twice
    lambda f: (f.generated([1]), f.buffered([1]), f.requeue([1])),  # buffered: not lost
])
def test_illegal_transitions_are_refused(event):
    flow = PromptFlow()
    flow.issue(2)
    with pytest.raises(FlowError):
        event(flow)


def test_rewind_queues_what_the_checkpoint_had_pending():
    flow = PromptFlow()
    flow.issue(4)
    flow.generated([0, 1, 2, 3])
    flow.buffered([0, 1])
    flow.batched([0, 1])
    flow.trained([0])
    saved = Ledger.from_json(flow.ledger.to_json())
    saved_cursor = flow.cursor
    flow.trained([1])
    flow.issue(2)
    flow.rewind(saved, saved_cursor)
    assert flow.queued() == [1, 2, 3] and flow.cursor == 4
    assert flow.counts() == {"trained": 1, "pending": 3}


class Reference:
    """The same rules, written as plainly as possible."""

    def __init__(self):
        self.stage, self.out, self.cursor = {}, {}, 0

    def issue(self, n):
        ids = sorted(p for p, s in self.stage.items() if s == "queued")[:n]
        while len(ids) < n:
            ids.append(self.cursor)
            self.cursor += 1
        for p in ids:
            self.stage[p] = "generating"
        return ids

    def move(self, pids, src, dst):
        for p in pids:
            assert self.stage[p] in src
            self.stage[p] = dst

    def close(self, p, outcome):
        del self.stage[p]
        self.out[p] = outcome


def test_a_random_sequence_of_events_matches_the_reference():
    rng = random.Random(0)

    def some(ids: list[int]) -> list[int]:
        return rng.sample(ids, k=rng.randint(1, len(ids)))

    flow, ref = PromptFlow(), Reference()
    for _ in range(3000):
        live = {s: sorted(p for p, x in ref.stage.items() if x == s)
                for s in (GENERATING, SCORING, BUFFERED, TRAINING)}
        choices = ["issue"] + [s for s in live if live[s]] + (["lost"] if live[SCORING] else [])
        if ref.stage:
            choices.append("drop")
        event = rng.choice(choices)
        if event == "issue":
            n = rng.randint(1, 4)
            assert flow.issue(n)[0] == ref.issue(n)
        elif event == GENERATING:
            pids = some(live[GENERATING])
            flow.generated(pids)
            ref.move(pids, (GENERATING,), SCORING)
        elif event == "lost":
            pids = some(live[SCORING])
            flow.requeue(pids)
            ref.move(pids, (GENERATING, SCORING), QUEUED)
        elif event == SCORING:
            pids = some(live[SCORING])
            flow.buffered(pids)
            ref.move(pids, (SCORING,), BUFFERED)
        elif event == BUFFERED:
            pids = some(live[BUFFERED])
            flow.batched(pids)
            ref.move(pids, (BUFFERED,), TRAINING)
        elif event == TRAINING:
            pids = some(live[TRAINING])
            flow.trained(pids)
            for p in pids:
                ref.close(p, "trained")
        else:
            pid = rng.choice(sorted(ref.stage))
            flow.drop(pid, "x")
            ref.close(pid, "dropped:x")
        assert flow.stage == ref.stage and flow.cursor == ref.cursor
        assert {p: s for p, s in flow.ledger.status.items() if s != "pending"} == ref.out
    for pid in sorted(flow.stage):  # the run's end: what is left is dropped
        flow.drop(pid, "run_end")
    assert sum(flow.ledger.check().values()) == ref.cursor
