"""Over-optimisation (Gao et al. 2022): held-out gold against d = sqrt(KL to init) under PPO
on one proxy reward model, and under best-of-n sampling.

Design (written before the run; `DESIGN`):
- PPO on one proxy (reward.aggregation=single), no KL penalty (learner.kl.coef=0), 60 steps of
  32 samples, 6 seeds; each seed has its own prompt order (the run seed), the same for every
  arm. Every 5 steps the learner's policy completes the fixed held-out prompt set
  (`learner.eval_prompts` = 32, stratified over prompt types, the same draws each time):
  gold and d = sqrt(KL to init) of that one policy on those completions. Gold is re-centred on
  the SFT policy's held-out gold (the best-of-n samples at n = 1, same prompts): gain(t).
- Best-of-n: 1024 samples per held-out prompt (the same 32 prompts) from the SFT policy,
  proxy = member 0, the order-statistics estimator, d = sqrt(KL_bon(n)).

Claims and verdict rules (`experiments.common.verdict`: held | refuted | inconclusive):
1. Decline. A seed declines when its gain peaks above 0, its gain at the last eval point is
   <= 0.8 x its own maximum, and the training proxy there (mean of the 5 steps ending at it)
   is above the proxy at the peak. Held if >= 2/3 of the seeds decline; refuted if <= 1/3 do;
   otherwise inconclusive (and inconclusive with fewer than 3 seeds).
2. RL form. Each form R(d) (through the origin) is fitted on all seeds but one and scored on
   the left-out seed's points (mean squared error): d(α − β log d) (RL), d(α − β d) (best-of-n
   form), α d (linear). Effect = (error of the alternative − error of RL) ÷ error of the
   alternative, per seed; paired t-interval over seeds; smallest effect of interest 0.1. Held
   if held against both alternatives; refuted if refuted against either; else inconclusive.
3. Best-of-n passes its peak: gold(256) − gold(1024), per prompt (the order-statistics
   estimate from the same 1024 samples), percentile bootstrap over prompts; smallest effect of
   interest 0.01 gold.

Power (from the runs of 2026-11-30; `experiments.common.sd_from_t_ci`, `seeds_for_power`):
1. If each seed declines with probability 0.9, 6 seeds reach >= 4 declines with probability
   0.98; at 0.5 (no tendency), 0.34: the rule separates the two.
2. RL vs best-of-n form: s.d. of the per-seed relative gain 0.77, power 0.01 at 0.1 with 6
   seeds, 465 seeds for 80%; RL vs linear: s.d. 0.14, 18 seeds. Not decidable against the
   best-of-n form within 3 hours of this machine (about 13 seeds of 60 steps).
3. Best-of-n: s.d. of the per-prompt difference 0.12, about 1180 prompts for 80% at 0.01; the
   fitted curve predicts nearly the same gold at n = 256 and 1024, so more prompts would not
   make it pass its peak either: not decidable as designed.
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
    heldout_points,
    joint_verdict,
    loso_errors,
    mean_se,
    paired_t_ci,
    pyplot,
    run_arms,
    save_fig,
    seed_rows,
    verdict,
)

TITLE = "Over-optimisation (Gao et al. 2022)"
PAPER_FIGURE = ("Gao et al. 2022, the RL and best-of-n panels: gold and proxy RM score against "
                "d = sqrt(KL); proxy rises throughout while gold rises, peaks and falls, and "
                "the fitted forms d(α − β log d) (RL) and d(α − β d) (best-of-n) follow gold")
CLAIM = {
    "claim": "Optimising a proxy RM raises the proxy while held-out gold rises, then falls",
    "paper": "Gao et al.: gold peaks then declines as KL grows, for RL and for best-of-n "
             "(synthetic set-up, RMs 3M-3B params)",
}
CLAIM_FORM = {
    "claim": "RL's gold(d) follows d(α−β log d) better than d(α−β d) or a line (d = √KL)",
    "paper": "Gao et al.: d(α−β log d) fits RL, d(α−β d) fits best-of-n",
}
CLAIM_BON = {
    "claim": "Best-of-n against one proxy passes its gold peak: gold(1024) < gold(256)",
    "paper": "Gao et al.: best-of-n gold declines at large n (KL_bon = log n − (n−1)/n)",
}
SEEDS = 6  # the default of `raylign experiment overopt`
DECLINE_SHARE = (1 / 3, 2 / 3)  # refuted at or below, held at or above
FORM_EFFECT = 0.1  # relative LOSO error reduction of interest
BON_EFFECT = 0.01  # gold


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(6, 60), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": ctx.size(1e-4, 1e-4),
            "eval_every": ctx.size(2, 5), "eval_prompts": ctx.size(8, 32),
            "bon_prompts": ctx.size(4, 32), "bon_n": ctx.size(16, 1024),
            "bon_compare": ctx.size(4, 256)}


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    arm = ["reward.aggregation=single", "learner.kl.coef=0", f"learner.steps={z['steps']}",
           f"learner.samples_per_step={z['samples_per_step']}",
           f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
           f"learner.eval_every={z['eval_every']}", f"learner.eval_prompts={z['eval_prompts']}"]
    runs = run_arms(ctx, {"ppo": arm})["ppo"]

    # best-of-n from the SFT policy on the same held-out prompts; n = 1 is the SFT policy
    bon = bon_samples(ctx, z["bon_prompts"], z["bon_n"])
    ns = [2**i for i in range(int(math.log2(z["bon_n"])) + 1)]
    curve = bon_curve(bon["member"][0], bon["gold"], ns)
    per_prompt = curve.pop("per_prompt_gold")
    i_cmp, i_end = ns.index(z["bon_compare"]), len(ns) - 1
    bon_ci = bootstrap_ci([row[i_cmp] - row[i_end] for row in per_prompt])
    bon_fit = fit_bon(curve["d"], curve["gold"])

    g0 = curve["gold_at_n1"]  # the SFT policy's held-out gold
    per_seed = []
    for rows in runs:
        pts = heldout_points(rows, z["eval_every"])
        per_seed.append({"step": [p["step"] for p in pts], "d": [p["d"] for p in pts],
                         "gain": [p["gold"] - g0 for p in pts],
                         "proxy": [p["proxy"] for p in pts]})

    # 1. decline, per seed
    declines = [_declines(s) for s in per_seed]
    share = sum(declines) / len(declines)
    v1 = ("inconclusive" if len(declines) < 3 else "held" if share >= DECLINE_SHARE[1]
          else "refuted" if share <= DECLINE_SHARE[0] else "inconclusive")

    # 2. functional form, leave one seed out
    pairs = [(s["d"], s["gain"]) for s in per_seed]
    errors = {f: loso_errors(pairs, f) if len(pairs) > 1 else [math.nan] for f in
              ("rl", "bon", "linear")}
    form = {}
    for alt in ("bon", "linear"):
        rel = [(a - r) / a if a > 0 else math.nan for a, r in zip(errors[alt], errors["rl"])]
        ci = paired_t_ci(rel, [0.0] * len(rel))
        form[alt] = {"relative_gain": rel, "ci": ci, "verdict": verdict(ci, FORM_EFFECT)}
    vs = [f["verdict"] for f in form.values()]
    v2 = joint_verdict(vs, refuted_by="any")
    rl_fit = fit_rl([x for d, _ in pairs for x in d], [y for _, g in pairs for y in g])

    # 3. best-of-n past its peak
    v3 = verdict(bon_ci, BON_EFFECT)

    peaks = [max(s["gain"]) if s["gain"] else math.nan for s in per_seed]
    ends = [s["gain"][-1] if s["gain"] else math.nan for s in per_seed]
    setting = (f"{ctx.label}, single proxy, β=0, {ctx.seeds} seeds × {z['steps']} steps × "
               f"{z['samples_per_step']} samples; held-out gold and KL every {z['eval_every']} "
               f"steps on {z['eval_prompts']} stratified prompts; BoN {z['bon_prompts']} prompts "
               f"× N={z['bon_n']}")
    m1 = (f"{sum(declines)} of {len(declines)} seeds decline (gain at the end ≤ 0.8 × own "
          f"peak while the proxy rises); peak gain {fmt(*mean_se(peaks))}, end "
          f"{fmt(*mean_se(ends))}")
    m2 = "; ".join(f"RL vs {alt}: LOSO error {fmt(statistics.fmean(errors['rl']), digits=4)} "
                   f"vs {fmt(statistics.fmean(errors[alt]), digits=4)}, relative gain CI "
                   f"{fmt_ci(*form[alt]['ci'])}" for alt in form)
    m3 = (f"gold(n={z['bon_compare']}) − gold(n={z['bon_n']}) {fmt_ci(*bon_ci)} (over "
          f"prompts); BoN gold at n = {z['bon_compare']}, {z['bon_n']}: "
          f"{curve['gold'][i_cmp]:.3f}, {curve['gold'][i_end]:.3f}")
    section = "\n".join([
        f"Setting: {setting}. Learning rate {z['lr']}. Gains are re-centred on the SFT "
        f"policy's held-out gold ({g0:.3f}: {z['bon_prompts'] * z['bon_n']} samples on the "
        "same prompts). Design and verdict rules: the module docstring of "
        "`experiments/overopt.py`, written before the run.",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| seed {i}: eval steps; gain; d; proxy | {s['step']}; "
          f"{[round(x, 3) for x in s['gain']]}; {[round(x, 2) for x in s['d']]}; "
          f"{[round(x, 3) for x in s['proxy']]} |" for i, s in enumerate(per_seed)],
        f"| seeds that decline | {sum(declines)} of {len(declines)} ({share:.2f}) |",
        f"| LOSO mean squared error: RL; BoN form; linear | "
        f"{'; '.join(fmt(statistics.fmean(errors[f]), digits=4) for f in errors)} |",
        f"| RL form fitted to every point: α, β, R² | {rl_fit['alpha']:.3f}, "
        f"{rl_fit['beta']:.3f}, {rl_fit['r2']:.3f} |",
        f"| BoN fit d(α−β d): α, β, R² | {bon_fit['alpha']:.3f}, {bon_fit['beta']:.3f}, "
        f"{bon_fit['r2']:.3f} (n = 1..{z['bon_n']}) |",
        f"| BoN gold(n={z['bon_compare']}) − gold(n={z['bon_n']}) (95% CI over prompts) | "
        f"{fmt_ci(*bon_ci)} |",
        "",
        f"Verdicts: decline **{v1}**; RL form **{v2}**; best-of-n past its peak **{v3}**.",
    ])
    return {
        "title": TITLE, "method": "preregistered",
        "claims": [{**CLAIM, "setting": setting, "measured": m1, "verdict": v1},
                   {**CLAIM_FORM, "setting": setting, "measured": m2, "verdict": v2},
                   {**CLAIM_BON, "setting": setting, "measured": m3, "verdict": v3}],
        "section": section, "plots": [plot(ctx, per_seed, rl_fit, curve, bon_fit)], "sizes": z,
        "rows": seed_rows({"ppo": runs}, ["reward/proxy", "reward/gold", "kl/init_k1",
                                          "eval/gold", "eval/kl_init", "drift/ppl_policy",
                                          "drift/ppl_init"]),
        "data": {"ppo": per_seed, "declines": declines, "loso_errors": errors,
                 "form": {alt: {"relative_gain": f["relative_gain"], "ci": list(f["ci"])}
                          for alt, f in form.items()},
                 "rl_fit": rl_fit, "baseline_gold": g0, "bon": curve, "bon_fit": bon_fit,
                 "bon_ci": list(bon_ci)},
    }


def _declines(seed: dict) -> bool:
    """Gain at the end <= 0.8 x the seed's own peak gain (> 0), with the proxy still higher at
    the end than at the peak."""
    gain, proxy = seed["gain"], seed["proxy"]
    if len(gain) < 2:
        return False
    peak = max(range(len(gain)), key=gain.__getitem__)
    return gain[peak] > 0 and gain[-1] <= 0.8 * gain[peak] and proxy[-1] > proxy[peak]


def plot(ctx: Ctx, per_seed, rl_fit, curve, bon_fit) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, s in enumerate(per_seed):
        a.plot(s["d"], s["gain"], "o-", ms=3, alpha=0.6, color=f"C{i % 10}",
               label=f"seed {i}")
    dmax = max((max(s["d"], default=0.0) for s in per_seed), default=1.0) or 1.0
    xs = [dmax * i / 100 for i in range(1, 101)]
    if rl_fit["alpha"] == rl_fit["alpha"]:
        a.plot(xs, [x * (rl_fit["alpha"] - rl_fit["beta"] * math.log(x)) for x in xs], "k--",
               label="d(α−β log d), all points")
    a.set(xlabel="d = sqrt(KL to init), held-out", ylabel="held-out gold − SFT",
          title="PPO, β = 0")
    a.legend(fontsize=7)
    b.plot(curve["d"], curve["gold"], "o-", label="gold")
    b.plot(curve["d"], curve["proxy"], "s-", label="proxy (member 0)")
    xs = [max(curve["d"]) * i / 100 for i in range(101)]
    if bon_fit["alpha"] == bon_fit["alpha"]:
        b.plot(xs, [x * (bon_fit["alpha"] - bon_fit["beta"] * x) for x in xs], "k--",
               label=f"fit d(α−β d), R²={bon_fit['r2']:.2f}")
    b.set(xlabel="d = sqrt(KL_bon(n))", title="best-of-n (SFT samples, held-out prompts)")
    b.legend(fontsize=8)
    return save_fig(fig, ctx, "reward_vs_d")
