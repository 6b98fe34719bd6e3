"""Soup reference (SALSA, Chegini et al. 2024): policy and KL reference = the SFT soup.

Design (written before the run):
- World: the tiny world with ingredients fine-tuned on different review domains (`WORLD`:
  task.sft_data=domains: sft-0 sees the book, game and movie reviews, sft-1 the food, hotel
  and product reviews, each for about the steps of the whole split), so that the soup is an
  average of models that learned different things, not only different seeds or halves of the
  same data; the ingredients' held-out perplexities and their spread (the distance between
  them over their mean distance from the base) are reported with the result. (The runs of
  2026-11-30 used task.sft_data=disjoint: each ingredient on every other review.)
- Arms, one proxy RM, β = 0.05, 30 steps of 32 samples, lr 1e-4, 6 seeds (each its own prompt
  order, the same for both arms):
    sft    policy.init=sft,  learner.kl.reference=init  (sft-0, KL to itself)
    soup   policy.init=soup, learner.kl.reference=soup  (uniform soup of the SFT models)
- Every 5 steps: held-out gold and KL to the arm's own initial model (`learner.eval_prompts` =
  64 stratified held-out prompts), of the same policy.
- Endpoints, paired by seed: (a) held-out gold at step 30; (b) held-out gold at matched KL:
  each run's (KL, gold) eval points, in order of KL, linearly interpolated at the KL that every
  run of both arms reaches (the smallest of the runs' largest KL).

Verdict rule (`experiments.common.verdict`; smallest effect of interest 0.03 gold): the paired
t-interval over seeds of soup − sft for each endpoint; held if held for both, refuted if
refuted for both, otherwise inconclusive.

Power (`POWER`; the s.d. of the disjoint-ingredient runs of 2026-11-30, the only estimate
before a domains run: `experiments.common.power_at`, `seeds_for_power`; docs/results/NOTES.md):
at step 30, s.d. 0.070: 6 seeds gave power 0.06 at 0.03, 80% needs 45 seeds (2.1 hours of
this machine); at matched KL, s.d. 0.092: 76 seeds (3.5 hours). The joint claim is not
decidable within the 3-hour budget; `raylign experiment soup` says so and does not run.
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
    mean_se,
    paired_t_ci,
    pyplot,
    run_arms,
    save_fig,
    seed_rows,
    verdict,
    world,
)

TITLE = "Soup reference (SALSA, Chegini et al. 2024)"
PAPER_FIGURE = ("Chegini et al. 2024 (SALSA), reward against KL to the reference and the win "
                "rates: the soup-referenced policy reaches more reward at a given KL and wins "
                "more often than PPO with the SFT reference")
CLAIM = {
    "claim": "Starting from and regularising towards a soup of SFT models gives more held-out "
             "gold than the single-SFT reference at the same β",
    "paper": "SALSA: higher reward and win rate than PPO with the frozen SFT reference "
             "(Llama2-7B, Mistral-7B; MT-Bench, Arena-Hard, UltraFeedback)",
}
SEEDS = 6
WORLD = ["task.sft_data=domains"]
EFFECT = 0.03  # gold: the smallest effect of interest
# s.d. of the per-seed differences in the runs of 2026-11-30 (docs/results/NOTES.md)
POWER = (Power("soup − sft, gold at step 30", EFFECT, sd=0.070, runs_per_seed=2, run_length=0.6),
         Power("soup − sft, gold at matched KL", EFFECT, sd=0.092, runs_per_seed=2,
               run_length=0.6))
BETA = "0.05"


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(4, 30), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "eval_every": ctx.size(2, 5),
            "eval_prompts": ctx.size(8, 64)}


def arms(z: dict) -> dict[str, list[str]]:
    common = ["reward.aggregation=single", "reward.members=1", f"learner.kl.coef={BETA}",
              f"learner.steps={z['steps']}", f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              f"learner.eval_every={z['eval_every']}", f"learner.eval_prompts={z['eval_prompts']}"]
    return {"sft": [*common, "policy.init=sft", "learner.kl.reference=init"],
            "soup": [*common, "policy.init=soup", "learner.kl.reference=soup"]}


def gold_at_kl(points: list[dict], level: float) -> float:
    """Held-out gold of one run's eval points, in order of KL, interpolated at `level`."""
    import numpy as np

    pts = sorted((p["kl"], p["gold"]) for p in points)
    return float(np.interp(level, [k for k, _ in pts], [g for _, g in pts]))


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    pts = {a: [heldout_points(r, z["eval_every"]) for r in runs[a]] for a in runs}
    final = {a: [p[-1]["gold"] for p in pts[a]] for a in pts}
    final_kl = {a: [p[-1]["kl"] for p in pts[a]] for a in pts}
    level = min(max(p["kl"] for p in run) for a in pts for run in pts[a])
    matched = {a: [gold_at_kl(run, level) for run in pts[a]] for a in pts}
    ci = {"final": paired_t_ci(final["soup"], final["sft"]),
          "matched": paired_t_ci(matched["soup"], matched["sft"])}
    vs = {k: verdict(c, EFFECT) for k, c in ci.items()}
    v = joint_verdict(vs.values(), refuted_by="all")

    facts = world(ctx).summary["sft"]
    setting = (f"{ctx.label}, ingredients on {WORLD[0].split('=')[1]} SFT data (held-out "
               "perplexity "
               f"{facts['heldout_ppl']}, soup {facts['soup_heldout_ppl']}, spread "
               f"{facts.get('ingredient_spread')}), single proxy, β={BETA}, {ctx.seeds} seeds × "
               f"{z['steps']} steps × {z['samples_per_step']} samples; held-out gold on "
               f"{z['eval_prompts']} prompts")
    measured = (f"soup − sft held-out gold at step {z['steps']} {fmt_ci(*ci['final'])} "
                f"({vs['final']}); at KL {level:.2f} {fmt_ci(*ci['matched'])} ({vs['matched']})")
    rows = ["| quantity | sft (init=sft-0, ref=init) | soup (init=soup, ref=soup) | "
            "soup − sft, 95% t-interval |", "|---|---|---|---|",
            f"| held-out gold at step {z['steps']} | {fmt(*mean_se(final['sft']))} | "
            f"{fmt(*mean_se(final['soup']))} | {fmt_ci(*ci['final'])} |",
            f"| held-out gold at KL = {level:.2f} | {fmt(*mean_se(matched['sft']))} | "
            f"{fmt(*mean_se(matched['soup']))} | {fmt_ci(*ci['matched'])} |",
            f"| KL to own init at step {z['steps']} | {fmt(*mean_se(final_kl['sft']))} | "
            f"{fmt(*mean_se(final_kl['soup']))} | |",
            f"| held-out gold at step {z['eval_every']} | "
            f"{fmt(*mean_se([p[0]['gold'] for p in pts['sft']]))} | "
            f"{fmt(*mean_se([p[0]['gold'] for p in pts['soup']]))} | |"]
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}. Design and verdict rule: the module docstring of "
        "`experiments/soup.py`, written before the run. Mean ± s.e. over seeds; the spread is "
        "‖θ₀ − θ₁‖ over the ingredients' mean distance from the base.", "", *rows, "",
        f"Verdict: **{v}** ({measured})."])
    return {
        "title": TITLE, "method": "preregistered",
        "claims": [{**CLAIM, "setting": setting, "measured": measured, "verdict": v}],
        "section": section, "plots": [plot(ctx, pts, level)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/gold", "kl/init_k1", "eval/gold",
                                 "eval/kl_init"]),
        "data": {"points": pts, "final_gold": final, "final_kl": final_kl, "kl_level": level,
                 "gold_at_kl": matched, "ci": {k: list(c) for k, c in ci.items()},
                 "ingredients": facts},
    }


def plot(ctx: Ctx, pts, level) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for j, (arm, seeds) in enumerate(pts.items()):
        for i, p in enumerate(seeds):
            lab = arm if i == 0 else None
            a.plot([q["step"] for q in p], [q["gold"] for q in p], "o-", ms=3, color=f"C{j}",
                   alpha=0.6, label=lab)
            b.plot([q["kl"] for q in p], [q["gold"] for q in p], "o-", ms=3, color=f"C{j}",
                   alpha=0.6, label=lab)
        n = min(map(len, seeds))
        a.plot([seeds[0][i]["step"] for i in range(n)],
               [statistics.fmean(p[i]["gold"] for p in seeds) for i in range(n)], "-",
               lw=3, color=f"C{j}")
    b.axvline(level, color="grey", ls=":", lw=1, label="matched KL")
    a.set(xlabel="step", ylabel="held-out gold", title="gold by step (thick: seed mean)")
    b.set(xlabel="KL to own init (held-out prompts)", ylabel="held-out gold",
          title="gold at matched KL")
    a.legend()
    b.legend()
    return save_fig(fig, ctx, "gold")
