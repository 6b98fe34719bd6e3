"""Everything together: UWO ensemble + Elastic Reset + soup reference vs plain PPO + KL.

Design (written before the run):
- Arms, 50 steps of 32 samples, lr 1e-4, 4 seeds (each its own prompt order, the same for
  every arm), on the default tiny world:
    plain_b0.01  one proxy RM (aggregation=single), policy from sft-0, KL to it, β 0.01
    plain_b0.1   the same with β 0.1
    together     all K members with uwo (λ 0.1), policy from the soup, KL to the soup, β 0.01,
                 Elastic Reset (η 0.95 per iteration, reset at the end of iterations 17 and
                 34: step 50 is 16 iterations into its third cycle, as in `elastic`)
- Every 5 steps one policy is evaluated: held-out gold and KL to its own initial model
  (`learner.eval_prompts` = 32 stratified held-out prompts) and perplexity drift (held-out
  perplexity of the policy minus its initial model's).
- Endpoints, each paired by seed: (a) the area under held-out gold from step 10 to step 50
  divided by the 40 steps (`mean_after`: the average gold after the first rise); (b) held-out
  gold at step 50; (c) perplexity drift at step 50.

Verdict rule, against each plain arm (`experiments.common.verdict`): gold = the paired
t-interval of together − plain for (a), smallest effect of interest 0.03 gold; drift = the
paired t-interval of plain − together for (c), smallest effect 0.1 perplexity. Held if both are
held; refuted if either is refuted; otherwise inconclusive. (b) and KL are reported with their
intervals, no verdict.

Power (computed after the runs of 2026-11-30, from their intervals:
`experiments.common.power_at`, `seeds_for_power`; docs/results/NOTES.md): gold area vs β 0.1:
s.d. 0.061 over 4 seeds gave power 0.01 at 0.03 (35 seeds for 80%); vs β 0.01: s.d. 0.077, 54
seeds. Not decidable at 0.03 within 3 hours (about 26 seeds for three arms).
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    Power,
    fmt,
    fmt_ci,
    heldout_points,
    joint_verdict,
    mean_after,
    mean_se,
    paired_t_ci,
    pyplot,
    run_arms,
    save_fig,
    seed_rows,
    verdict,
)

TITLE = "Everything together (raylign's recommended configuration)"
CLAIM = {
    "claim": "UWO ensemble + Elastic Reset + soup reference gives more held-out gold at less "
             "drift than plain PPO + KL",
    "paper": "no single paper: the combination raylign recommends, each part from the papers "
             "above",
}
SEEDS = 4
GOLD_EFFECT = 0.03  # gold
DRIFT_EFFECT = 0.1  # held-out perplexity
# s.d. of the per-seed differences in the runs of 2026-11-30 (docs/results/NOTES.md)
POWER = (Power("together − plain_b0.01, gold area", GOLD_EFFECT, sd=0.077, runs_per_seed=3),
         Power("together − plain_b0.1, gold area", GOLD_EFFECT, sd=0.061, runs_per_seed=3))
PLAIN = ("plain_b0.01", "plain_b0.1")


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(5, 50), "reset_every": ctx.size(2, 17),
            "eval_every": ctx.size(1, 5), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "eval_prompts": ctx.size(8, 32),
            "area_from": ctx.size(2, 10), "ema_decay": 0.95}


def arms(z: dict) -> dict[str, list[str]]:
    common = [f"learner.steps={z['steps']}", f"learner.eval_every={z['eval_every']}",
              f"learner.eval_prompts={z['eval_prompts']}",
              f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}"]
    plain = [*common, "reward.aggregation=single", "reward.members=1"]
    return {
        "plain_b0.01": [*plain, "learner.kl.coef=0.01"],
        "plain_b0.1": [*plain, "learner.kl.coef=0.1"],
        "together": [*common, "learner.kl.coef=0.01", "reward.aggregation=uwo",
                     "reward.uwo_lambda=0.1", "reward.ddof=1", "policy.init=soup",
                     "learner.kl.reference=soup", "learner.elastic_reset.enabled=true",
                     f"learner.elastic_reset.ema_decay={z['ema_decay']}",
                     "learner.elastic_reset.ema_update=iteration",
                     f"learner.elastic_reset.reset_every={z['reset_every']}"],
    }


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    pts = {a: [heldout_points(r, z["eval_every"]) for r in runs[a]] for a in runs}
    end = {a: {"area": [mean_after(p, "gold", z["area_from"]) for p in pts[a]],
               **{k: [p[-1][k] for p in pts[a]] for k in ("gold", "ppl_drift", "kl")}}
           for a in pts}
    t = end["together"]
    ci = {b: {"area": paired_t_ci(t["area"], end[b]["area"]),
              "gold": paired_t_ci(t["gold"], end[b]["gold"]),
              "drift": paired_t_ci(end[b]["ppl_drift"], t["ppl_drift"]),
              "kl": paired_t_ci(end[b]["kl"], t["kl"])} for b in PLAIN}
    claims, section_v = [], []
    setting = (f"{ctx.label}, {ctx.seeds} seeds × {z['steps']} steps × "
               f"{z['samples_per_step']} samples; held-out gold ({z['eval_prompts']} prompts) "
               f"and drift of one policy every {z['eval_every']} steps")
    for b in PLAIN:
        vg, vd = verdict(ci[b]["area"], GOLD_EFFECT), verdict(ci[b]["drift"], DRIFT_EFFECT)
        v = joint_verdict((vg, vd), refuted_by="any")
        m = (f"vs {b}: gold after step {z['area_from']} (area ÷ steps) {fmt_ci(*ci[b]['area'])}"
             f" ({vg}); perplexity drift lower by {fmt_ci(*ci[b]['drift'])} ({vd}); final "
             f"gold {fmt_ci(*ci[b]['gold'])}; KL lower by {fmt_ci(*ci[b]['kl'])}")
        claims.append({**CLAIM, "claim": f"{CLAIM['claim']} (β = {b.removeprefix('plain_b')})",
                       "setting": setting, "measured": m, "verdict": v})
        section_v.append(f"Against {b}: **{v}** ({m}).")
    rows = [f"| arm | held-out gold after step {z['area_from']} (area ÷ steps) | held-out gold at "
            "the end | perplexity drift | KL to own init |", "|---|---|---|---|---|"]
    for a in pts:
        rows.append(f"| {a} | {fmt(*mean_se(end[a]['area']))} | {fmt(*mean_se(end[a]['gold']))}"
                    f" | {fmt(*mean_se(end[a]['ppl_drift']))} | {fmt(*mean_se(end[a]['kl']))} |")
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}. Design and verdict rules: the module docstring of "
        "`experiments/together.py`, written before the run. The proxies differ between arms "
        "(one RM vs the UWO aggregate), so only gold and drift are compared. Mean ± s.e. over "
        "seeds; intervals: paired 95% t over seeds.", "", *rows, "", *section_v])
    return {
        "title": TITLE, "method": "preregistered", "claims": claims,
        "section": section, "plots": [plot(ctx, pts, z)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/gold", "kl/init_k1", "eval/gold",
                                 "eval/kl_init", "drift/ppl_policy", "drift/ppl_init",
                                 "elastic/reset"]),
        "data": {"points": pts, "endpoints": end,
                 "ci": {b: {k: list(c) for k, c in v.items()} for b, v in ci.items()}},
    }


def plot(ctx: Ctx, pts, z) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for j, (a, seeds) in enumerate(pts.items()):
        n = min(map(len, seeds))
        gold = [mean_se([p[i]["gold"] for p in seeds]) for i in range(n)]
        err = [s if s == s else 0 for _, s in gold]
        axes[0].errorbar([seeds[0][i]["step"] for i in range(n)], [m for m, _ in gold],
                         yerr=err, fmt="o-", ms=3, capsize=2, color=f"C{j}", label=a)
        axes[1].errorbar([statistics.fmean(p[i]["ppl_drift"] for p in seeds) for i in range(n)],
                         [m for m, _ in gold], yerr=err, fmt="o-", ms=3, capsize=2,
                         color=f"C{j}", label=a)
    axes[0].axvline(z["area_from"], color="grey", ls=":", lw=1)
    axes[0].set(xlabel="step", ylabel="held-out gold (seed mean ± s.e.)",
                title="gold by step (area counted right of the dotted line)")
    axes[1].set(xlabel="held-out perplexity − own init", ylabel="held-out gold",
                title="gold vs drift")
    for ax in axes:
        ax.legend(fontsize=8)
    return save_fig(fig, ctx, "gold_vs_drift")
