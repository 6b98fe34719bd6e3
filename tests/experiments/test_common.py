"""The experiments' statistics helpers (experiments/common.py) on small hand-computed inputs."""

from __future__ import annotations

import math
import statistics

import pytest

from experiments.common import (
    aggregate_scores,
    bon_curve,
    bootstrap_ci,
    bootstrap_diff_ci,
    column,
    dominated_share,
    eval_points,
    finite,
    fit_bon,
    fit_rl,
    fmt,
    fmt_ci,
    least_squares,
    mean_curve,
    mean_se,
    pareto_front,
    series,
    smooth,
    window_mean,
)

nan = math.nan


def is_nan(x) -> bool:
    return x != x


# --- curves ------------------------------------------------------------------------------------


def test_series_and_column_skip_missing_and_skipped_rows():
    rows = [{"step": 1, "a": 1.0}, {"step": 2}, {"step": 3, "a": 3.0, "skipped": True},
            {"step": 4, "a": "4"}]
    assert series(rows, "a") == [(1, 1.0), (4, 4.0)]
    assert column(rows, "a") == [1.0, 4.0]
    assert series(rows, "b") == [] and column(rows, "b") == []


def test_window_mean_covers_the_last_width_steps():
    rows = [{"step": s, "a": float(s)} for s in range(1, 6)]
    assert window_mean(rows, "a", 4, 2) == 3.5  # steps 3, 4
    assert window_mean(rows, "a", 4, 1) == 4.0
    assert window_mean(rows, "a", 5, 10) == 3.0  # the window is cut at step 1
    assert is_nan(window_mean(rows, "a", 10, 2))  # no step in 9..10


def test_smooth_is_a_trailing_moving_average():
    assert smooth([1.0, 2.0, 3.0, 4.0]) == [1.0, 1.5, 2.0, 3.0]
    assert smooth([1.0, 5.0, 3.0], k=1) == [1.0, 5.0, 3.0]
    assert smooth([2.0, 4.0, 6.0], k=2) == [2.0, 3.0, 5.0]
    assert smooth([]) == []


def test_eval_points_pair_drift_with_window_means():
    rows = [{"step": s, "reward/gold": float(s), "reward/proxy": 2.0 * s, "kl/init_k1": 0.1 * s}
            for s in range(1, 5)]
    rows[1] |= {"drift/ppl_policy": 12.0, "drift/ppl_init": 10.0}
    rows[3] |= {"drift/ppl_policy": 15.0, "drift/ppl_init": 10.0}
    pts = eval_points(rows, every=2)
    assert [p["step"] for p in pts] == [2, 4]
    assert pts[0] == pytest.approx({"step": 2, "ppl_drift": 2.0, "kl": 0.15, "gold": 1.5,
                                    "proxy": 3.0})
    assert pts[1] == pytest.approx({"step": 4, "ppl_drift": 5.0, "kl": 0.35, "gold": 3.5,
                                    "proxy": 7.0})


def test_mean_curve_uses_steps_present_in_every_seed():
    runs = [[{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}],
            [{"step": 2, "a": 4.0}, {"step": 3, "a": 1.0}]]
    steps, means, ses = mean_curve(runs, "a")
    assert steps == [2] and means == [3.0]
    assert ses == [pytest.approx(1.0)]  # stdev(2, 4) / sqrt(2) = sqrt(2) / sqrt(2)
    assert mean_curve([], "a") == ([], [], [])


# --- mean, standard error, bootstrap -----------------------------------------------------------


def test_mean_se():
    m, se = mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))  # stdev 1
    assert mean_se([1.0, nan, 3.0]) == (2.0, pytest.approx(1.0))  # NaN dropped
    m, se = mean_se([5.0])
    assert m == 5.0 and is_nan(se)  # one seed: no spread
    assert all(is_nan(x) for x in mean_se([])) and all(is_nan(x) for x in mean_se([nan]))


def test_bootstrap_ci():
    assert bootstrap_ci([0.7] * 5) == (0.7, 0.7)
    assert bootstrap_ci([2.0] * 4, stat=max) == (2.0, 2.0)
    # means of 2-resamples of {0, 1} are 0, 0.5, 1 w.p. 1/4, 1/2, 1/4: with 2000 resamples the
    # 2.5% and 97.5% quantiles are the extremes
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 10.0])
    assert 1.0 <= lo < 4.0 < hi <= 10.0  # around the mean 4
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0, 10.0]) == (lo, hi)  # fixed seed
    assert all(is_nan(x) for x in bootstrap_ci([1.0]))
    assert all(is_nan(x) for x in bootstrap_ci([1.0, nan]))


def test_bootstrap_diff_ci():
    assert bootstrap_diff_ci([3.0, 3.0, 3.0], [1.0, 1.0]) == (2.0, 2.0)
    assert bootstrap_diff_ci([0.0, 1.0], [0.0, 0.0]) == (0.0, 1.0)
    lo, hi = bootstrap_diff_ci([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    assert 0.0 <= lo <= 1.5 <= hi <= 3.0  # mean(a) - mean(b) = 1.5; resamples span 0..3
    assert all(is_nan(x) for x in bootstrap_diff_ci([1.0], [1.0, 2.0]))
    assert all(is_nan(x) for x in bootstrap_diff_ci([1.0, 2.0], [1.0, nan]))


def test_fmt():
    assert fmt(1.23456) == "1.235"
    assert fmt(1.23456, 0.1) == "1.235 ± 0.100"
    assert fmt(2.0, nan) == "2.000" and fmt(2.0, None, digits=1) == "2.0"
    assert fmt(nan, 0.1) == "n/a"
    assert fmt_ci(0.1, 0.25, digits=2) == "[0.10, 0.25]" and fmt_ci(nan, nan) == "n/a"


def test_finite_replaces_nan_and_inf_recursively():
    obj = {"a": nan, "b": [1.0, math.inf, (2, -math.inf)], "c": "x", "d": {"e": 0.5}}
    assert finite(obj) == {"a": None, "b": [1.0, None, [2, None]], "c": "x", "d": {"e": 0.5}}


# --- fits --------------------------------------------------------------------------------------


def test_least_squares_exact_line():
    # y = 2 f0 + 3 f1 exactly
    coef, r2 = least_squares([[1, 0], [0, 1], [1, 1], [2, 1]], [2, 3, 5, 7])
    assert coef == pytest.approx([2.0, 3.0]) and r2 == pytest.approx(1.0)


def test_least_squares_residuals():
    # no intercept: c = sum(xy) / sum(x^2) = 11/14; SS_res = 5/14, SS_tot = 2/3
    coef, r2 = least_squares([[1], [2], [3]], [1, 2, 2])
    assert coef == pytest.approx([11 / 14]) and r2 == pytest.approx(13 / 28)


def test_least_squares_degenerate():
    coef, r2 = least_squares([[1, 0], [0, 1]], [1, 2])  # fewer points than coefficients + 1
    assert all(is_nan(c) for c in coef) and len(coef) == 2 and is_nan(r2)
    coef, r2 = least_squares([[1], [1], [1]], [2, 2, 2])  # constant y: R^2 undefined
    assert coef == pytest.approx([2.0]) and is_nan(r2)


def test_fit_rl_recovers_the_gao_rl_form():
    alpha, beta = 1.0, 0.5
    d = [0.0, 0.5, 1.0, 2.0, 3.0]  # d = 0 contributes R = 0
    r = [x * (alpha - beta * math.log(x)) if x > 0 else 0.0 for x in d]
    fit = fit_rl(d, r)
    assert fit["alpha"] == pytest.approx(alpha) and fit["beta"] == pytest.approx(beta)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 5
    assert fit["form"] == "d*(alpha - beta*log d)"


def test_fit_bon_recovers_the_gao_bon_form():
    d = [0.5, 1.0, 2.0, 3.0]
    fit = fit_bon(d, [x * (2.0 - 0.25 * x) for x in d])
    assert fit["alpha"] == pytest.approx(2.0) and fit["beta"] == pytest.approx(0.25)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 4
    assert fit["form"] == "d*(alpha - beta*d)"


# --- Pareto fronts -----------------------------------------------------------------------------


def test_pareto_front_low_drift_high_reward():
    pts = [(1.0, 1.0), (2.0, 3.0), (0.5, 0.5), (2.0, 2.0), (3.0, 3.0), (1.5, 2.5), (1.0, 0.8)]
    assert pareto_front(pts) == [(0.5, 0.5), (1.0, 1.0), (1.5, 2.5), (2.0, 3.0)]
    assert pareto_front([(1.0, 1.0)]) == [(1.0, 1.0)]
    assert pareto_front([]) == []


def test_dominated_share_is_strict():
    # (1,1) by (1,2): same drift, more reward; (2,2) by (1,2): less drift; (0,5): by none
    assert dominated_share([(1, 1), (2, 2), (0, 5)], [(1, 2), (2, 2)]) == pytest.approx(2 / 3)
    assert dominated_share([(2, 2)], [(2, 2)]) == 0.0  # an equal point does not dominate
    assert dominated_share([(2, 2)], []) == 0.0
    assert is_nan(dominated_share([], [(0, 9)]))


# --- best-of-n and ensembles -------------------------------------------------------------------


def test_bon_curve_order_statistics():
    # prompt 1: proxy order 1 < 2 < 3 picks gold 30, 10, 20; best-of-n gold for n = 1, 2, 3:
    # mean 20, (10 + 2*20)/3 = 50/3, 20; proxy 2, (2 + 2*3)/3 = 8/3, 3.
    # prompt 2: proxy 3, 2, 1 -> in proxy order gold 6, 0, 0: gold 2, 0, 0; proxy 2, 8/3, 3.
    proxy = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]
    gold = [[30.0, 10.0, 20.0], [0.0, 0.0, 6.0]]
    c = bon_curve(proxy, gold, [1, 2, 3])
    assert c["n"] == [1, 2, 3]
    assert c["gold_at_n1"] == pytest.approx(11.0) and c["proxy_at_n1"] == pytest.approx(2.0)
    assert c["gold"] == pytest.approx([0.0, 25 / 3 - 11, -1.0])
    assert c["proxy"] == pytest.approx([0.0, 2 / 3, 1.0])
    g1, g2 = c["per_prompt_gold"]
    assert g1 == pytest.approx([20.0, 50 / 3, 20.0]) and g2 == pytest.approx([2.0, 0.0, 0.0])
    # d = sqrt(KL_bon(n)), KL_bon(n) = log n - (n - 1)/n
    assert c["d"] == pytest.approx([0.0, math.sqrt(math.log(2) - 1 / 2),
                                    math.sqrt(math.log(3) - 2 / 3)])


def test_aggregate_scores_per_prompt_and_sample():
    member = [[[1.0, 3.0]], [[3.0, 5.0]]]  # K=2 members, P=1 prompt, N=2 samples
    assert aggregate_scores(member, "mean") == [[2.0, 4.0]]
    assert aggregate_scores(member, "min") == [[1.0, 3.0]]
    assert aggregate_scores(member, "single") == [[1.0, 3.0]]
    # uwo: mean - 0.5 * var (ddof 0: var of (1, 3) and of (3, 5) is 1; exact in binary)
    assert aggregate_scores(member, "uwo", uwo_lambda=0.5, ddof=0) == [[1.5, 3.5]]
    # ddof 1: var 2
    assert aggregate_scores(member, "uwo", uwo_lambda=0.5, ddof=1) == [[1.0, 3.0]]


def test_paired_t_ci_by_hand():
    from experiments.common import paired_t_ci

    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(2) = 4.303
    lo, hi = paired_t_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(x) for x in paired_t_ci([1.0], [0.0]))


def test_t975_table_and_expansion():
    from experiments.common import t975

    assert t975(1) == 12.706 and t975(10) == 2.228
    # exact values (scipy.stats.t.ppf(0.975, df)): 11 2.2010, 12 2.1788, 20 2.0860, 30 2.0423
    for df, exact in ((11, 2.2010), (12, 2.1788), (20, 2.0860), (30, 2.0423)):
        assert t975(df) == pytest.approx(exact, abs=0.003)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def test_paired_t_ci_beyond_ten_pairs_uses_t_not_normal():
    from experiments.common import paired_t_ci, t975

    a = [float(i % 3) for i in range(12)]  # differences 0, 1, 2 repeated: mean 1
    lo, hi = paired_t_ci(a, [0.0] * 12)
    sd = math.sqrt(sum((x - 1) ** 2 for x in a) / 11)
    assert (lo, hi) == pytest.approx((1 - t975(11) * sd / math.sqrt(12),
                                      1 + t975(11) * sd / math.sqrt(12)))


def test_cluster_bootstrap_resamples_seeds_not_prompts():
    from experiments.common import cluster_bootstrap_ci

    # every seed's prompts agree: a cluster's units carry one seed's worth of information
    clusters = [[1.0] * 100, [0.0] * 100, [1.0] * 100]
    lo, hi = cluster_bootstrap_ci(clusters)
    assert lo == 0.0 and hi == 1.0  # three seeds: all-0 and all-1 resamples both occur
    naive = bootstrap_ci([x for c in clusters for x in c])  # 300 "independent" units
    assert hi - lo > 5 * (naive[1] - naive[0])
    assert cluster_bootstrap_ci([[1.0, 0.0], [0.5]]) != cluster_bootstrap_ci([[1.0]] * 2)
    assert cluster_bootstrap_ci([[0.5, 0.5]] * 4) == (0.5, 0.5)
    assert all(math.isnan(x) for x in cluster_bootstrap_ci([[1.0, 0.0]]))


def test_verdict_rule():
    from experiments.common import HELD_SMALLER, verdict

    e = 0.25  # smallest effect of interest; every bound below is exact in binary
    assert verdict((0.125, 0.5), e) == "held"  # above 0, estimate 0.3125 >= e
    assert verdict((0.125, 0.375), e) == "held"  # estimate exactly e
    assert verdict((0.125, 0.3125), e) == HELD_SMALLER  # estimate 0.21875 < e
    assert verdict((0.125, 0.5), e, estimate=0.125) == HELD_SMALLER  # the estimate given
    assert verdict((0.0625, 0.125), e) == HELD_SMALLER  # above 0 and below e: not refuted
    assert verdict((0.0, 0.125), e) == "refuted"  # 0 is inside: below e only
    assert verdict((-0.5, -0.125), e) == "refuted"  # the opposite effect
    assert verdict((-0.125, 0.1875), e) == "refuted"  # no effect that size
    assert verdict((-0.125, 0.25), e) == "inconclusive"  # e itself is inside
    assert verdict((0.0, 0.25), e) == "inconclusive"  # 0 and e both inside
    assert verdict((-0.125, 0.5), e) == "inconclusive"
    assert verdict((math.nan, math.nan), e) == "inconclusive"
    with pytest.raises(ValueError, match="smallest_effect"):
        verdict((0.1, 0.2), smallest_effect=0.0)


def test_seed_rows_flatten_arms_and_seeds():
    from experiments.common import seed_rows

    runs = {"a": [[{"step": 1, "reward/gold": 0.1, "x": 9}], [{"step": 1, "reward/gold": 0.2}]],
            "b": [[{"step": 1}, {"step": 2, "reward/gold": 0.3}]]}
    assert seed_rows(runs, ["reward/gold"]) == [
        {"arm": "a", "seed": 0, "step": 1, "reward/gold": 0.1},
        {"arm": "a", "seed": 1, "step": 1, "reward/gold": 0.2},
        {"arm": "b", "seed": 0, "step": 1},
        {"arm": "b", "seed": 0, "step": 2, "reward/gold": 0.3}]


def test_provenance_is_the_full_commit_and_untracked_files_make_it_dirty(tmp_path):
    import subprocess

    from experiments import provenance

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, text=True, capture_output=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD").strip()
    assert len(head) == 40 and provenance(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "new.py").write_text("y = 2\n")  # untracked: counts
    p = provenance(tmp_path)
    assert p["commit"] == head + "+dirty" and p["dirty"] and p["untracked"] == ["new.py"]
    (tmp_path / "new.py").unlink()
    (tmp_path / "a.py").write_text("x = 3\n")  # a tracked change: its diff is recorded
    p = provenance(tmp_path)
    assert p["dirty"] and "+x = 3" in p["diff"] and p["untracked"] == []


def test_a_full_experiment_refuses_a_dirty_tree_before_any_work(monkeypatch, tmp_path):
    import experiments

    monkeypatch.setattr(experiments, "provenance",
                        lambda: {"commit": "abc1234+dirty", "dirty": True, "diff": "..."})
    with pytest.raises(experiments.DirtyTree, match="--allow-dirty"):
        experiments.run_experiment("overopt", out=tmp_path / "out", runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_heldout_points_pair_gold_and_kl_of_one_evaluation():
    from experiments.common import heldout_points

    rows = [{"step": s, "reward/proxy": float(s)} for s in range(1, 7)]
    rows[2].update({"eval/gold": 0.5, "eval/kl_init": 4.0})
    rows[5].update({"eval/gold": 0.2, "eval/kl_init": -0.1})  # a negative k1 estimate: d = 0
    assert heldout_points(rows, 3) == [
        {"step": 3, "gold": 0.5, "kl": 4.0, "d": 2.0, "proxy": 2.0},
        {"step": 6, "gold": 0.2, "kl": -0.1, "d": 0.0, "proxy": 5.0}]


def test_loso_errors_by_hand():
    from experiments.common import loso_errors

    # linear through the origin: seeds on y = d and y = 3d; leaving one out fits the other
    seeds = [([1.0, 2.0], [1.0, 2.0]), ([1.0, 2.0], [3.0, 6.0])]
    # fit on seed 1 (slope 3) predicts 3, 6 for seed 0: errors 4, 16 -> 10; and back: 10
    assert loso_errors(seeds, "linear") == pytest.approx([10.0, 10.0])
    # an exact RL-form curve shared by 3 seeds: every left-out seed is predicted exactly
    curve = ([0.5, 1.0, 2.0, 3.0], [d * (1.0 - 0.5 * math.log(d)) for d in (0.5, 1.0, 2.0, 3.0)])
    assert loso_errors([curve] * 3, "rl") == pytest.approx([0.0] * 3, abs=1e-20)
    assert all(e > 1e-4 for e in loso_errors([curve] * 3, "linear"))


def test_overopt_decline_rule():
    from experiments.overopt import _declines

    assert _declines({"gain": [0.1, 0.5, 0.3], "proxy": [1.0, 2.0, 3.0]})  # 0.3 <= 0.4
    assert not _declines({"gain": [0.1, 0.5, 0.45], "proxy": [1.0, 2.0, 3.0]})  # not 20% off
    assert not _declines({"gain": [0.1, 0.5, 0.3], "proxy": [1.0, 2.0, 1.5]})  # proxy fell too
    assert not _declines({"gain": [-0.1, -0.2, -0.5], "proxy": [1.0, 2.0, 3.0]})  # no rise
    assert not _declines({"gain": [0.5], "proxy": [1.0]})


def test_heldout_points_carry_the_perplexity_drift_of_the_same_evaluation():
    from experiments.common import heldout_points

    rows = [{"step": s, "reward/proxy": 1.0} for s in (1, 2)]
    rows[1].update({"eval/gold": 0.4, "eval/kl_init": 9.0, "drift/ppl_policy": 5.5,
                    "drift/ppl_init": 4.0})
    assert heldout_points(rows, 2) == [
        {"step": 2, "gold": 0.4, "kl": 9.0, "d": 3.0, "proxy": 1.0, "ppl_drift": 1.5}]


def test_front_at_interpolates_the_pareto_front_and_is_flat_beyond_it():
    from experiments.common import front_at

    # (1, 0.1) and (3, 0.2) are dominated; the front is (0, 0.2), (2, 0.4), (4, 0.8)
    pts = [(2.0, 0.4), (0.0, 0.2), (4.0, 0.8), (1.0, 0.1), (3.0, 0.2)]
    assert front_at(pts, 1.0) == pytest.approx(0.3)
    assert front_at(pts, 3.0) == pytest.approx(0.6)
    assert front_at(pts, 2.0) == pytest.approx(0.4)
    assert front_at(pts, 9.0) == pytest.approx(0.8)  # past the front: its best reward
    assert front_at([(1.0, 0.5), (2.0, 0.7)], 0.0) == pytest.approx(0.5)  # before it: flat
    assert is_nan(front_at([], 1.0))


def test_mean_after_is_the_trapezoid_area_over_the_span():
    from experiments.common import mean_after

    pts = [{"step": s, "g": g} for s, g in ((5, 9.0), (10, 0.0), (15, 1.0), (25, 3.0))]
    # from step 10: (5 * (0 + 1) / 2 + 10 * (1 + 3) / 2) / 15 = 22.5 / 15
    assert mean_after(pts, "g", 10) == pytest.approx(1.5)
    assert mean_after(pts, "g", 25) == 3.0
    assert is_nan(mean_after(pts, "g", 30))


def test_joint_verdict_any_and_all():
    from experiments.common import HELD_SMALLER, joint_verdict

    assert joint_verdict(["held", "held"], refuted_by="any") == "held"
    assert joint_verdict(["held", "refuted"], refuted_by="any") == "refuted"
    assert joint_verdict(["held", "refuted"], refuted_by="all") == "inconclusive"
    assert joint_verdict(["refuted", "refuted"], refuted_by="all") == "refuted"
    assert joint_verdict(["held", "inconclusive"], refuted_by="any") == "inconclusive"
    assert joint_verdict(["held", HELD_SMALLER], refuted_by="any") == HELD_SMALLER
    with pytest.raises(ValueError, match="refuted_by"):
        joint_verdict(["held"], refuted_by="most")


def test_heldout_gold_at_end_averages_the_eval_points_in_the_last_steps():
    from experiments.common import heldout_gold_at_end

    rows = [{"step": s, "reward/proxy": 0.0} for s in range(1, 11)]
    for s, g in ((5, 0.1), (8, 0.4), (10, 0.6)):
        rows[s - 1].update({"eval/gold": g, "eval/kl_init": 1.0})
    assert heldout_gold_at_end(rows, 1, 10, 3) == pytest.approx(0.5)  # steps 8 and 10
    assert heldout_gold_at_end(rows, 1, 10, 10) == pytest.approx(1.1 / 3)
    assert is_nan(heldout_gold_at_end(rows, 1, 10, 0))  # no eval point in the window


def test_power_and_the_seeds_it_needs():
    """Hand-checked with the t table: sd = effect, so n must satisfy sqrt(n) >= t975(n-1) + z80
    (n = 9: 3.000 < 2.306 + 0.842; n = 10: 3.162 >= 2.262 + 0.842)."""
    from experiments.common import power_at, sd_from_t_ci, seeds_for_power, t975

    assert seeds_for_power(1.0, 1.0) == 10 and seeds_for_power(0.5, 1.0) > 30
    assert power_at(1.0, 1.0, 10) >= 0.8 > power_at(1.0, 1.0, 9)
    assert power_at(1.0, 1.0, 10) == pytest.approx(
        statistics.NormalDist().cdf(math.sqrt(10) - t975(9)))
    # a t-interval of 4 seeds with half-width t975(3) * 2 / 2: sd 2
    half = t975(3) * 2 / 2
    assert sd_from_t_ci((1 - half, 1 + half), 4) == pytest.approx(2.0)


def test_tune_gives_equal_budgets_on_tuning_seeds_and_keeps_each_methods_best(tmp_path):
    from experiments.common import TUNE_SEED0, Ctx, tune

    calls = []

    def runner(ctx, arm, seed, overrides):  # rows whose "x" is the setting's value + seed
        calls.append((arm, seed))
        return [{"x": float(overrides[0]) + (seed - TUNE_SEED0) / 10}]

    ctx = Ctx(name="t", quick=True, seeds=3, out=tmp_path, runs=tmp_path)
    methods = {"a": {"a1": ["1"], "a2": ["3"]}, "b": {"b1": ["2"], "b2": ["0"]}}
    out = tune(ctx, methods, lambda rows: rows[-1]["x"], seeds=2, runner=runner)
    assert out["a"] == {"best": "a2", "scores": {"a1": 1.05, "a2": 3.05}}
    assert out["b"]["best"] == "b1" and out["b"]["scores"]["b2"] == pytest.approx(0.05)
    assert {s for _, s in calls} == {TUNE_SEED0, TUNE_SEED0 + 1}  # never a verdict seed
    assert sorted(a for a, _ in calls) == ["tune-a1"] * 2 + ["tune-a2"] * 2 + ["tune-b1"] * 2 + [
        "tune-b2"] * 2
    with pytest.raises(ValueError, match="unequal tuning budgets"):
        tune(ctx, {"a": {"a1": ["1"]}, "b": methods["b"]}, lambda r: 0.0, 1, runner=runner)
