"""The ledger: every issued prompt id ends as exactly one of trained or dropped:<reason>."""

from __future__ import annotations

import json
import random

import pytest

from services.ledger import PENDING, TRAINED, Ledger, LedgerError


def _closed(counts: dict[str, int]) -> tuple[int, int]:
    trained = counts.get(TRAINED, 0)
    dropped = sum(n for s, n in counts.items() if s.startswith("dropped:"))
    return trained, dropped


def test_issue_then_trained():
    ledger = Ledger()
    ledger.issue(7)
    assert ledger.is_pending(7)
    assert ledger.pending() == [7]
    assert ledger.counts() == {PENDING: 1}
    ledger.trained(7)
    assert not ledger.is_pending(7)
    assert ledger.status[7] == TRAINED
    assert ledger.pending() == []
    assert ledger.check() == {TRAINED: 1}


def test_issue_then_dropped_keeps_the_reason():
    ledger = Ledger()
    ledger.issue(1)
    ledger.issue(2)
    ledger.dropped(1, "stale")
    ledger.dropped(2, "worker_lost")
    assert ledger.status == {1: "dropped:stale", 2: "dropped:worker_lost"}
    assert ledger.counts() == {"dropped:stale": 1, "dropped:worker_lost": 1}
    assert ledger.check() == {"dropped:stale": 1, "dropped:worker_lost": 1}


def test_never_issued_is_not_pending():
    assert not Ledger().is_pending(3)


@pytest.mark.parametrize("close", [
    lambda ledger: ledger.trained(5),
    lambda ledger: ledger.dropped(5, "stale"),
], ids=["trained", "dropped"])
def test_closing_an_id_never_issued_raises(close):
    ledger = Ledger()
    with pytest.raises(LedgerError, match="prompt 5"):
        close(ledger)
    assert ledger.status == {}  # the failed call left nothing behind


@pytest.mark.parametrize("first, second", [
    ("trained", "trained"),
    ("trained", "dropped"),
    ("dropped", "trained"),
    ("dropped", "dropped"),
])
def test_closing_a_closed_id_raises_and_keeps_the_first_outcome(first, second):
    ledger = Ledger()
    ledger.issue(4)
    close = {"trained": lambda: ledger.trained(4), "dropped": lambda: ledger.dropped(4, "late")}
    close[first]()
    outcome = ledger.status[4]
    with pytest.raises(LedgerError, match="prompt 4"):
        close[second]()
    assert ledger.status[4] == outcome


def test_reissuing_a_pending_id_is_allowed():
    ledger = Ledger()
    ledger.issue(9)
    ledger.issue(9)  # e.g. handed out again after a worker was lost, before it closed
    assert ledger.pending() == [9]
    assert ledger.counts() == {PENDING: 1}
    ledger.trained(9)
    assert ledger.check() == {TRAINED: 1}


@pytest.mark.parametrize("close", [
    lambda ledger: ledger.trained(9),
    lambda ledger: ledger.dropped(9, "stale"),
], ids=["trained", "dropped"])
def test_reissuing_a_closed_id_raises(close):
    ledger = Ledger()
    ledger.issue(9)
    close(ledger)
    outcome = ledger.status[9]
    with pytest.raises(LedgerError, match="issued again"):
        ledger.issue(9)
    assert ledger.status[9] == outcome


def test_check_raises_on_pending_unless_allowed():
    ledger = Ledger()
    for p in (3, 1, 2):
        ledger.issue(p)
    ledger.trained(1)
    with pytest.raises(LedgerError, match="not balanced") as info:
        ledger.check()
    assert PENDING in str(info.value)
    assert ledger.check(allow_pending=True) == {TRAINED: 1, PENDING: 2}
    ledger.dropped(2, "stale")
    ledger.trained(3)
    assert ledger.check() == {TRAINED: 2, "dropped:stale": 1}


def test_check_on_an_empty_ledger():
    assert Ledger().check() == {}


def test_check_raises_on_an_unknown_status():
    ledger = Ledger.from_json({"1": "trained", "2": "lost"})  # e.g. a corrupt checkpoint
    with pytest.raises(LedgerError, match="lost"):
        ledger.check(allow_pending=True)


def test_pending_is_sorted():
    ledger = Ledger()
    ids = list(range(50))
    random.Random(1).shuffle(ids)
    for p in ids:
        ledger.issue(p)
    for p in ids[:10]:
        ledger.trained(p)
    assert ledger.pending() == sorted(ids[10:])


def test_json_round_trip():
    ledger = Ledger()
    for p in range(6):
        ledger.issue(p)
    ledger.trained(0)
    ledger.dropped(1, "stale")
    ledger.dropped(2, "too_long")
    data = json.loads(json.dumps(ledger.to_json()))  # as a checkpoint stores it
    assert all(isinstance(k, str) for k in data)
    back = Ledger.from_json(data)
    assert back.status == ledger.status
    assert all(isinstance(k, int) for k in back.status)
    assert back.pending() == [3, 4, 5]
    assert back.counts() == ledger.counts()
    # The restored ledger keeps enforcing the rules.
    with pytest.raises(LedgerError):
        back.trained(0)
    with pytest.raises(LedgerError):
        back.issue(1)
    back.trained(3)
    assert back.is_pending(4) and not back.is_pending(3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_over_a_random_sequence(seed):
    """issued = trained + dropped + pending after every operation, legal or not."""
    rng = random.Random(seed)
    ledger = Ledger()
    model: dict[int, str] = {}  # what the ledger should hold
    raised = 0
    for _ in range(400):
        p = rng.randrange(60)
        op = rng.choice(["issue", "issue", "trained", "dropped"])
        before = dict(ledger.status)
        current = model.get(p)
        legal = current in (None, PENDING) if op == "issue" else current == PENDING
        try:
            if op == "issue":
                ledger.issue(p)
            elif op == "trained":
                ledger.trained(p)
            else:
                ledger.dropped(p, rng.choice(["stale", "worker_lost", "too_long"]))
        except LedgerError:
            assert not legal, f"{op}({p}) raised, but {p} was {current}"
            assert ledger.status == before  # a refused call changes nothing
            raised += 1
        else:
            assert legal, f"{op}({p}) accepted, but {p} was {current}"
            model[p] = ledger.status[p]
        assert ledger.status == model
        counts = ledger.counts()
        trained, dropped = _closed(counts)
        pending = ledger.pending()
        assert len(model) == trained + dropped + len(pending)
        assert counts.get(PENDING, 0) == len(pending)
        assert pending == sorted(p for p, s in model.items() if s == PENDING)
        ledger.check(allow_pending=True)
    assert raised > 0 and len(model) > 30  # the sequence hit both legal and illegal calls
    # Drain: close what is left; the ledger then balances with nothing pending.
    for p in ledger.pending():
        ledger.trained(p)
    trained, dropped = _closed(ledger.check())
    assert trained + dropped == len(model)


def test_simulated_run_trains_steps_times_samples():
    """A run's shape: ids handed out in batches, some dropped and replaced, some in flight at
    each step's end, a checkpoint round trip mid-run; at the end steps x samples_per_step are
    trained and nothing is pending."""
    rng = random.Random(0)
    steps, samples_per_step = 12, 8
    ledger = Ledger()
    next_id = 0
    in_flight: list[int] = []
    dropped = 0
    for step in range(steps):
        trained_this_step = 0
        while trained_this_step < samples_per_step:
            while len(in_flight) < samples_per_step + 4:  # keep the workers busy
                ledger.issue(next_id)
                in_flight.append(next_id)
                next_id += 1
            p = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.2:
                ledger.dropped(p, "stale")
                dropped += 1
            else:
                ledger.trained(p)
                trained_this_step += 1
        counts = ledger.check(allow_pending=True)
        assert counts[TRAINED] == (step + 1) * samples_per_step
        assert ledger.pending() == sorted(in_flight)
        if step == steps // 2:  # checkpoint and resume
            ledger = Ledger.from_json(json.loads(json.dumps(ledger.to_json())))
    for p in in_flight:  # the run ends: what is still out is dropped
        ledger.dropped(p, "run_ended")
    counts = ledger.check()
    assert counts[TRAINED] == steps * samples_per_step
    assert counts.get("dropped:stale", 0) == dropped
    assert counts["dropped:run_ended"] == len(in_flight)
    assert sum(counts.values()) == next_id
