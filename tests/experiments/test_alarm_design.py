"""experiments/alarm.py's measures on hand-made runs: the ground truth from gold, the alarm's
detections and leads, the recommended checkpoint's share, and the Wilson interval."""

from __future__ import annotations

import math

import pytest

from experiments.alarm import goal_status, ground_truth, score, wilson

PARAMS = {"warmup": 1, "halflife": 1e-9, "warning": 0.25, "threshold": 0.5, "patience": 1}
GOLD = {5: 0.25, 10: 0.5, 15: 0.75, 20: 0.625, 25: 0.25}  # peak at 15; 0.625 < 0.9 x 0.75


def run(disagreement_from_18: float) -> list[dict]:
    rows = []
    for step in range(1, 26):
        r = {"step": step, "reward/proxy": 0.0, "kl/init_k1": float(step),
             "reward/disagreement": 1.0 if step < 18 else disagreement_from_18}
        if step in GOLD:
            r.update({"eval/gold": GOLD[step], "eval/kl_init": float(step)})
        rows.append(r)
    return rows


def test_ground_truth_finds_the_peak_and_the_fall():
    t = ground_truth(run(2.0), every=5, g0=0.0)
    assert (t["peak"], t["fall"]) == (15, 20)
    flat = [dict(r, **({"eval/gold": 0.5} if "eval/gold" in r else {})) for r in run(1.0)]
    assert ground_truth(flat, 5, 0.0)["fall"] is None  # never below 0.9 x its peak


def test_score_counts_a_detection_its_lead_and_the_recommended_checkpoint():
    """Disagreement doubles at step 18: with halflife ~0 the score is 1.0 there, the alarm
    fires at 18, its last ok step is 17, so the recommended checkpoint is step 15 (the peak);
    gold fell at the eval point of step 20: lead 2 steps and 2 nats of KL."""
    runs = {"overopt": [run(2.0)], "penalised": [run(1.0)]}
    truth = [("overopt", 0, ground_truth(runs["overopt"][0], 5, 0.0)),
             ("penalised", 0, {**ground_truth(runs["penalised"][0], 5, 0.0), "fall": None})]
    s = score(truth, runs, PARAMS)
    over, clean = s["runs"]
    assert (over["alarm"], over["lead_steps"], over["lead_kl"], over["recommended"]) == (
        18, 2, 2.0, 15)
    assert over["kept_share"] == 1.0 and over["final_share"] == pytest.approx(1 / 3)
    assert clean["alarm"] is None and clean["recommended"] == 25  # no alarm: the final policy
    assert (s["overoptimised"], s["clean"], s["detected"], s["false_alarms"]) == (1, 1, 1, 0)
    late = score(truth, runs, {**PARAMS, "patience": 3})  # fires at 20: on time, lead 0
    assert late["runs"][0]["alarm"] == 20 and late["detected"] == 1


def test_wilson_interval_by_hand():
    # k = 0, n = 7, z = 1.96: centre = (z^2 / 14) / (1 + z^2 / 7) = half-width = 0.17717
    lo, hi = wilson(0, 7)
    assert lo == 0.0 and hi == pytest.approx(0.35434, abs=1e-5)
    lo, hi = wilson(7, 7)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.35434, abs=1e-5)
    assert all(math.isnan(x) for x in wilson(0, 0))


@pytest.mark.parametrize("value,lo,hi,goal,at_least,want", [
    (0.9, 0.85, 0.95, 0.8, True, ("met", "decided")),
    (0.9, 0.6, 1.0, 0.8, True, ("met", "not decided")),
    (0.5, 0.2, 0.7, 0.8, True, ("not met", "decided")),
    (0.0, 0.0, 0.35, 0.1, False, ("met", "not decided")),
    (0.0, 0.0, 0.05, 0.1, False, ("met", "decided")),
    (0.5, 0.3, 0.7, 0.1, False, ("not met", "decided")),
    (math.nan, math.nan, math.nan, 0.8, True, ("no data", "not decided")),
])
def test_goal_status(value, lo, hi, goal, at_least, want):
    assert goal_status(value, lo, hi, goal, at_least) == want
