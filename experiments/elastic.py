"""Elastic Reset (Noukhovitch et al. 2023): held-out gold against drift, against PPO + KL.

Design (written before the run):
- Equal tuning budgets (`experiments.common.tune`): PPO and Elastic Reset get three settings
  each, chosen before any run, trained on tuning seeds 1000-1001 (never verdict seeds); each
  keeps the setting with the highest held-out gold at step 50 (mean over the tuning seeds):
    PPO    KL coefficient β in 0.03, 0.1, 0.3
    ER     (EMA decay η, β) in (0.95, 0.001), (0.95, 0.01), (0.99, 0.01); EMA updated once per
           iteration, reset at the end of iterations 17 and 34 (online <- EMA, then EMA <-
           init). The interval is fixed so that every setting is compared at the same point
           of its cycle: step 50 is 16 iterations into the third (the next reset would end
           iteration 51), after a full cycle of recovery and drift.
- Verdict arms, on seeds 0.. (each its own prompt order, the same for every arm), one proxy RM
  (reward.aggregation=single), KL to the initial model, 50 steps of 16 samples, lr 1e-4:
    ppo          PPO at the tuned β
    elastic      Elastic Reset at the tuned (η, β)
    reset_init   the same, online <- init at a reset (elastic_reset.target=init)
    reset_ema    the same, the EMA not reset (elastic_reset.reset_ema=false)
- Every 5 steps one policy is evaluated: held-out gold and KL to init on the fixed stratified
  held-out prompts (`learner.eval_prompts` = 32) and perplexity drift (held-out perplexity of
  the policy minus the initial model's): gold and drift of the same weights.
- A seed's PPO front: the Pareto front (low perplexity drift, high held-out gold) of that
  seed's PPO eval points, linearly interpolated at a drift (flat beyond its ends; `front_at`).
  Excess(arm, seed) = held-out gold at step 50 − the front at that point's perplexity drift.

Claims and verdict rules (`experiments.common.verdict`; smallest effect of interest 0.03 gold):
1. ER beats PPO's reward-drift front: the paired t-interval over seeds of Excess(elastic).
2. Both halves of the reset matter: Excess(elastic) − Excess(reset_init), and
   Excess(elastic) − Excess(reset_ema), paired t-intervals. Held if held against both;
   refuted if refuted against either; otherwise inconclusive.
Reported beside them, with no verdict: the same excesses with KL to init as the drift axis.

Power (`POWER`; the s.d. of the runs of 2026-11-30, which ran ER at (0.95, 0.001) against a
front of all three PPO βs: `experiments.common.power_at`, `seeds_for_power`;
docs/results/NOTES.md): ER − PPO front s.d. 0.182: 291 seeds for 80% at 0.03 (4 verdict runs a
seed, plus 12 tuning runs: about 45 hours of this machine); ER − reset_ema s.d. 0.097: 84
seeds. Not decidable within the 3-hour budget; `raylign experiment elastic` says so and does
not run. The effects seen then (−0.30, −0.24) would be decidable with 5-6 seeds.
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    Power,
    fmt,
    fmt_ci,
    front_at,
    heldout_points,
    joint_verdict,
    mean_se,
    paired_t_ci,
    pareto_front,
    pyplot,
    run_arms,
    save_fig,
    seed_rows,
    tune,
    verdict,
)

TITLE = "Elastic Reset (Noukhovitch et al. 2023)"
PAPER_FIGURE = ("Noukhovitch et al. 2023, reward against drift (perplexity and KL): one curve "
                "per method over training; Elastic Reset's curve lies above PPO's for every KL "
                "coefficient, and above reset-to-init and reset-to-EMA-without-EMA-reset")
CLAIM = {
    "claim": "Elastic Reset ends a reset cycle with more held-out gold than PPO + KL reaches "
             "at the same drift",
    "paper": "Noukhovitch et al.: on IMDB, StackLLaMA and translation, ER's reward-vs-drift "
             "points dominate PPO with several KL coefficients (5 seeds)",
}
CLAIM_ABL = {
    "claim": "Both halves of the reset matter: ER trades gold for drift better than "
             "reset-to-init and reset-to-EMA-without-EMA-reset",
    "paper": "Noukhovitch et al.: both ablations trade off reward and drift worse than ER",
}
SEEDS = 4
EFFECT = 0.03  # gold: the smallest effect of interest
# s.d. of the per-seed differences in the runs of 2026-11-30 (docs/results/NOTES.md)
TUNE_SEEDS = 2
PPO_BETAS = (0.03, 0.1, 0.3)  # PPO's three settings
ER_SETTINGS = ((0.95, 0.001), (0.95, 0.01), (0.99, 0.01))  # ER's three: (η, β)
POWER = (Power("ER − PPO front", EFFECT, sd=0.182, runs_per_seed=4, tuning_runs=12),
         Power("ER − reset_init", EFFECT, sd=0.159, runs_per_seed=4, tuning_runs=12),
         Power("ER − reset_ema", EFFECT, sd=0.097, runs_per_seed=4, tuning_runs=12))
PPO = ("ppo",)
RESETS = ("elastic", "reset_init", "reset_ema")
ARMS = (*PPO, *RESETS)


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(5, 50), "reset_every": ctx.size(2, 17),
            "eval_every": ctx.size(1, 5), "samples_per_step": 16, "minibatch_size": 8,
            "lr": 1e-4, "eval_prompts": ctx.size(8, 32), "tune_seeds": ctx.size(1, TUNE_SEEDS)}


def common(z: dict) -> list[str]:
    return ["reward.aggregation=single", "reward.members=1", f"learner.steps={z['steps']}",
            f"learner.eval_every={z['eval_every']}", f"learner.eval_prompts={z['eval_prompts']}",
            f"learner.samples_per_step={z['samples_per_step']}",
            f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}"]


def candidates(z: dict) -> dict[str, dict[str, list[str]]]:
    """The tuning budgets: {method: {setting: overrides}}, three settings each."""
    def er(eta: float, beta: float) -> list[str]:
        return [*common(z), f"learner.kl.coef={beta}", "learner.elastic_reset.enabled=true",
                f"learner.elastic_reset.ema_decay={eta}",
                "learner.elastic_reset.ema_update=iteration",
                f"learner.elastic_reset.reset_every={z['reset_every']}"]
    return {"ppo": {f"ppo_b{b}": [*common(z), f"learner.kl.coef={b}"] for b in PPO_BETAS},
            "elastic": {f"er_e{e}_b{b}": er(e, b) for e, b in ER_SETTINGS}}


def arms(z: dict, ppo: str, elastic: str) -> dict[str, list[str]]:
    """The verdict arms at the tuned settings `ppo` and `elastic` (names in `candidates`)."""
    c = candidates(z)
    er = c["elastic"][elastic]
    return {"ppo": c["ppo"][ppo], "elastic": er,
            "reset_init": [*er, "learner.elastic_reset.target=init"],
            "reset_ema": [*er, "learner.elastic_reset.reset_ema=false"]}


def final_gold(z: dict):
    """The tuning score: held-out gold at the last eval point."""
    return lambda rows: heldout_points(rows, z["eval_every"])[-1]["gold"]


def excess(pts: dict[str, list[list[dict]]], arm: str, seed: int, axis: str) -> float:
    """Held-out gold of `arm` at its last eval point minus seed `seed`'s PPO front there."""
    end = pts[arm][seed][-1]
    front = [(p[axis], p["gold"]) for a in PPO for p in pts[a][seed]]
    return end["gold"] - front_at(front, end[axis])


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    tuned = tune(ctx, candidates(z), final_gold(z), z["tune_seeds"])
    best = {m: t["best"] for m, t in tuned.items()}
    runs = run_arms(ctx, arms(z, best["ppo"], best["elastic"]))
    pts = {a: [heldout_points(r, z["eval_every"]) for r in runs[a]] for a in ARMS}
    seeds = range(ctx.seeds)
    exc = {axis: {a: [excess(pts, a, s, axis) for s in seeds] for a in RESETS}
           for axis in ("ppl_drift", "kl")}
    e = exc["ppl_drift"]
    ci1 = paired_t_ci(e["elastic"], [0.0] * len(e["elastic"]))
    v1 = verdict(ci1, EFFECT)
    ci2 = {b: paired_t_ci(e["elastic"], e[b]) for b in ("reset_init", "reset_ema")}
    v2s = {b: verdict(ci, EFFECT) for b, ci in ci2.items()}
    v2 = joint_verdict(v2s.values(), refuted_by="any")
    ci_kl = paired_t_ci(exc["kl"]["elastic"], [0.0] * ctx.seeds)
    final = {a: {k: [p[-1][k] for p in pts[a]] for k in ("gold", "ppl_drift", "kl", "proxy")}
             for a in ARMS}

    setting = (f"{ctx.label}, single proxy, {ctx.seeds} seeds × {z['steps']} steps × "
               f"{z['samples_per_step']} samples; tuned on {z['tune_seeds']} other seeds, 3 "
               f"settings each: PPO {best['ppo']}, ER {best['elastic']} (reset every "
               f"{z['reset_every']}); held-out gold ({z['eval_prompts']} prompts) and drift of "
               f"one policy every {z['eval_every']} steps")
    m1 = (f"ER's gold at step {z['steps']} − PPO front at its perplexity drift "
          f"{fmt(*mean_se(e['elastic']))}, 95% t-interval {fmt_ci(*ci1)} (at its KL: "
          f"{fmt_ci(*ci_kl)})")
    m2 = "; ".join(f"excess of ER − {b} {fmt_ci(*ci)} ({v2s[b]})" for b, ci in ci2.items())
    table = ["| arm | gold at the end | perplexity drift | KL to init | proxy | "
             "gold − PPO front (ppl / KL) |", "|---|---|---|---|---|---|"]
    for a in ARMS:
        ex = (f"{fmt(*mean_se(exc['ppl_drift'][a]))} / {fmt(*mean_se(exc['kl'][a]))}"
              if a in RESETS else "—")
        table.append(f"| {a} | {fmt(*mean_se(final[a]['gold']))} | "
                     f"{fmt(*mean_se(final[a]['ppl_drift']))} | {fmt(*mean_se(final[a]['kl']))}"
                     f" | {fmt(*mean_se(final[a]['proxy']))} | {ex} |")
    section = "\n".join([
        f"Setting: {setting}. Design and verdict rules: the module docstring of "
        "`experiments/elastic.py`, written before the run. Mean ± s.e. over seeds.", "",
        *table, "", f"Claim 1: **{v1}** ({m1}). Claim 2: **{v2}** ({m2}).",
    ])
    return {
        "title": TITLE, "method": "preregistered",
        "claims": [{**CLAIM, "setting": setting, "measured": m1, "verdict": v1},
                   {**CLAIM_ABL, "setting": setting, "measured": m2, "verdict": v2}],
        "section": section, "plots": [plot(ctx, pts, runs, z)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/gold", "kl/init_k1", "eval/gold",
                                 "eval/kl_init", "drift/ppl_policy", "drift/ppl_init",
                                 "elastic/reset"]),
        "data": {"tuning": tuned, "points": pts, "excess": exc, "final": final,
                 "claim1_ci": list(ci1),
                 "claim1_ci_kl": list(ci_kl), "claim2_ci": {b: list(c) for b, c in ci2.items()}},
    }


def plot(ctx: Ctx, pts, runs, z) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for j, a in enumerate(ARMS):
        n = min(map(len, pts[a]))
        xs = [statistics.fmean(p[i]["ppl_drift"] for p in pts[a]) for i in range(n)]
        ys = [statistics.fmean(p[i]["gold"] for p in pts[a]) for i in range(n)]
        ax.plot(xs, ys, "o-" if a in PPO else "s-", ms=3, color=f"C{j}", label=a, alpha=0.8)
        if a in RESETS:
            ax.plot(xs[-1], ys[-1], "*", ms=14, color=f"C{j}", mec="k")
    front = pareto_front([(p["ppl_drift"], p["gold"]) for a in PPO for s in pts[a] for p in s])
    ax.plot(*zip(*front), "k--", lw=1, label="PPO front (all seeds)")
    ax.set(xlabel="held-out perplexity − init", ylabel="held-out gold (seed mean)",
           title=f"gold vs drift (stars: step {z['steps']})")
    ax.legend(fontsize=7)
    ax = axes[1]
    for j, a in enumerate(ARMS):
        n = min(map(len, pts[a]))
        ax.plot([pts[a][0][i]["step"] for i in range(n)],
                [statistics.fmean(p[i]["gold"] for p in pts[a]) for i in range(n)],
                "o-" if a in PPO else "s-", ms=3, color=f"C{j}", label=a, lw=1)
    for k in range(z["reset_every"], z["steps"] + 1, z["reset_every"]):
        ax.axvline(k, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="step", ylabel="held-out gold (seed mean)", title="gold vs step (resets dotted)")
    ax.legend(fontsize=7)
    return save_fig(fig, ctx, "reward_vs_drift")
