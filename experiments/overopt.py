"""Over-optimisation (Gao et al. 2022): gold vs proxy reward against d = sqrt(KL to init).

PPO on one proxy reward model (reward.aggregation=single), no KL penalty (learner.kl.coef=0),
several seeds; d = sqrt(kl/init_k1) of the policy that made each batch (runs are synchronous).
Scores are re-centred so the initial policy scores 0 (its step-1 batches, pooled over seeds).
Fit R(d) = d (alpha - beta log d) to the gold points by least squares (pooled and per seed).
Best-of-n: N samples per held-out prompt from the SFT policy, the order-statistics estimator
(`learner.ensemble.best_of_n`) with member 0 as the proxy, d = sqrt(kl_bon(n)), fit
R(d) = d (alpha - beta d).

Verdict rule (fixed before running): "held" if the gold reward falls after a peak while the
proxy keeps rising (the drop from the seed-mean peak to the end has a bootstrap CI above 0
and the proxy's rise over the same span is positive) and both functional forms fit with
R^2 >= 0.8; "partly" if one of the two holds; otherwise "not reproduced".
"""

from __future__ import annotations

import math
import statistics

from experiments.common import (
    Ctx,
    bon_curve,
    bon_samples,
    bootstrap_ci,
    fit_bon,
    fit_rl,
    fmt,
    fmt_ci,
    mean_se,
    pyplot,
    run_arms,
    save_fig,
    series,
    smooth,
)

TITLE = "Over-optimisation (Gao et al. 2022)"
CLAIM = {
    "claim": "Optimising a proxy RM raises proxy reward monotonically while gold reward rises "
             "then falls; gold(d) fits d(α−β log d) for RL and d(α−β d) for best-of-n",
    "paper": "Gao et al.: both forms fit gold closely (synthetic set-up, RMs 3M-3B params); "
             "gold peaks then declines as KL grows",
}


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(3, 40), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": ctx.size(1e-4, 1e-4),
            "bon_prompts": ctx.size(4, 32), "bon_n": ctx.size(16, 256)}


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    arm = ["reward.aggregation=single", "learner.kl.coef=0", f"learner.steps={z['steps']}",
           f"learner.samples_per_step={z['samples_per_step']}",
           f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
           "learner.eval_every=0"]
    runs = run_arms(ctx, {"ppo": arm})["ppo"]

    # best-of-n from the SFT policy; its n = 1 means (P x N samples) are the initial policy's
    bon = bon_samples(ctx, z["bon_prompts"], z["bon_n"])
    ns = [2**i for i in range(int(math.log2(z["bon_n"])) + 1)]
    curve = bon_curve(bon["member"][0], bon["gold"], ns)
    bon_fit = fit_bon(curve["d"], curve["gold"])
    best_n_gold = [row[-1] - row[0] for row in curve.pop("per_prompt_gold")]
    bon_gain_ci = bootstrap_ci(best_n_gold)

    # PPO: re-centre on the initial policy = the SFT samples' mean gold and proxy. (A first
    # analysis used the step-1 batches pooled over seeds: every seed starts on the same 32
    # prompts, whose gold is atypical; that variant's fit is reported beside.)
    g0, p0 = curve["gold_at_n1"], curve["proxy_at_n1"]
    g0_step1 = statistics.fmean(r[0]["reward/gold"] for r in runs)
    per_seed = []
    for rows in runs:
        d = [math.sqrt(max(v, 0.0)) for _, v in series(rows, "kl/init_k1")]
        gold = [v - g0 for _, v in series(rows, "reward/gold")]
        proxy = [v - p0 for _, v in series(rows, "reward/proxy")]
        per_seed.append({"d": d, "gold": gold, "proxy": proxy})
    pooled_d = [x for s in per_seed for x in s["d"]]
    pooled_g = [x for s in per_seed for x in s["gold"]]
    rl_fit = fit_rl(pooled_d, pooled_g)
    rl_fit_step1 = fit_rl(pooled_d, [x + g0 - g0_step1 for x in pooled_g])
    seed_fits = [fit_rl(s["d"], s["gold"]) for s in per_seed]

    # where over-optimisation starts: the peak of the seed-mean smoothed gold curve
    n = min(len(s["gold"]) for s in per_seed)
    mean_gold = [statistics.fmean(s["gold"][i] for s in per_seed) for i in range(n)]
    sm = smooth(mean_gold)
    peak = max(range(n), key=lambda i: sm[i])
    k = min(3, n)
    drops = [statistics.fmean(smooth(s["gold"])[peak:peak + 1])
             - statistics.fmean(s["gold"][n - k:n]) for s in per_seed]
    proxy_rise = [statistics.fmean(s["proxy"][n - k:n]) - smooth(s["proxy"])[peak]
                  for s in per_seed]
    final_d = [statistics.fmean(s["d"][n - k:n]) for s in per_seed]
    drop_ci = bootstrap_ci(drops)

    # verdict
    overopt = drop_ci[0] > 0 and statistics.fmean(proxy_rise) > 0 and peak < n - 1
    fits = rl_fit["r2"] >= 0.8 and bon_fit["r2"] >= 0.8
    verdict = "held" if overopt and fits else "partly" if overopt or fits else "not reproduced"

    plots = [plot(ctx, per_seed, rl_fit, curve, bon_fit)]
    dm, dse = mean_se(drops)
    measured = (f"PPO gold peak at step {peak + 1} of {n}, drop to the end "
                f"{fmt(dm, dse)} (95% CI {fmt_ci(*drop_ci)}); RL fit R²={rl_fit['r2']:.2f}; "
                f"BoN fit R²={bon_fit['r2']:.2f}")
    setting = (f"{ctx.label}, single proxy, β=0, "
               f"{ctx.seeds} seeds × {z['steps']} steps × {z['samples_per_step']} samples; "
               f"BoN {z['bon_prompts']} prompts × N={z['bon_n']}")
    section = "\n".join([
        f"Setting: {setting}. Learning rate {z['lr']}; d = sqrt(KL to init) with KL the summed "
        "k1 of the batch; rewards re-centred on the initial policy: the SFT samples' mean "
        f"(gold {g0:.3f}, proxy {p0:.3f}; {z['bon_prompts'] * z['bon_n']} samples). A first "
        "analysis re-centred on the step-1 batches pooled over seeds (gold "
        f"{g0_step1:.3f}: the 32 prompts every seed starts with); its fit is the second row.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| RL fit, pooled: α, β, R² | {rl_fit['alpha']:.3f}, {rl_fit['beta']:.3f}, "
        f"{rl_fit['r2']:.3f} ({rl_fit['points']} points) |",
        f"| RL fit, pooled, step-1 baseline: α, β, R² | {rl_fit_step1['alpha']:.3f}, "
        f"{rl_fit_step1['beta']:.3f}, {rl_fit_step1['r2']:.3f} |",
        f"| RL fit per seed: α; β; R² (mean ± s.e.) | "
        f"{fmt(*mean_se([f['alpha'] for f in seed_fits]))}; "
        f"{fmt(*mean_se([f['beta'] for f in seed_fits]))}; "
        f"{fmt(*mean_se([f['r2'] for f in seed_fits]))} |",
        f"| step of the seed-mean gold peak (3-step average) | {peak + 1} of {n} |",
        f"| gold drop, peak → last {k} steps (mean ± s.e.; 95% CI) | {fmt(dm, dse)}; "
        f"{fmt_ci(*drop_ci)} |",
        f"| proxy change over the same span | {fmt(*mean_se(proxy_rise))} |",
        f"| d at the end | {fmt(*mean_se(final_d))} |",
        f"| BoN fit: α, β, R² | {bon_fit['alpha']:.3f}, {bon_fit['beta']:.3f}, "
        f"{bon_fit['r2']:.3f} (n = 1..{z['bon_n']}) |",
        f"| BoN gold gain at n={z['bon_n']} (95% CI over prompts) | "
        f"{fmt(curve['gold'][-1])} {fmt_ci(*bon_gain_ci)} |",
        f"| BoN proxy gain at n={z['bon_n']} | {fmt(curve['proxy'][-1])} |",
        "",
        f"Verdict: **{verdict}**. The drop from a peak picked on the same data is biased "
        "upwards by noise; the bootstrap CI is over seeds only.",
    ])
    return {
        "title": TITLE, "claims": [{**CLAIM, "setting": setting, "measured": measured,
                                    "verdict": verdict}],
        "section": section, "plots": plots, "sizes": z,
        "data": {"ppo": per_seed, "rl_fit": rl_fit, "rl_fit_per_seed": seed_fits,
                 "peak_step": peak + 1, "drops": drops, "proxy_rise": proxy_rise,
                 "baseline": {"gold": g0, "proxy": p0, "gold_step1": g0_step1},
                 "rl_fit_step1_baseline": rl_fit_step1, "bon": curve, "bon_fit": bon_fit},
    }


def plot(ctx: Ctx, per_seed, rl_fit, curve, bon_fit) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, s in enumerate(per_seed):
        a.plot(s["d"], s["gold"], "o-", ms=3, alpha=0.6, color="C0",
               label="gold" if i == 0 else None)
        a.plot(s["d"], s["proxy"], "s-", ms=3, alpha=0.4, color="C1",
               label="proxy" if i == 0 else None)
    dmax = max((max(s["d"]) for s in per_seed), default=1.0)
    xs = [dmax * i / 100 for i in range(1, 101)]
    if rl_fit["alpha"] == rl_fit["alpha"]:
        a.plot(xs, [x * (rl_fit["alpha"] - rl_fit["beta"] * math.log(x)) for x in xs], "k--",
               label=f"fit d(α−β log d), R²={rl_fit['r2']:.2f}")
    a.set(xlabel="d = sqrt(KL to init)", ylabel="reward − initial", title="PPO, β = 0")
    a.legend(fontsize=8)
    b.plot(curve["d"], curve["gold"], "o-", label="gold")
    b.plot(curve["d"], curve["proxy"], "s-", label="proxy (member 0)")
    xs = [max(curve["d"]) * i / 100 for i in range(101)]
    if bon_fit["alpha"] == bon_fit["alpha"]:
        b.plot(xs, [x * (bon_fit["alpha"] - bon_fit["beta"] * x) for x in xs], "k--",
               label=f"fit d(α−β d), R²={bon_fit['r2']:.2f}")
    b.set(xlabel="d = sqrt(KL_bon(n))", title="best-of-n (SFT samples)")
    b.legend(fontsize=8)
    return save_fig(fig, ctx, "reward_vs_d")
