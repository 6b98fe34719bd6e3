"""Off-policy correction: does truncated importance sampling keep stale samples useful?

Arms (same beta, lr, batch, steps; the tiny world's 2 rollout workers):
    sync        rollout.max_staleness=0, learner.off_policy=none (on-policy up to numerics)
    stale_none  max_staleness=3: samples up to 3 versions old, trained with the engine's
                log-probs as the old log-probs (PPO's ratio and clip around the behaviour)
    stale_tis   max_staleness=3, off_policy=tis: ratio and clip around the learner's current
                (proximal) policy, each token weighted by min(pi_prox / mu, 2)

Final gold = mean gold over the last 5 steps of a run; arms share seeds and prompt order, so
differences are paired by seed (95% t-interval).

Verdict rule (fixed before running): "held" if stale_none's final gold is below sync's
(interval of sync - stale_none above 0) and stale_tis's above stale_none's (interval above
0); "no difference in this world" if the interval of sync - stale_none includes 0 (staleness
3 does not hurt here, so there is nothing to correct); else (or with one seed, no interval)
"not reproduced".
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    fmt,
    fmt_ci,
    mean_se,
    paired_t_ci,
    pyplot,
    run_arms,
    save_fig,
    window_mean,
)

TITLE = "Off-policy correction at staleness 3"
CLAIM = {
    "claim": "with samples up to 3 versions stale, the off-policy correction (tis) learns as "
             "well as synchronous training where the uncorrected learner degrades",
    "paper": "the peers' importance-sampling corrections for async RL (TIS in OpenRLHF, "
             "NeMo-RL, TRL; decoupled PPO in AReaL)",
}
STALENESS = 3
LAST = 5  # steps averaged for the final gold


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(4, 30), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "beta": 0.01}


def arms(z: dict) -> dict[str, list[str]]:
    common = [f"learner.kl.coef={z['beta']}", f"learner.steps={z['steps']}",
              f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              "learner.eval_every=0", "rollout.max_inflight_per_worker=4"]
    stale = f"rollout.max_staleness={STALENESS}"
    return {
        "sync": [*common, "rollout.max_staleness=0", "learner.off_policy=none"],
        "stale_none": [*common, stale, "learner.off_policy=none"],
        "stale_tis": [*common, stale, "learner.off_policy=tis"],
    }


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    last = min(LAST, z["steps"])
    final = {a: [window_mean(r, "reward/gold", z["steps"], last) for r in seeds]
             for a, seeds in runs.items()}
    stale = {a: [statistics.fmean(x["rollout/staleness_mean"] for x in r) for r in seeds]
             for a, seeds in runs.items()}
    degradation = paired_t_ci(final["sync"], final["stale_none"])
    recovery = paired_t_ci(final["stale_tis"], final["stale_none"])
    gap = paired_t_ci(final["sync"], final["stale_tis"])
    if degradation[0] != degradation[0]:  # one seed: no interval, no verdict
        verdict = "not reproduced"
    elif degradation[0] > 0 and recovery[0] > 0:
        verdict = "held"
    elif degradation[0] <= 0:
        verdict = "no difference in this world"
    else:
        verdict = "not reproduced"
    setting = (f"{ctx.label}, staleness bound {STALENESS}, β={z['beta']}, {ctx.seeds} seeds × "
               f"{z['steps']} steps × {z['samples_per_step']} samples")
    measured = (f"sync − stale_none final gold {fmt_ci(*degradation)}, stale_tis − stale_none "
                f"{fmt_ci(*recovery)}, sync − stale_tis {fmt_ci(*gap)}")
    rows = ["| arm | final gold (last 5 steps) | mean staleness (versions) |", "|---|---|---|"]
    rows += [f"| {a} | {fmt(*mean_se(final[a]))} | {fmt(*mean_se(stale[a]), digits=2)} |"
             for a in runs]
    section = "\n".join([
        f"Setting: {setting}; lr {z['lr']}. Intervals: paired 95% t-intervals over seeds.", "",
        *rows, "", f"Verdict: **{verdict}** ({measured})."])
    return {
        "title": TITLE, "claims": [{**CLAIM, "setting": setting, "measured": measured,
                                    "verdict": verdict}],
        "section": section, "plots": [plot(ctx, runs)], "sizes": z,
        "data": {"final_gold": final, "staleness_mean": stale, "degradation_ci": degradation,
                 "recovery_ci": recovery, "gap_ci": gap},
    }


def plot(ctx: Ctx, runs) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (a, seeds) in enumerate(runs.items()):
        n = min(map(len, seeds))
        ys = [mean_se([r[i].get("reward/gold", float("nan")) for r in seeds]) for i in range(n)]
        ax.plot(range(1, n + 1), [m for m, _ in ys], color=f"C{j}", label=a)
        ax.fill_between(range(1, n + 1), [m - (s if s == s else 0) for m, s in ys],
                        [m + (s if s == s else 0) for m, s in ys], color=f"C{j}", alpha=0.2)
    ax.set(xlabel="learner step", ylabel="gold (batch mean)", title=TITLE)
    ax.legend()
    return save_fig(fig, ctx, "gold_by_step")
