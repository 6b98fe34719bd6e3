"""The over-optimisation alarm (services/alarm.py) validated against gold, pre-registered.

Design (written before the run; the alarm reads only the reward members' disagreement, never
gold):
- Runs. Two arms on the tiny world, each 50 steps of 32 samples, lr 1e-4, one proxy trained on
  (reward.aggregation=single: member 0) and all 4 members scoring every sample, held-out gold
  and KL every 5 steps on 32 stratified prompts:
  `overopt`: no KL penalty (learner.kl.coef=0), the setting where every seed of the overopt
  experiment peaked and fell; `penalised`: learner.kl.coef=0.1, whose gold rose through 50
  steps in the elastic experiment. Seeds 0-2 tune, seeds 3-9 report (never used to tune).
- Ground truth (gold, which the alarm never sees). gain = held-out gold - g0, g0 the SFT
  policy's mean gold on the same prompts (64 completions each). A run over-optimises when a
  held-out point after its peak has gain < 0.9 x the peak gain (peak gain > 0); its fall step
  is the first such point. A run that does not is clean, whatever its arm.
- Alarm. `replay` of each run's per-step `reward/disagreement` (the online computation, run
  offline so that one set of runs serves every setting). Tuning grid: threshold in {0.1, 0.2,
  0.35, 0.5, 0.75, 1.0}, halflife in {2, 4}, patience in {1, 3}; warmup 5, warning =
  threshold / 2. Chosen on the tuning seeds: the most detections among settings with no
  false alarm; ties by the larger mean kept share (below), then the larger threshold.
- Measures on the report seeds. Detection: the alarm fires at or before the fall step (lead
  = fall - alarm step, in steps and in KL to init); late or never = a miss. False alarm: the
  alarm fires in a clean run. Recommended checkpoint: the newest checkpoint (every 5 steps)
  at or before the last ok step when the alarm fired (none before step 5: the initial policy,
  gain 0); without an alarm the run's final policy. Kept share = its gain / the oracle peak
  gain (the best held-out point), beside the final policy's share.
- Goals (issue): detection >= 0.8 of over-optimising runs; false alarms <= 0.1 of clean runs;
  kept share >= 0.8. Each is reported with a 95% interval (Wilson for rates, t over runs for
  the share); "met" = the point estimate meets the goal, "decided" = the interval lies on one
  side of it. Power: with 7 report seeds per arm, 7/7 detections give a Wilson lower bound of
  0.65, so the detection goal cannot be decided above 0.8 with this budget (3 hours of this
  machine); the table says so.
"""

from __future__ import annotations

import itertools
import math
import statistics

from experiments.common import (
    Ctx,
    bon_samples,
    fmt,
    heldout_points,
    paired_t_ci,
    pyplot,
    run_arm,
    save_fig,
    seed_rows,
)
from services.alarm import Alarm, replay

TITLE = "Over-optimisation alarm, validated against gold"
CLAIM = {"claim": "The disagreement alarm fires before held-out gold falls, seldom where it "
                  "does not, and its checkpoint keeps most of the peak gold gain",
         "paper": "Coste et al. 2024: ensemble disagreement tracks over-optimisation"}
SEEDS = 10  # seeds 0..TUNE-1 tune, the rest report
TUNE = 3
GOALS = {"detection": 0.8, "false_alarm": 0.1, "kept_share": 0.8}
GRID = [{"warmup": 5, "threshold": t, "warning": t / 2, "halflife": h, "patience": p}
        for t, h, p in itertools.product((0.1, 0.2, 0.35, 0.5, 0.75, 1.0), (2.0, 4.0), (1, 3))]
FALL = 0.9  # a run over-optimises when gain < FALL x its peak gain after the peak


def sizes(ctx: Ctx) -> dict:
    return {"steps": ctx.size(6, 50), "samples_per_step": ctx.size(16, 32),
            "minibatch_size": ctx.size(8, 16), "lr": 1e-4, "eval_every": ctx.size(2, 5),
            "eval_prompts": ctx.size(8, 32), "baseline_n": ctx.size(4, 64),
            "beta": 0.1}


def run(ctx: Ctx) -> dict:
    z = sizes(ctx)
    common = ["reward.aggregation=single", f"learner.steps={z['steps']}",
              f"learner.samples_per_step={z['samples_per_step']}",
              f"learner.minibatch_size={z['minibatch_size']}", f"learner.lr={z['lr']}",
              f"learner.eval_every={z['eval_every']}",
              f"learner.eval_prompts={z['eval_prompts']}", "alarm.action=none"]
    arms = {"overopt": [*common, "learner.kl.coef=0"],
            "penalised": [*common, f"learner.kl.coef={z['beta']}"]}
    runs: dict[str, list[list[dict]]] = {a: [] for a in arms}
    for seed in range(ctx.seeds):
        for arm, overrides in arms.items():
            runs[arm].append(run_arm(ctx, arm, seed, overrides))
    bon = bon_samples(ctx, z["eval_prompts"], z["baseline_n"])
    g0 = statistics.fmean(g for row in bon["gold"] for g in row)

    truth = [(arm, seed, ground_truth(rows, z["eval_every"], g0))
             for arm, per_seed in runs.items() for seed, rows in enumerate(per_seed)]
    n_tune = ctx.size(1, TUNE)
    tune = [t for t in truth if t[1] < n_tune]
    report = [t for t in truth if t[1] >= n_tune]
    scored = [(p, score(tune, runs, p)) for p in GRID]
    best, tuned = max(scored, key=lambda ps: (ps[1]["detected"] - 1000 * ps[1]["false_alarms"],
                                              ps[1]["kept_share_mean"], ps[0]["threshold"]))
    held = score(report, runs, best)
    claims, table = verdicts(held)
    setting = (f"{ctx.label}, aggregation single (member 0 trained on, {_members(runs)} "
               f"members scoring), {z['steps']} steps × {z['samples_per_step']} samples, lr "
               f"{z['lr']}; arms: β=0 (overopt), β={z['beta']} (penalised); seeds "
               f"0-{n_tune - 1} tune, {n_tune}-{ctx.seeds - 1} report")
    section = "\n".join([
        f"Setting: {setting}. Held-out gold and KL every {z['eval_every']} steps on "
        f"{z['eval_prompts']} prompts; gains re-centred on the SFT policy's held-out gold "
        f"({g0:.3f}). Design, grid and measures: the module docstring of "
        "`experiments/alarm.py`, written before the run.",
        "",
        f"Tuned on seeds 0-{n_tune - 1} ({len(tune)} runs, {tuned['overoptimised']} over-optimise):"
        f" threshold {best['threshold']}, halflife {best['halflife']}, patience "
        f"{best['patience']} ({tuned['detected']} detected, {tuned['false_alarms']} false "
        "alarms).",
        "",
        "| report seeds | value | 95% interval | goal | met | decided |",
        "|---|---|---|---|---|---|",
        *table,
        "",
        "| run | over-optimises (fall step) | alarm step | lead: steps, KL | recommended step |"
        " kept share | final share |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['arm']} s{r['seed']} | {'yes (' + str(r['fall']) + ')' if r['fall'] else 'no'}"
          f" | {r['alarm'] or '-'} | {_lead(r)} | {r['recommended']} | "
          f"{fmt(r['kept_share'], digits=2)} | {fmt(r['final_share'], digits=2)} |"
          for r in held["runs"]],
    ])
    return {
        "title": TITLE, "method": "preregistered", "claims": claims, "section": section,
        "plots": [plot(ctx, runs, truth, best, z)], "sizes": z,
        "rows": seed_rows(runs, ["reward/proxy", "reward/disagreement", "kl/init_k1",
                                 "eval/gold", "eval/kl_init"]),
        "data": {"baseline_gold": g0, "grid": [{**p, **{k: v for k, v in s.items()
                                                        if k != "runs"}} for p, s in scored],
                 "tuned": best, "report": held},
    }


def ground_truth(rows: list[dict], every: int, g0: float) -> dict:
    """Per run, from gold: held-out points (step, gain, kl), the peak and the fall step."""
    pts = [{"step": p["step"], "gain": p["gold"] - g0, "kl": p["kl"]}
           for p in heldout_points(rows, every)]
    if not pts:
        return {"points": [], "peak": None, "fall": None}
    peak = max(range(len(pts)), key=lambda i: pts[i]["gain"])
    fall = next((p["step"] for p in pts[peak + 1:]
                 if pts[peak]["gain"] > 0 and p["gain"] < FALL * pts[peak]["gain"]), None)
    return {"points": pts, "peak": pts[peak]["step"], "fall": fall}


def score(truth, runs, params: dict) -> dict:
    """The alarm with `params` replayed on each run of `truth`: detections, false alarms,
    leads and the recommended checkpoint's share of the oracle peak gain."""
    out = []
    for arm, seed, t in truth:
        rows = runs[arm][seed]
        alarm = replay(((r["step"], r["reward/disagreement"]) for r in rows), **params)
        pts = {p["step"]: p for p in t["points"]}
        every = min(pts) if pts else 1
        peak = max((p["gain"] for p in t["points"]), default=0.0)
        # without an alarm: the final policy; with one, the newest checkpoint at or before the
        # last ok step
        rec = ((max(pts) if pts else 0) if alarm.fired_at is None
               else alarm.last_ok // every * every)
        gain = pts[rec]["gain"] if rec in pts else 0.0
        final = pts[max(pts)]["gain"] if pts else 0.0
        kl = {r["step"]: r.get("kl/init_k1") for r in rows}
        out.append({"arm": arm, "seed": seed, "fall": t["fall"], "alarm": alarm.fired_at,
                    "lead_steps": (t["fall"] - alarm.fired_at if t["fall"] and alarm.fired_at
                                   else None),
                    "lead_kl": (kl[t["fall"]] - kl[alarm.fired_at]
                                if t["fall"] and alarm.fired_at and kl.get(t["fall"]) is not None
                                and kl.get(alarm.fired_at) is not None else None),
                    "recommended": rec, "kept_share": gain / peak if peak > 0 else math.nan,
                    "final_share": final / peak if peak > 0 else math.nan})
    over = [r for r in out if r["fall"]]
    clean = [r for r in out if not r["fall"]]
    detected = [r for r in over if r["alarm"] is not None and r["alarm"] <= r["fall"]]
    shares = [r["kept_share"] for r in over if not math.isnan(r["kept_share"])]
    return {"runs": out, "overoptimised": len(over), "clean": len(clean),
            "detected": len(detected), "false_alarms": sum(r["alarm"] is not None for r in clean),
            "lead_steps": [r["lead_steps"] for r in detected],
            "lead_kl": [r["lead_kl"] for r in detected if r["lead_kl"] is not None],
            "kept_share": shares,
            "kept_share_mean": statistics.fmean(shares) if shares else 0.0,
            "final_share": [r["final_share"] for r in over if not math.isnan(r["final_share"])]}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials ((nan, nan) for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def goal_status(value: float, lo: float, hi: float, goal: float, at_least: bool
                ) -> tuple[str, str]:
    """("met" / "not met" by the point estimate, "decided" / "not decided" by the interval)."""
    if math.isnan(value):
        return "no data", "not decided"
    met = value >= goal if at_least else value <= goal
    decided = (lo >= goal or hi < goal) if at_least else (hi <= goal or lo > goal)
    return ("met" if met else "not met"), ("decided" if decided else "not decided")


def verdicts(s: dict) -> tuple[list[dict], list[str]]:
    det = s["detected"] / s["overoptimised"] if s["overoptimised"] else math.nan
    fa = s["false_alarms"] / s["clean"] if s["clean"] else math.nan
    shares = s["kept_share"]
    share = statistics.fmean(shares) if shares else math.nan
    share_lo, share_hi = paired_t_ci(shares, [0.0] * len(shares))  # a t interval over runs
    final = statistics.fmean(s["final_share"]) if s["final_share"] else math.nan
    rows = [("detection rate (fires at or before the fall)", det,
             wilson(s["detected"], s["overoptimised"]), "detection", True,
             f"{s['detected']} of {s['overoptimised']}"),
            ("false-alarm rate (clean runs)", fa, wilson(s["false_alarms"], s["clean"]),
             "false_alarm", False, f"{s['false_alarms']} of {s['clean']}"),
            ("kept share of the oracle peak gain (recommended)", share, (share_lo, share_hi),
             "kept_share", True, f"final policy: {fmt(final, digits=2)}")]
    claims, table = [], []
    for label, value, (lo, hi), goal_key, at_least, note in rows:
        goal = GOALS[goal_key]
        met, decided = goal_status(value, lo, hi, goal, at_least)
        table.append(f"| {label} | {fmt(value, digits=2)} ({note}) | [{fmt(lo, digits=2)}, "
                     f"{fmt(hi, digits=2)}] | {'≥' if at_least else '≤'} {goal} | {met} | "
                     f"{decided} |")
        claims.append({"claim": f"{label}: {'≥' if at_least else '≤'} {goal}",
                       "paper": CLAIM["paper"],
                       "setting": "report seeds", "measured": f"{fmt(value, digits=2)} [{lo:.2f}, "
                       f"{hi:.2f}]", "verdict": ("inconclusive" if decided != "decided"
                                   else "held" if met == "met" else "refuted")})
    leads = s["lead_steps"]
    table.append(f"| median lead, steps (detected runs) | "
                 f"{statistics.median(leads) if leads else '-'} | | | | |")
    kls = s["lead_kl"]
    table.append(f"| median lead, KL to init (detected runs) | "
                 f"{fmt(statistics.median(kls), digits=2) if kls else '-'} | | | | |")
    return claims, table


def _lead(r: dict) -> str:
    if r["lead_steps"] is None:
        return "-"
    kl = "-" if r["lead_kl"] is None else f"{r['lead_kl']:.2f}"
    return f"{r['lead_steps']}, {kl}"


def _members(runs) -> int:
    first = next(rows for per_seed in runs.values() for rows in per_seed if rows)
    return sum(k.startswith("reward/member") for k in first[0])


def plot(ctx: Ctx, runs, truth, params: dict, z: dict) -> str:
    """Per run: held-out gain (top) and the alarm score (bottom), the alarm step marked."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colours = {"overopt": "tab:red", "penalised": "tab:blue"}
    for arm, seed, t in truth:
        rows = runs[arm][seed]
        c = colours[arm]
        a.plot([p["step"] for p in t["points"]], [p["gain"] for p in t["points"]], color=c,
               alpha=0.5, lw=1)
        steps, scores = [], []
        alarm = Alarm(**params)
        for r in rows:
            alarm.update(r["step"], r["reward/disagreement"])
            steps.append(r["step"])
            scores.append(alarm.score)
        fired = alarm.fired_at
        b.plot(steps, scores, color=c, alpha=0.5, lw=1)
        if fired is not None:
            b.axvline(fired, color=c, alpha=0.2, lw=0.8)
    b.axhline(params["threshold"], color="k", ls="--", lw=0.8, label="threshold")
    a.set_ylabel("held-out gold gain")
    b.set_ylabel("alarm score")
    b.set_xlabel("step")
    a.set_title(f"red: β=0 (overopt), blue: β={z['beta']:g} (penalised); vertical lines: "
                "alarms")
    b.legend()
    return save_fig(fig, ctx, "alarm_gain_and_score")
