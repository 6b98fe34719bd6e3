"""services/alarm.py: the over-optimisation alarm's rule on hand-computed sequences."""

from __future__ import annotations

import pytest

from services.alarm import ALARM, OK, WARNING, Alarm, replay

# halflife 1: a = 1 - 2^-1 = 0.5, so S_t = (S_{t-1} + D_t) / 2, exact in binary
PARAMS = {"warmup": 2, "halflife": 1.0, "warning": 0.5, "threshold": 1.0, "patience": 2}
D = [4.0, 2.0, 1.0, 4.0, 6.0, 6.0, 0.0]
#      S: 4    3    2    3    4.5  5.25  2.625
#  floor: -    3    2    2    2    2     2
#  score: 0    0    0    0.5  1.25 1.625 0.3125
WANT = [(0.0, OK), (0.0, OK), (0.0, OK), (0.5, WARNING), (1.25, WARNING), (1.625, ALARM),
        (0.3125, ALARM)]


def test_the_score_and_state_step_by_step():
    alarm, got = Alarm(**PARAMS), []
    for step, d in enumerate(D, 1):
        state = alarm.update(step, d)
        got.append((alarm.score, state))
    assert got == WANT
    # fired after 2 steps in a row at >= 1.0 (steps 5, 6); latched at step 7 (score 0.3125);
    # the last ok step stays the one before the score left ok
    assert (alarm.fired_at, alarm.last_ok, alarm.floor, alarm.smoothed) == (6, 3, 2.0, 2.625)
    assert alarm.figures() == {"alarm/score": 0.3125, "alarm/state": 2.0}


def test_replay_and_json_give_the_same_alarm():
    alarm = replay(enumerate(D, 1), **PARAMS)
    assert alarm.fired_at == 6
    again = Alarm.from_json(alarm.to_json())
    assert again == alarm
    assert again.update(8, 0.0) == ALARM


@pytest.mark.parametrize("disagreements", [[0.0] * 6, [1.0] * 6])
def test_no_rise_no_alarm(disagreements):
    """Constant disagreement (or none: one member, or members that agree) scores 0."""
    alarm = replay(enumerate(disagreements, 1), **PARAMS)
    assert (alarm.score, alarm.state, alarm.fired_at, alarm.last_ok) == (0.0, OK, None, 6)


def test_patience_needs_steps_in_a_row():
    """Above the threshold, then below, then above: the count starts again."""
    alarm = replay(enumerate([2.0, 2.0, 6.0, 2.0, 6.0], 1), **{**PARAMS, "halflife": 1e-9})
    # halflife ~0: S_t = D_t; floor 2; scores 0, 0, 2, 0, 2: never two in a row
    assert (alarm.fired_at, alarm.state, alarm.score) == (None, WARNING, 2.0)
