"""Reward-model ensembles (Coste et al. 2023): a single proxy vs WCO (min) vs UWO.

Design (written before the run):
- Check first (a minute, no training): does the minimum over the K members still prefer the
  world's spam probe (a string of praise words, gold 0) to a fluent positive review? If it
  does, every member shares the exploit and no aggregation of them can remove it: then the
  members' diversity, not the aggregation, is what limits this experiment (a world recipe
  change), and the result says so.
- PPO, 50 steps of 32 samples. Methods: single = one member as the proxy, member (seed mod
  K), so that over the seeds "single" is the average over single members, not member 0; min
  (WCO); uwo (mean − λ·var, ddof 1). Held-out gold (`learner.eval_prompts` = 32 stratified
  prompts) every 5 steps.
- Endpoint: held-out gold averaged over the eval points in the last 10 steps, paired by seed.
- Equal tuning budgets (`experiments.common.tune`): three settings per method, each of the
  one knob that holds it back from the proxy: single and min the KL coefficient β in 0, 0.01,
  0.05; uwo λ in 0.1 (Coste et al.'s PPO setting), 0.5, 1.0 at β 0. Each method keeps the
  setting with the highest endpoint over tuning seeds 1000-1001 (never verdict seeds); the
  verdict runs each method's tuned setting on seeds 0.. (each its own prompt order, the same
  for every method).
- Best-of-n on the same held-out prompts (256 SFT samples each): single = the mean over the
  K single members of each member's best-of-256 gold; min; uwo (λ 0.5, ddof 0, their BoN
  setting); per-prompt differences, bootstrap over prompts.

Verdict rules (`experiments.common.verdict`, smallest effect of interest 0.03 gold):
- PPO: the paired t-interval over seeds of (aggregate − single) endpoint gold, for min and for
  uwo: held if held for both; refuted if refuted for both; otherwise inconclusive.
- BoN: the same rule on (aggregate − single) at n = 256, intervals over prompts.

Power (`POWER`; the s.d. of the runs of 2026-11-30, at β 0 and λ 0.1 untuned:
`experiments.common.power_at`, `seeds_for_power`; docs/results/NOTES.md): uwo − single s.d.
0.131: 80% at 0.03 needs 152 seeds (3 verdict runs a seed and 18 tuning runs: about 18 hours
of this machine), 21 at the +0.08 seen; min − single s.d. 0.239: 500 seeds, 42 at +0.11. Not
decidable within the 3-hour budget; `raylign experiment ensembles` says so and does not run.
"""

from __future__ import annotations

import math
import statistics

from experiments.common import (
    Ctx,
    Power,
    aggregate_scores,
    bon_curve,
    bon_samples,
    bootstrap_ci,
    fmt,
    fmt_ci,
    heldout_gold_at_end,
    heldout_points,
    joint_verdict,
    mean_se,
    overrides_for,
    paired_t_ci,
    pyplot,
    run_arm,
    save_fig,
    seed_rows,
    tune,
    verdict,
    world,
)

TITLE = "Reward-model ensembles (Coste et al. 2023)"
PAPER_FIGURE = ("Coste et al. 2023, the PPO training curves: gold score by step for a single "
                "RM and for the WCO / UWO ensembles; the single RM's gold peaks and falls while "
                "the ensembles' does not; and best-of-n gold against KL, ensembles above the "
                "single RM")
CLAIM = {
    "claim": "Ensembles (WCO = min, UWO = mean − λ·var) end PPO with more held-out gold than a "
             "single RM",
    "paper": "Coste et al.: WCO/UWO eliminate over-optimisation in PPO (with a small KL "
             "penalty, at no cost); 5 members, 1.3B policy, 44M RMs",
}
CLAIM_BON = {
    "claim": "Ensembles improve best-of-n gold over a single RM",
    "paper": "Coste et al.: up to 70% more gold with BoN (ensembles vs single RM)",
}
SEEDS = 4
EFFECT = 0.03  # gold: the smallest effect of interest
# s.d. of the per-seed differences in the runs of 2026-11-30 (docs/results/NOTES.md)
POWER = (Power("PPO: uwo − single, final gold", EFFECT, sd=0.131, runs_per_seed=3,
               tuning_runs=18),
         Power("PPO: min − single, final gold", EFFECT, sd=0.239, runs_per_seed=3,
               tuning_runs=18))
TUNE_SEEDS = 2
BETAS = (0.0, 0.01, 0.05)  # single's and min's three settings
LAMBDAS = (0.1, 0.5, 1.0)  # uwo's three
AGGS = ("min", "uwo")
BON_AGGS = {"min": ("min", 0.0), "uwo": ("uwo", 0.5)}


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(4, 50), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "eval_every": ctx.size(2, 5),
            "eval_prompts": ctx.size(8, 32), "endpoint_steps": ctx.size(4, 10),
            "bon_prompts": ctx.size(4, 32), "bon_n": ctx.size(16, 256),
            "tune_seeds": ctx.size(1, TUNE_SEEDS)}


def candidates(z: dict, rm_dirs: list) -> dict[str, dict]:
    """The tuning budgets: {method: {setting: overrides, or a function of the seed}}."""
    common = [f"learner.steps={z['steps']}", f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              f"learner.eval_every={z['eval_every']}",
              f"learner.eval_prompts={z['eval_prompts']}"]

    def single(beta: float):  # member (seed mod K)
        return lambda seed: [*common, f"learner.kl.coef={beta}", "reward.aggregation=single",
                             f"reward.model_dirs=[{rm_dirs[seed % len(rm_dirs)]}]"]
    return {"single": {f"single_b{b}": single(b) for b in BETAS},
            "min": {f"min_b{b}": [*common, f"learner.kl.coef={b}", "reward.aggregation=min"]
                    for b in BETAS},
            "uwo": {f"uwo_l{lam}": [*common, "learner.kl.coef=0", "reward.aggregation=uwo",
                                    f"reward.uwo_lambda={lam}", "reward.ddof=1"]
                    for lam in LAMBDAS}}


def endpoint(z: dict):
    """The endpoint (and tuning score): held-out gold over the last `endpoint_steps`."""
    return lambda rows: heldout_gold_at_end(rows, z["eval_every"], z["steps"],
                                            z["endpoint_steps"])


def spam_check(ctx: Ctx) -> dict:
    """Each member's score of the spam probe and of a fluent review, and their minimum."""
    from tasks.tiny_world import FLUENT, PROBE_PROMPT, SPAM, RewardScorer

    w = world(ctx)
    scores = [RewardScorer(d).score([PROBE_PROMPT] * 2, [SPAM, FLUENT]) for d in w.rm_dirs]
    spam, fluent = [s[0] for s in scores], [s[1] for s in scores]
    return {"spam": spam, "fluent": fluent, "min_spam": min(spam), "min_fluent": min(fluent),
            "min_prefers_spam": min(spam) > min(fluent),
            "members_preferring_spam": sum(a > b for a, b in zip(spam, fluent))}


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    check = spam_check(ctx)
    rm_dirs = world(ctx).rm_dirs
    k = len(rm_dirs)
    tuning = candidates(z, rm_dirs)
    tuned = tune(ctx, tuning, endpoint(z), z["tune_seeds"])
    best = {m: t["best"] for m, t in tuned.items()}
    runs: dict[str, list[list[dict]]] = {m: [] for m in tuning}
    for seed in range(ctx.seeds):  # seeds outermost: a cut-short run has every arm
        for m in tuning:
            runs[m].append(run_arm(ctx, m, seed, overrides_for(tuning[m][best[m]], seed)))

    ends = {arm: [endpoint(z)(r) for r in rs] for arm, rs in runs.items()}
    ppo_ci = {a: paired_t_ci(ends[a], ends["single"]) for a in AGGS}
    ppo_v = {a: verdict(ci, EFFECT) for a, ci in ppo_ci.items()}
    v1 = joint_verdict(ppo_v.values(), refuted_by="all")

    bon = bon_samples(ctx, z["bon_prompts"], z["bon_n"])
    ns = [2**i for i in range(int(math.log2(z["bon_n"])) + 1)]
    singles = [bon_curve(bon["member"][m], bon["gold"], ns) for m in range(k)]
    single_last = [statistics.fmean(c["per_prompt_gold"][p][-1] for c in singles)
                   for p in range(len(bon["gold"]))]
    curves = {"single (mean of members)": {
        "n": ns, "gold": [statistics.fmean(c["gold"][i] for c in singles)
                          for i in range(len(ns))]}}
    bon_ci = {}
    for name, (how, lam) in BON_AGGS.items():
        c = bon_curve(aggregate_scores(bon["member"], how, uwo_lambda=lam, ddof=0), bon["gold"],
                      ns)
        last = [row[-1] for row in c.pop("per_prompt_gold")]
        bon_ci[name] = bootstrap_ci([a - b for a, b in zip(last, single_last)])
        curves[name] = {"n": ns, "gold": c["gold"]}
    bon_v = {a: verdict(ci, EFFECT) for a, ci in bon_ci.items()}
    v2 = joint_verdict(bon_v.values(), refuted_by="all")

    setting = (f"{ctx.label}, {ctx.seeds} seeds × {z['steps']} steps × "
               f"{z['samples_per_step']} samples; tuned on {z['tune_seeds']} other seeds, 3 "
               f"settings each: {', '.join(best.values())}; endpoint: held-out gold "
               f"({z['eval_prompts']} stratified prompts) over the last "
               f"{z['endpoint_steps']} steps; BoN "
               f"{z['bon_prompts']} prompts × N={z['bon_n']}")
    m1 = "; ".join(f"{a} − single {fmt_ci(*ci)} ({ppo_v[a]})" for a, ci in ppo_ci.items())
    m2 = "; ".join(f"{a} − single at n={z['bon_n']} {fmt_ci(*ci)} ({bon_v[a]})"
                   for a, ci in bon_ci.items())
    spam = (f"Spam check: {check['members_preferring_spam']} of {k} members score the spam "
            f"probe above the fluent review; min over members: spam {check['min_spam']:.2f}, "
            f"fluent {check['min_fluent']:.2f}"
            + (" — the minimum still prefers spam, so every member shares the exploit and no "
               "aggregation can remove it; member diversity is what limits this world."
               if check["min_prefers_spam"] else "."))
    section = "\n".join([
        f"Setting: {setting}. Design and verdict rules: the module docstring of "
        "`experiments/ensembles.py`, written before the run.", "", spam, "",
        "| arm | endpoint held-out gold (mean ± s.e.) | per seed |", "|---|---|---|",
        *[f"| {a} | {fmt(*mean_se(e))} | {[round(x, 3) for x in e]} |" for a, e in ends.items()],
        "", f"PPO: **{v1}** ({m1}). BoN: **{v2}** ({m2}).",
    ])
    return {
        "title": TITLE, "method": "preregistered",
        "claims": [{**CLAIM, "setting": setting, "measured": m1, "verdict": v1},
                   {**CLAIM_BON, "setting": setting, "measured": m2, "verdict": v2}],
        "section": section, "plots": [plot(ctx, runs, curves, z)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/gold", "kl/init_k1", "eval/gold",
                                 "eval/kl_init"]),
        "data": {"tuning": tuned, "spam_check": check, "endpoint": ends,
                 "ppo_ci": {a: list(ci) for a, ci in ppo_ci.items()},
                 "bon_ci": {a: list(ci) for a, ci in bon_ci.items()}, "bon": curves},
    }


def plot(ctx: Ctx, runs, curves, z) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for j, (arm, rs) in enumerate(runs.items()):
        for i, rows in enumerate(rs):
            pts = heldout_points(rows, z["eval_every"])
            a.plot([p["step"] for p in pts], [p["gold"] for p in pts], "o-", ms=3, alpha=0.6,
                   color=f"C{j}", label=arm if i == 0 else None)
    a.set(xlabel="step", ylabel="held-out gold", title="PPO, tuned (one line per seed)")
    a.legend(fontsize=8)
    for j, (name, c) in enumerate(curves.items()):
        b.plot(c["n"], c["gold"], "o-", ms=3, color=f"C{j}", label=name)
    b.set(xscale="log", xlabel="n", ylabel="gold − gold at n=1", title="best-of-n")
    b.legend(fontsize=8)
    return save_fig(fig, ctx, "gold")
