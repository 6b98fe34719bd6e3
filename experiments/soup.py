"""Soup reference (SALSA, Chegini et al. 2024): policy and KL reference = the SFT soup.

Arms, same beta (0.01), same proxy (one RM), same steps:
    sft    policy.init=sft,  learner.kl.reference=init  (SFT model 0, KL to itself)
    soup   policy.init=soup, learner.kl.reference=soup  (uniform soup of the SFT models)
Gold at matched steps (the last 3 steps' batch gold), gold at matched KL (each seed's gold vs
KL-to-its-own-init curve, 3-step averages, linearly interpolated at KL levels both arms
reached), and the per-prompt gold win rate on held-out prompts: each arm's final policy (its
end-of-run checkpoint) samples `per_prompt` completions per eval prompt, and soup wins a
prompt if its mean gold is higher (ties count half), per seed pairing.

Verdict rule (fixed before running): "held" if soup's final gold beats sft's with the
bootstrap 95% CI of the difference above 0 and the win rate's CI is above 0.5; "partly" if
one of the two, or both point estimates favour soup; else "not reproduced".
"""

from __future__ import annotations

import statistics

from experiments.common import (
    Ctx,
    bootstrap_ci,
    bootstrap_diff_ci,
    fmt,
    fmt_ci,
    load_cfg,
    mean_se,
    pyplot,
    run_arms,
    save_fig,
    smooth,
    world,
)

TITLE = "Soup reference (SALSA, Chegini et al. 2024)"
CLAIM = {
    "claim": "Starting from and regularising towards a soup of SFT models gives higher gold "
             "reward than the single-SFT reference at the same β",
    "paper": "SALSA: higher reward and win rate than PPO with the frozen SFT reference "
             "(Llama2-7B, Mistral-7B; MT-Bench, Arena-Hard, UltraFeedback)",
}
BETA = "0.01"


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(3, 40), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4,
            "eval_prompts": ctx.size(8, 100), "per_prompt": ctx.size(2, 4)}


def arms(z: dict) -> dict[str, list[str]]:
    common = ["reward.aggregation=single", "reward.members=1", f"learner.kl.coef={BETA}",
              f"learner.steps={z['steps']}", f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              "learner.eval_every=0"]
    return {"sft": [*common, "policy.init=sft", "learner.kl.reference=init"],
            "soup": [*common, "policy.init=soup", "learner.kl.reference=soup"]}


def final_policy_gold(ctx: Ctx, arm: str, seed: int, prompts: list[str], per_prompt: int
                      ) -> list[float]:
    """Mean gold per prompt of the arm's final policy (loaded from its last checkpoint)."""
    import torch
    from safetensors.torch import load_file

    from learner.elastic_reset import copy_into_
    from services.checkpoint import latest_valid
    from services.tasks.models import sample_completions
    from services.tasks.tiny_world import gold_score, load_policy

    cfg = load_cfg(ctx, [f"name={ctx.name}-{arm}-s{seed}"])
    ckpt = latest_valid(cfg.path)
    state = load_file(str(ckpt / "learner" / "state.safetensors"))
    model, tok = load_policy(world(ctx).sft_dirs[0])
    copy_into_(model, {k[len("policy/"):]: v for k, v in state.items()
                       if k.startswith("policy/")})
    torch.manual_seed(10_000 + seed)
    flat = [p for p in prompts for _ in range(per_prompt)]
    comps = sample_completions(model, tok, flat, cfg.rollout.sampling.max_new_tokens,
                               batch_size=128)
    gold = gold_score(flat, comps)
    return [statistics.fmean(gold[i * per_prompt:(i + 1) * per_prompt])
            for i in range(len(prompts))]


def gold_at_kl(rows: list[dict], levels: list[float]) -> list[float]:
    """Linear interpolation of the (3-step averaged) gold-vs-KL curve at `levels`."""
    import numpy as np

    kl = smooth([r["kl/init_k1"] for r in rows])
    gold = smooth([r["reward/gold"] for r in rows])
    order = np.argsort(kl)
    return [float(v) for v in np.interp(levels, np.asarray(kl)[order], np.asarray(gold)[order])]


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    runs = run_arms(ctx, arms(z))
    k = 3
    final = {a: [statistics.fmean(r["reward/gold"] for r in rows[-k:]) for rows in runs[a]]
             for a in runs}
    final_kl = {a: [statistics.fmean(r["kl/init_k1"] for r in rows[-k:]) for rows in runs[a]]
                for a in runs}
    kl_max = min(max(smooth([r["kl/init_k1"] for r in rows])) for a in runs for rows in runs[a])
    levels = [kl_max * f for f in (0.25, 0.5, 0.75, 1.0)] if kl_max > 0 else []
    matched = {a: [gold_at_kl(rows, levels) for rows in runs[a]] for a in runs}
    matched_diff = [bootstrap_diff_ci([m[i] for m in matched["soup"]],
                                      [m[i] for m in matched["sft"]]) for i in range(len(levels))]
    prompts = world(ctx).eval_prompts[:z["eval_prompts"]]
    wins = []
    for seed in range(ctx.seeds):
        g_soup = final_policy_gold(ctx, "soup", seed, prompts, z["per_prompt"])
        g_sft = final_policy_gold(ctx, "sft", seed, prompts, z["per_prompt"])
        wins += [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(g_soup, g_sft)]
    win = statistics.fmean(wins)
    win_ci = bootstrap_ci(wins)
    diff_ci = bootstrap_diff_ci(final["soup"], final["sft"])
    favours = statistics.fmean(final["soup"]) > statistics.fmean(final["sft"]) and win > 0.5
    v = ("held" if diff_ci[0] > 0 and win_ci[0] > 0.5
         else "partly" if diff_ci[0] > 0 or win_ci[0] > 0.5 or favours else "not reproduced")

    setting = (f"{ctx.label}, single proxy, β={BETA}, "
               f"{ctx.seeds} seeds × {z['steps']} steps × {z['samples_per_step']} samples; "
               f"win rate on {len(prompts)} eval prompts × {z['per_prompt']} samples")
    measured = (f"soup − sft final gold {fmt_ci(*diff_ci)}; per-prompt win rate {win:.3f} "
                f"{fmt_ci(*win_ci)}")
    rows = ["| quantity | sft (init=sft, ref=init) | soup (init=soup, ref=soup) |",
            "|---|---|---|",
            f"| gold, last {k} steps | {fmt(*mean_se(final['sft']))} | "
            f"{fmt(*mean_se(final['soup']))} |",
            f"| KL to own init, last {k} steps | {fmt(*mean_se(final_kl['sft']))} | "
            f"{fmt(*mean_se(final_kl['soup']))} |",
            f"| gold at step 1 | {fmt(*mean_se([r[0]['reward/gold'] for r in runs['sft']]))} | "
            f"{fmt(*mean_se([r[0]['reward/gold'] for r in runs['soup']]))} |"]
    for i, lv in enumerate(levels):
        rows.append(f"| gold at KL = {lv:.2f} (soup − sft: {fmt_ci(*matched_diff[i])}) | "
                    f"{fmt(*mean_se([m[i] for m in matched['sft']]))} | "
                    f"{fmt(*mean_se([m[i] for m in matched['soup']]))} |")
    section = "\n".join([f"Setting: {setting}; lr {z['lr']}.", "", *rows, "",
                         f"Verdict: **{v}** ({measured})."])
    plots = [plot(ctx, runs)]
    return {
        "title": TITLE, "claims": [{**CLAIM, "setting": setting, "measured": measured,
                                    "verdict": v}],
        "section": section, "plots": plots, "sizes": z,
        "data": {"final_gold": final, "final_kl": final_kl, "kl_levels": levels,
                 "gold_at_kl": matched, "gold_at_kl_diff_ci": matched_diff, "win_rate": win,
                 "win_rate_ci": win_ci, "final_diff_ci": diff_ci},
    }


def plot(ctx: Ctx, runs) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for j, (arm, seeds) in enumerate(runs.items()):
        for i, rows in enumerate(seeds):
            lab = arm if i == 0 else None
            a.plot([r["step"] for r in rows], smooth([r["reward/gold"] for r in rows]),
                   color=f"C{j}", alpha=0.7, label=lab)
            b.plot(smooth([r["kl/init_k1"] for r in rows]),
                   smooth([r["reward/gold"] for r in rows]), color=f"C{j}", alpha=0.7, label=lab)
    a.set(xlabel="step", ylabel="batch gold (3-step avg)", title="gold at matched steps")
    b.set(xlabel="KL to own init (summed k1)", ylabel="batch gold (3-step avg)",
          title="gold at matched KL")
    a.legend()
    b.legend()
    return save_fig(fig, ctx, "gold")
