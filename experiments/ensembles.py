"""Reward-model ensembles (Coste et al. 2023): single vs mean vs WCO (min) vs UWO.

PPO arms: aggregation single | mean | min | uwo (lambda 0.1, ddof 1, as Coste et al. used for
PPO) x KL beta in {0, 0.01}, all K members of the tiny world. For each arm: gold at the end
(mean of the last 3 steps' batch gold), gold at its peak (3-step average), and the step where
the seed-mean gold curve peaks (where over-optimisation starts; "none" if it peaks at the end).
Best-of-n: the same SFT samples as `overopt` (held-out prompts, N per prompt), proxy =
member 0 | mean | min | uwo lambda 0.1 | uwo lambda 0.5 (ddof 0, as in their BoN code), gold of
the proxy-best of n by the order-statistics estimator, re-centred on n = 1.

Verdict rules (fixed before running):
- PPO: "held" if min and uwo both end with higher gold than single at beta 0 with the
  bootstrap 95% CI of the difference above 0; "partly" if at least one point estimate is
  higher; else "not reproduced".
- BoN: "held" if min or uwo(0.5) has higher gold than single at the largest n with a paired
  bootstrap CI over prompts above 0; "partly" if a point estimate is higher; else "not
  reproduced".
"""

from __future__ import annotations

import math
import statistics

from experiments.common import (
    Ctx,
    aggregate_scores,
    bon_curve,
    bon_samples,
    bootstrap_ci,
    bootstrap_diff_ci,
    fmt,
    fmt_ci,
    mean_se,
    pyplot,
    run_arms,
    save_fig,
    smooth,
)

TITLE = "Reward-model ensembles (Coste et al. 2023)"
CLAIM = {
    "claim": "Ensembles (WCO = min, UWO = mean − λ·var) mitigate over-optimisation and end "
             "with higher gold than a single RM in PPO",
    "paper": "Coste et al.: WCO/UWO eliminate over-optimisation in PPO (with a small KL "
             "penalty, at no cost); 5 members, 1.3B policy, 44M RMs",
}
CLAIM_BON = {
    "claim": "Ensembles improve best-of-n gold over a single RM",
    "paper": "Coste et al.: up to 70% more gold with BoN (ensembles vs single RM)",
}
AGGS = {"single": ["reward.aggregation=single"], "mean": ["reward.aggregation=mean"],
        "min": ["reward.aggregation=min"],
        "uwo0.1": ["reward.aggregation=uwo", "reward.uwo_lambda=0.1", "reward.ddof=1"]}
BETAS = ("0", "0.01")
BON_AGGS = {"single": ("single", 0.0), "mean": ("mean", 0.0), "min": ("min", 0.0),
            "uwo0.1": ("uwo", 0.1), "uwo0.5": ("uwo", 0.5)}


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(3, 25), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4,
            "bon_prompts": ctx.size(4, 32), "bon_n": ctx.size(16, 256)}


def arms(z: dict) -> dict[str, list[str]]:
    common = [f"learner.steps={z['steps']}", f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              "learner.eval_every=0"]
    return {f"{agg}_b{b}": [*common, *extra,
                            f"learner.kl.coef={b}"]
            for b in BETAS for agg, extra in AGGS.items()}


def summarise(runs: list[list[dict]]) -> dict:
    golds = [[r["reward/gold"] for r in rows] for rows in runs]
    n = min(map(len, golds))
    mean_curve = smooth([statistics.fmean(g[i] for g in golds) for i in range(n)])
    peak = max(range(n), key=lambda i: mean_curve[i])
    k = min(3, n)
    return {"final": [statistics.fmean(g[n - k:n]) for g in golds],
            "peak": [max(smooth(g[:n])) for g in golds],
            "peak_step": peak + 1, "steps": n, "curve": mean_curve,
            "final_kl": [statistics.fmean(r["kl/init_k1"] for r in rows[n - k:n])
                         for rows in runs]}


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """Bootstrap 95% CI of the mean paired difference a - b (here: over prompts)."""
    return bootstrap_ci([x - y for x, y in zip(a, b)])


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    summ = {a: summarise(r) for a, r in runs.items()}

    bon = bon_samples(ctx, z["bon_prompts"], z["bon_n"])
    ns = [2**i for i in range(int(math.log2(z["bon_n"])) + 1)]
    curves = {}
    for name, (how, lam) in BON_AGGS.items():
        proxy = aggregate_scores(bon["member"], how, uwo_lambda=lam, ddof=0)
        curves[name] = bon_curve(proxy, bon["gold"], ns)
    last = {a: [row[-1] - row[0] for row in c["per_prompt_gold"]] for a, c in curves.items()}
    bon_ci = {a: paired_ci(last[a], last["single"]) for a in BON_AGGS if a != "single"}

    d_ppo = {a: bootstrap_diff_ci(summ[f"{a}_b0"]["final"], summ["single_b0"]["final"])
             for a in ("min", "uwo0.1", "mean")}
    higher = [statistics.fmean(summ[f"{a}_b0"]["final"]) > statistics.fmean(
        summ["single_b0"]["final"]) for a in ("min", "uwo0.1")]
    v1 = ("held" if d_ppo["min"][0] > 0 and d_ppo["uwo0.1"][0] > 0
          else "partly" if any(higher) else "not reproduced")
    bon_higher = [curves[a]["gold"][-1] > curves["single"]["gold"][-1] for a in ("min", "uwo0.5")]
    v2 = ("held" if bon_ci["min"][0] > 0 or bon_ci["uwo0.5"][0] > 0
          else "partly" if any(bon_higher) else "not reproduced")

    setting = (f"{ctx.label}, {ctx.seeds} seeds × "
               f"{z['steps']} steps × {z['samples_per_step']} samples, β ∈ {{0, 0.01}}; "
               f"BoN {z['bon_prompts']} prompts × N={z['bon_n']}")
    table = ["| arm | gold at end | gold at peak | peak step (of steps) | KL at end |",
             "|---|---|---|---|---|"]
    for a, s in summ.items():
        at = "none (end)" if s["peak_step"] == s["steps"] else str(s["peak_step"])
        table.append(f"| {a} | {fmt(*mean_se(s['final']))} | {fmt(*mean_se(s['peak']))} | "
                     f"{at} ({s['steps']}) | {fmt(*mean_se(s['final_kl']))} |")
    btable = ["| BoN proxy | gold gain at n=N | peak gain (at n) | vs single (paired 95% CI) |",
              "|---|---|---|---|"]
    for a, c in curves.items():
        i = max(range(len(ns)), key=lambda j: c["gold"][j])
        ci = fmt_ci(*bon_ci[a]) if a in bon_ci else "—"
        btable.append(f"| {a} | {fmt(c['gold'][-1])} | {fmt(c['gold'][i])} ({ns[i]}) | {ci} |")
    m1 = "; ".join(f"{a} − single final gold (β=0) {fmt_ci(*ci)}" for a, ci in d_ppo.items())
    m2 = "; ".join(f"{a} − single BoN gold at n={z['bon_n']} {fmt_ci(*ci)}"
                   for a, ci in bon_ci.items())
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}; UWO for PPO with λ = 0.1, ddof 1.", "",
        *table, "", *btable, "",
        f"PPO claim: **{v1}** ({m1}). BoN claim: **{v2}** ({m2}).",
    ])
    for c in curves.values():
        c.pop("per_prompt_gold")
    plots = [plot(ctx, summ, curves)]
    return {
        "title": TITLE,
        "claims": [{**CLAIM, "setting": setting, "measured": m1, "verdict": v1},
                   {**CLAIM_BON, "setting": setting, "measured": m2, "verdict": v2}],
        "section": section, "plots": plots, "sizes": z,
        "data": {"ppo": summ, "bon": curves, "ppo_diff_ci": d_ppo, "bon_diff_ci": bon_ci},
    }


def plot(ctx: Ctx, summ, curves) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, b in enumerate(BETAS):
        ax = axes[i]
        for j, agg in enumerate(AGGS):
            s = summ[f"{agg}_b{b}"]
            ax.plot(range(1, len(s["curve"]) + 1), s["curve"], color=f"C{j}", label=agg)
        ax.set(xlabel="step", ylabel="gold (seed mean, 3-step avg)", title=f"PPO, β = {b}")
        ax.legend(fontsize=8)
    ax = axes[2]
    for j, (a, c) in enumerate(curves.items()):
        ax.plot(c["d"], c["gold"], "o-", ms=3, color=f"C{j}", label=a)
    ax.set(xlabel="d = sqrt(KL_bon(n))", ylabel="gold − gold at n=1", title="best-of-n")
    ax.legend(fontsize=8)
    return save_fig(fig, ctx, "gold")
