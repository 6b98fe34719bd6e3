"""Everything together: UWO ensemble + Elastic Reset + soup reference vs plain PPO + KL.

Arms, same beta (0.01), lr, batch and steps:
    plain      one proxy RM (aggregation=single), policy from SFT model 0, KL to it
    together   all K members with uwo (lambda 0.1), policy from the soup, KL to the soup,
               Elastic Reset (eta 0.995, reset every 17 of 50 iterations)
Evaluation points every 5 steps, as in `elastic`: gold (window mean) vs held-out perplexity
drift (policy minus its own init) and KL to init.

Verdict rule (fixed before running): "held" if together's final gold beats plain's with the
bootstrap 95% CI of the difference above 0 and its final perplexity drift is lower (point
estimate); "partly" if one of the two; else "not reproduced".
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    bootstrap_diff_ci,
    dominated_share,
    eval_points,
    fmt,
    fmt_ci,
    mean_se,
    pyplot,
    run_arms,
    save_fig,
)

TITLE = "Everything together (raylign's recommended configuration)"
CLAIM = {
    "claim": "UWO ensemble + Elastic Reset + soup reference gives more gold at less drift "
             "than plain PPO + KL",
    "paper": "no single paper: the combination raylign recommends, each part from the papers "
             "above",
}
BETA = "0.01"


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(4, 50), "reset_every": ctx.size(2, 17),
            "eval_every": ctx.size(2, 5), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4}


def arms(z: dict) -> dict[str, list[str]]:
    common = [f"learner.kl.coef={BETA}", f"learner.steps={z['steps']}",
              f"learner.eval_every={z['eval_every']}",
              f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}"]
    return {
        "plain": [*common, "reward.aggregation=single", "reward.members=1"],
        "together": [*common, "reward.aggregation=uwo", "reward.uwo_lambda=0.1",
                     "policy.init=soup", "learner.kl.reference=soup",
                     "learner.elastic_reset.enabled=true", "learner.elastic_reset.ema_decay=0.995",
                     f"learner.elastic_reset.reset_every={z['reset_every']}"],
    }


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    pts = {a: [eval_points(r, z["eval_every"]) for r in runs[a]] for a in runs}
    final = {a: {k: [p[-1][k] for p in pts[a]] for k in ("gold", "proxy", "ppl_drift", "kl")}
             for a in runs}
    mean_pts = {a: [(statistics.fmean(p[i]["ppl_drift"] for p in pts[a]),
                     statistics.fmean(p[i]["gold"] for p in pts[a]))
                    for i in range(min(map(len, pts[a])))] for a in runs}
    dom = {a: dominated_share(mean_pts[a], mean_pts[b]) for a, b in (("plain", "together"),
                                                                       ("together", "plain"))}
    gold_ci = bootstrap_diff_ci(final["together"]["gold"], final["plain"]["gold"])
    drift_lower = (statistics.fmean(final["together"]["ppl_drift"])
                   < statistics.fmean(final["plain"]["ppl_drift"]))
    v = ("held" if gold_ci[0] > 0 and drift_lower
         else "partly" if gold_ci[0] > 0 or drift_lower else "not reproduced")
    drift_ci = bootstrap_diff_ci(final["together"]["ppl_drift"], final["plain"]["ppl_drift"])
    setting = (f"{ctx.label}, β={BETA}, {ctx.seeds} seeds "
               f"× {z['steps']} steps × {z['samples_per_step']} samples")
    measured = (f"together − plain final gold {fmt_ci(*gold_ci)}, ppl drift "
                f"{fmt_ci(*drift_ci)}")
    rows = ["| arm | final gold | final proxy | final ppl drift | final KL to init | "
            "points dominated by the other arm |", "|---|---|---|---|---|---|"]
    for a in runs:
        rows.append(f"| {a} | {fmt(*mean_se(final[a]['gold']))} | "
                    f"{fmt(*mean_se(final[a]['proxy']))} | "
                    f"{fmt(*mean_se(final[a]['ppl_drift']))} | {fmt(*mean_se(final[a]['kl']))} "
                    f"| {dom[a]:.2f} |")
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}. The proxies differ between arms (one RM vs the "
        "UWO aggregate), so only gold and drift are comparable.", "", *rows, "",
        f"Verdict: **{v}** ({measured})."])
    plots = [plot(ctx, pts)]
    return {
        "title": TITLE, "claims": [{**CLAIM, "setting": setting, "measured": measured,
                                    "verdict": v}],
        "section": section, "plots": plots, "sizes": z,
        "data": {"points": pts, "final": final, "dominated_share": dom,
                 "gold_diff_ci": gold_ci, "drift_diff_ci": drift_ci},
    }


def plot(ctx: Ctx, pts) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "ppl_drift", "held-out perplexity − init"),
                           (axes[1], "kl", "KL to init (summed k1)")):
        for j, (a, seeds) in enumerate(pts.items()):
            n = min(map(len, seeds))
            xs = [statistics.fmean(p[i][key] for p in seeds) for i in range(n)]
            ys = [mean_se([p[i]["gold"] for p in seeds]) for i in range(n)]
            ax.errorbar(xs, [m for m, _ in ys], yerr=[s if s == s else 0 for _, s in ys],
                        fmt="o-", ms=3, capsize=2, color=f"C{j}", label=a)
        ax.set(xlabel=label, ylabel="gold (window mean)")
        ax.legend()
    return save_fig(fig, ctx, "gold_vs_drift")
