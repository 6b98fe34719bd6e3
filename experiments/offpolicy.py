"""Off-policy correction: does truncated importance sampling keep stale samples useful?

Design (written before the run):
- Arms, β 0.01, 30 steps of 32 samples, lr 1e-4, the tiny world's 2 rollout workers, 4 seeds
  (each its own prompt order, the same for every arm):
    sync        rollout.max_staleness=0, learner.off_policy=none (on-policy up to numerics)
    stale_none  max_staleness=3: samples up to 3 versions old, trained with the engine's
                log-probs as the old log-probs (PPO's ratio and clip around the behaviour)
    stale_tis   max_staleness=3, off_policy=tis: ratio and clip around the learner's current
                (proximal) policy, each token weighted by min(pi_prox / mu, 2)
- Every 5 steps: held-out gold of the learner's policy on the fixed stratified held-out
  prompts (`learner.eval_prompts` = 32). Endpoint: the mean over the eval points in the last
  10 steps, paired by seed.

Verdict rule (`experiments.common.verdict`; smallest effect of interest 0.03 gold): the paired
t-intervals of degradation = sync − stale_none and recovery = stale_tis − stale_none. Held if
both are held; refuted if either is refuted; otherwise inconclusive.

Power (computed after the runs of 2026-11-30, from their intervals:
`experiments.common.power_at`, `seeds_for_power`; docs/results/NOTES.md): recovery (tis −
none): s.d. 0.054 over 4 seeds gave power 0.02 at 0.03; 80% power needs 28 seeds at 0.03, 7 at
the observed +0.07; degradation: 47 and 5. Not decidable at 0.03 within 3 hours (about 26 seeds
for three arms).
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    Power,
    fmt,
    fmt_ci,
    heldout_gold_at_end,
    heldout_points,
    joint_verdict,
    mean_se,
    paired_t_ci,
    pyplot,
    run_arms,
    save_fig,
    seed_rows,
    verdict,
)

TITLE = "Off-policy correction at staleness 3"
CLAIM = {
    "claim": "with samples up to 3 versions stale, the uncorrected learner ends with less "
             "held-out gold than synchronous training, and the correction (tis) recovers it",
    "paper": "the peers' importance-sampling corrections for async RL (TIS in OpenRLHF, "
             "NeMo-RL, TRL; decoupled PPO in AReaL)",
}
STALENESS = 3
SEEDS = 4
EFFECT = 0.03  # gold: the smallest effect of interest
# s.d. of the per-seed differences in the runs of 2026-11-30 (docs/results/NOTES.md)
POWER = (Power("sync − stale_none, final gold", EFFECT, sd=0.072, runs_per_seed=3,
               run_length=0.6),
         Power("stale_tis − stale_none, final gold", EFFECT, sd=0.054, runs_per_seed=3,
               run_length=0.6))


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(4, 30), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "beta": 0.01,
            "eval_every": ctx.size(2, 5), "eval_prompts": ctx.size(8, 32),
            "endpoint_steps": ctx.size(4, 10)}


def arms(z: dict) -> dict[str, list[str]]:
    common = [f"learner.kl.coef={z['beta']}", f"learner.steps={z['steps']}",
              f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              f"learner.eval_every={z['eval_every']}",
              f"learner.eval_prompts={z['eval_prompts']}", "rollout.max_inflight_per_worker=4"]
    stale = f"rollout.max_staleness={STALENESS}"
    return {
        "sync": [*common, "rollout.max_staleness=0", "learner.off_policy=none"],
        "stale_none": [*common, stale, "learner.off_policy=none"],
        "stale_tis": [*common, stale, "learner.off_policy=tis"],
    }


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    final = {a: [heldout_gold_at_end(r, z["eval_every"], z["steps"], z["endpoint_steps"])
                 for r in seeds] for a, seeds in runs.items()}
    stale = {a: [statistics.fmean(x["rollout/staleness_mean"] for x in r) for r in seeds]
             for a, seeds in runs.items()}
    degradation = paired_t_ci(final["sync"], final["stale_none"])
    recovery = paired_t_ci(final["stale_tis"], final["stale_none"])
    gap = paired_t_ci(final["sync"], final["stale_tis"])
    vs = {"degradation": verdict(degradation, EFFECT), "recovery": verdict(recovery, EFFECT)}
    v = joint_verdict(vs.values(), refuted_by="any")
    setting = (f"{ctx.label}, staleness bound {STALENESS}, β={z['beta']}, {ctx.seeds} seeds × "
               f"{z['steps']} steps × {z['samples_per_step']} samples")
    measured = (f"degradation sync − stale_none {fmt_ci(*degradation)} ({vs['degradation']}), "
                f"recovery stale_tis − stale_none {fmt_ci(*recovery)} ({vs['recovery']}); "
                f"sync − stale_tis {fmt_ci(*gap)}")
    rows = [f"| arm | held-out gold, last {z['endpoint_steps']} steps | mean staleness "
            "(versions) |", "|---|---|---|"]
    rows += [f"| {a} | {fmt(*mean_se(final[a]))} | {fmt(*mean_se(stale[a]), digits=2)} |"
             for a in runs]
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}. Design and verdict rule: the module docstring of "
        "`experiments/offpolicy.py`, written before the run. Mean ± s.e. over seeds; "
        "intervals: paired 95% t over seeds.", "",
        *rows, "", f"Verdict: **{v}** ({measured})."])
    return {
        "title": TITLE, "method": "preregistered",
        "claims": [{**CLAIM, "setting": setting, "measured": measured, "verdict": v}],
        "section": section, "plots": [plot(ctx, runs, z)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/gold", "kl/init_k1", "eval/gold",
                                 "eval/kl_init", "rollout/staleness_mean"]),
        "data": {"final_gold": final, "staleness_mean": stale, "degradation_ci": degradation,
                 "recovery_ci": recovery, "gap_ci": gap},
    }


def plot(ctx: Ctx, runs, z) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (a, seeds) in enumerate(runs.items()):
        pts = [heldout_points(r, z["eval_every"]) for r in seeds]
        n = min(map(len, pts))
        steps = [pts[0][i]["step"] for i in range(n)]
        ys = [mean_se([p[i]["gold"] for p in pts]) for i in range(n)]
        ax.plot(steps, [m for m, _ in ys], "o-", ms=3, color=f"C{j}", label=a)
        ax.fill_between(steps, [m - (s if s == s else 0) for m, s in ys],
                        [m + (s if s == s else 0) for m, s in ys], color=f"C{j}", alpha=0.2)
    ax.set(xlabel="learner step", ylabel="held-out gold (seed mean ± s.e.)", title=TITLE)
    ax.legend()
    return save_fig(fig, ctx, "gold_by_step")
