"""Power before runs: each paired claim's plan (experiments.common.Power), and
`raylign experiment` refusing a full run whose seeds cannot decide its claims (exit 2), before
any work starts."""

from __future__ import annotations

import math

import pytest

import experiments
from experiments.common import Power
from services.cli import main


def test_a_power_plan_by_hand():
    p = Power("d", effect=0.1, sd=0.1, runs_per_seed=2, run_length=0.5)
    # n = 10: sqrt(10) = 3.162 >= t975(9) + z(0.8) = 2.262 + 0.842; n = 9: 3.0 < 2.306 + 0.842
    assert p.seeds() == 10
    assert math.isclose(p.at(10), 0.8, abs_tol=0.03)
    assert math.isclose(p.hours(10), 10 * 2 * 0.5 * 2.3 / 60)
    assert p.decidable(budget_hours=0.4) and not p.decidable(budget_hours=0.38)
    assert p.at(1) == 0.0  # one seed has no interval (a quick run's plan)


def test_every_paired_design_states_its_power():
    for name in ("ensembles", "elastic", "soup", "offpolicy", "together"):
        plan = experiments.power_plan(experiments.module(name), 4)
        assert plan and all(0 <= p["power"] <= 1 and p["seeds_for_80"] >= 2 for p in plan), name


def test_a_full_run_that_cannot_decide_is_refused_with_the_numbers(capsys):
    assert main(["experiment", "ensembles"]) == 2
    err = capsys.readouterr().err
    assert "4 seeds give less than 80% power" in err and "not decidable within budget" in err
    # (152 seeds x 3 runs + 18 tuning runs) x 2.3 min = 18.2 h
    assert "80% needs 152 seeds, 18.2 h (over the 3 h budget)" in err


def test_a_decidable_claim_is_told_the_seeds_it_needs(monkeypatch):
    mod = experiments.module("soup")
    monkeypatch.setattr(mod, "POWER", (Power("d", effect=0.1, sd=0.1, runs_per_seed=2),))
    with pytest.raises(experiments.Underpowered, match="pass --seeds 10, or --underpowered"):
        experiments.run_experiment("soup", seeds=6)
