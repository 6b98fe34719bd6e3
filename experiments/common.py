"""What every experiment shares: runs through `services.bootstrap.train`, statistics, fits, plots.

An experiment is a function `run(ctx) -> dict` (the result JSON). It trains its arms with
`run_arm` (one `train(cfg)` per arm and seed, each with its own `name` under ctx.runs, metrics
exporter off, checkpoint only at the end) and reads back the `metrics.jsonl` rows. A finished
run whose config is unchanged is reused, so an interrupted experiment resumes arm by arm.

Statistics: mean ± standard error over seeds (`mean_se`), percentile bootstrap 95% CIs
(`bootstrap_ci`, 2000 resamples, fixed seed) for means and for differences of means; paired
t-intervals over seeds (`paired_t_ci`, df = seeds - 1) for differences between arms that share
seeds; a cluster bootstrap over seeds (`cluster_bootstrap_ci`) for per-prompt win rates; and
`verdict` (held | refuted | inconclusive, by VERDICT_RULE).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "deploy/configs/tiny.yaml"
MICRO = REPO / "deploy/configs/micro.yaml"
QUICK_WORLDS = REPO / ".cache/test-worlds"  # the tests' micro world (tests/conftest.py)


@dataclass
class Ctx:
    """Where and how big: one experiment invocation."""

    name: str
    quick: bool  # micro world, a few steps: an integration test of the command
    seeds: int
    out: Path  # JSON + PNG of this experiment
    runs: Path  # run dirs (RUN_DIR = runs/<name>)
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    ray_started: bool = False  # Ray started by run_arm (shut down by run_experiment)
    world_overrides: list[str] = field(default_factory=list)  # the experiment's world (task.*)
    commit: str = ""  # the code's commit (run_experiment sets it): part of the run cache key
    digests: dict[str, str] = field(default_factory=dict)  # world key -> content digest

    @property
    def label(self) -> str:
        return "micro world (quick)" if self.quick else "tiny world"

    @property
    def config_path(self) -> Path:
        return MICRO if self.quick else TINY

    def size(self, quick, full):
        return quick if self.quick else full


def base_overrides(ctx: Ctx) -> list[str]:
    """Set for every experiment run. Everything an arm compares is set explicitly by the arm;
    these switch off what the tiny.yaml demo turns on (Elastic Reset, uwo) so that arms start
    from plain PPO, make runs synchronous (max_staleness 0: a batch's gold, KL and drift all
    belong to one policy version) and skip the exporter and intermediate checkpoints."""
    out = [f"run_dir={ctx.runs}", "metrics.enabled=false", "checkpoint.every=0",
           "rollout.max_staleness=0", "learner.elastic_reset.enabled=false",
           "reward.aggregation=single", "learner.kl.reference=init", "learner.kl.adaptive=false",
           "policy.init=sft", "reward.gold_eval=true"]
    if ctx.quick:
        out += [f"task.cache_dir={QUICK_WORLDS}", "learner.eval_every=1"]
    return out + ctx.world_overrides


def load_cfg(ctx: Ctx, overrides: Sequence[str]):
    from services.config import load_config

    return load_config(ctx.config_path, [*base_overrides(ctx), *overrides])


def world(ctx: Ctx):
    from tasks.tiny_world import prepare

    return prepare(load_cfg(ctx, []).task)


def world_digest(ctx: Ctx) -> str:
    """The content digest of the experiment's world build (tasks.tiny_world.world_digest),
    computed once per experiment: part of every result and of the run cache key."""
    from tasks.tiny_world import world_digest as digest

    root = world(ctx).root
    if root.name not in ctx.digests:
        ctx.digests[root.name] = digest(root)
    return ctx.digests[root.name]


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_arm(ctx: Ctx, arm: str, seed: int, overrides: Sequence[str]) -> list[dict]:
    """Train one arm with one seed through `services.bootstrap.train`; the metrics rows."""
    import time

    from services.bootstrap import train

    cfg = load_cfg(ctx, [*overrides, f"name={ctx.name}-{arm}-s{seed}", f"seed={seed}"])
    run_dir = cfg.path
    # a finished run is reused only for the same config, world build (its content) and code
    wanted = {"config": cfg.model_dump(mode="json"), "world": world(ctx).root.name,
              "world_digest": world_digest(ctx), "commit": ctx.commit}
    done, stamp = run_dir / "summary.json", run_dir / "experiment.json"
    same = (done.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted)
    if same:
        rows = read_rows(run_dir)
        if len(rows) == cfg.learner.steps:
            ctx.log(f"[{ctx.name}] {arm} seed {seed}: reusing {run_dir}")
            ctx.timings[f"{arm}/s{seed}"] = round(json.loads(done.read_text())["seconds"], 1)
            return rows
    if run_dir.exists():
        shutil.rmtree(run_dir)  # metrics.jsonl is appended to: never mix two runs
    from services.bootstrap import init_ray

    ctx.ray_started |= init_ray(cfg)  # one Ray for every run (train() reuses it)
    t0 = time.perf_counter()
    summary = train(cfg)
    stamp.write_text(json.dumps(wanted))
    ctx.timings[f"{arm}/s{seed}"] = round(time.perf_counter() - t0, 1)
    rows = read_rows(run_dir)
    ctx.log(f"[{ctx.name}] {arm} seed {seed}: {summary['steps']} steps in "
            f"{ctx.timings[f'{arm}/s{seed}']:.0f}s, final gold "
            f"{rows[-1].get('reward/gold', math.nan):.3f}")
    return rows


def run_arms(ctx: Ctx, arms: dict[str, list[str]]) -> dict[str, list[list[dict]]]:
    """{arm: [rows of seed 0, rows of seed 1, ...]}, seeds outermost so that a cut-short
    experiment has every arm at the lower seeds."""
    out: dict[str, list[list[dict]]] = {a: [] for a in arms}
    for seed in range(ctx.seeds):
        for arm, overrides in arms.items():
            out[arm].append(run_arm(ctx, arm, seed, overrides))
    return out


TUNE_SEED0 = 1000  # tuning runs use seeds 1000, 1001, ...; verdicts use 0, 1, ...


def overrides_for(setting: Sequence[str] | Callable[[int], list[str]], seed: int) -> list[str]:
    """A setting's overrides: a list, or a function of the seed (e.g. which member)."""
    return setting(seed) if callable(setting) else list(setting)


def tune(ctx: Ctx, methods: dict[str, dict], score: Callable[[list[dict]], float],
         seeds: int, runner=None) -> dict[str, dict]:
    """Equal tuning budgets: every method gets the same number of settings ({name:
    overrides, or a function of the seed}; checked), each trained on the same `seeds` tuning
    seeds TUNE_SEED0 + i (never a verdict seed); a method's best setting has the highest mean
    `score(rows)`. Returns {method: {"best": name, "scores": {name: mean score}}}.
    `runner`: run_arm's signature."""
    budgets = {m: len(s) for m, s in methods.items()}
    if len(set(budgets.values())) != 1:
        raise ValueError(f"tune: unequal tuning budgets {budgets}")
    runner = runner or run_arm
    out = {}
    for method, settings in methods.items():
        scores = {name: statistics.fmean(
                      score(runner(ctx, f"tune-{name}", TUNE_SEED0 + i,
                                   overrides_for(ov, TUNE_SEED0 + i))) for i in range(seeds))
                  for name, ov in settings.items()}
        out[method] = {"best": max(scores, key=scores.__getitem__), "scores": scores}
    return out


# ---------------------------------------------------------------------------------------------
# Curves and statistics
# ---------------------------------------------------------------------------------------------


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for the rows that have `key` (drift keys exist every eval_every steps)."""
    return [(r["step"], float(r[key])) for r in rows if key in r and not r.get("skipped")]


def column(rows: list[dict], key: str) -> list[float]:
    return [v for _, v in series(rows, key)]


def window_mean(rows: list[dict], key: str, end_step: int, width: int) -> float:
    """Mean of `key` over steps end_step - width + 1 .. end_step."""
    vals = [v for s, v in series(rows, key) if end_step - width < s <= end_step]
    return statistics.fmean(vals) if vals else math.nan


def smooth(xs: list[float], k: int = 3) -> list[float]:
    """Trailing moving average over k points."""
    return [statistics.fmean(xs[max(0, i - k + 1): i + 1]) for i in range(len(xs))]


def eval_points(rows: list[dict], every: int) -> list[dict]:
    """One point per drift evaluation: perplexity drift (policy - init) at that step and the
    means of KL to init, gold and proxy over the `every` steps ending there."""
    pts = []
    for step, ppl in series(rows, "drift/ppl_policy"):
        init = dict(series(rows, "drift/ppl_init"))[step]
        pts.append({"step": step, "ppl_drift": ppl - init,
                    "kl": window_mean(rows, "kl/init_k1", step, every),
                    "gold": window_mean(rows, "reward/gold", step, every),
                    "proxy": window_mean(rows, "reward/proxy", step, every)})
    return pts


def heldout_points(rows: list[dict], every: int) -> list[dict]:
    """One point per held-out evaluation (`learner.eval_prompts`): gold and KL to init of the
    same policy on the fixed held-out prompts (d = sqrt(max(KL, 0))) and, where the row has it,
    that policy's perplexity drift (held-out perplexity of the policy minus the initial
    model's), with the training proxy averaged over the `every` steps ending there."""
    ppl = {s: v - i for (s, v), (_, i) in zip(series(rows, "drift/ppl_policy"),
                                               series(rows, "drift/ppl_init"), strict=True)}
    return [{"step": step, "gold": gold, "kl": kl, "d": math.sqrt(max(kl, 0.0)),
             "proxy": window_mean(rows, "reward/proxy", step, every)}
            | ({"ppl_drift": ppl[step]} if step in ppl else {})
            for (step, gold), (_, kl) in zip(series(rows, "eval/gold"),
                                             series(rows, "eval/kl_init"), strict=True)]


def heldout_gold_at_end(rows: list[dict], every: int, steps: int, last: int) -> float:
    """Mean held-out gold over the eval points in the last `last` of `steps` steps."""
    golds = [p["gold"] for p in heldout_points(rows, every) if p["step"] > steps - last]
    return statistics.fmean(golds) if golds else math.nan


def front_at(points: list[tuple[float, float]], x: float) -> float:
    """The (drift, reward) Pareto front of `points`, linearly interpolated at drift x and held
    flat beyond its ends: the reward the compared points reach at drift x. Below the front's
    lowest drift this is the reward there (the reward of a point with more drift than x), above
    its highest drift the front's best reward; both ends favour the front."""
    import numpy as np

    front = pareto_front(points)
    if not front:
        return math.nan
    xs, ys = zip(*front)
    return float(np.interp(x, xs, ys))


def mean_after(points: list[dict], key: str, after: int) -> float:
    """The area under `key` against step over the eval points at steps >= `after`
    (trapezoids), divided by the steps it spans: the curve's average height there."""
    pts = [(p["step"], p[key]) for p in points if p["step"] >= after]
    if len(pts) < 2:
        return pts[0][1] if pts else math.nan
    area = sum((s1 - s0) * (y0 + y1) / 2 for (s0, y0), (s1, y1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


FORMS = {  # R(d) through the origin: the features of each functional form (least squares)
    "rl": lambda d: [d, -d * math.log(d) if d > 0 else 0.0],  # Gao et al.'s RL form
    "bon": lambda d: [d, -d * d],  # Gao et al.'s best-of-n form
    "linear": lambda d: [d],
}


def loso_errors(per_seed: list[tuple[list[float], list[float]]], form: str) -> list[float]:
    """Leave-one-seed-out mean squared error of a functional form: fit on the other seeds'
    (d, gain) points, predict the left-out seed's; one error per seed."""
    feats = FORMS[form]
    errs = []
    for i, (d_out, y_out) in enumerate(per_seed):
        d = [x for j, (ds, _) in enumerate(per_seed) if j != i for x in ds]
        y = [x for j, (_, ys) in enumerate(per_seed) if j != i for x in ys]
        coef, _ = least_squares([feats(x) for x in d], y)
        pred = [sum(c * f for c, f in zip(coef, feats(x))) for x in d_out]
        errs.append(statistics.fmean((a - b) ** 2 for a, b in zip(pred, y_out)))
    return errs


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]
    if not xs:
        return math.nan, math.nan
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return m, se


def bootstrap_ci(xs: Sequence[float], n: int = 2000, seed: int = 0,
                 stat: Callable[[Sequence[float]], float] = statistics.fmean
                 ) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of `stat` over `xs`."""
    xs = [x for x in xs if x == x]
    if len(xs) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    reps = sorted(stat(rng.choices(xs, k=len(xs))) for _ in range(n))
    return reps[int(0.025 * n)], reps[int(0.975 * n) - 1]


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], n: int = 2000, seed: int = 0
                      ) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of mean(a) - mean(b), resampling each group (NaN with fewer
    than 2 values in a group: one seed gives no interval)."""
    a, b = [x for x in a if x == x], [x for x in b if x == x]
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    reps = sorted(statistics.fmean(rng.choices(a, k=len(a)))
                  - statistics.fmean(rng.choices(b, k=len(b))) for _ in range(n))
    return reps[int(0.025 * n)], reps[int(0.975 * n) - 1]


def fmt(m: float, se: float | None = None, digits: int = 3) -> str:
    if m != m:
        return "n/a"
    if se is None or se != se:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def fmt_ci(lo: float, hi: float, digits: int = 3) -> str:
    return "n/a" if lo != lo else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def least_squares(features: list[list[float]], y: list[float]) -> tuple[list[float], float]:
    """Coefficients of y ~ sum_j c_j f_j (no intercept) and R^2 = 1 - SS_res / SS_tot."""
    import numpy as np

    x, yv = np.asarray(features, dtype=float), np.asarray(y, dtype=float)
    if len(yv) < x.shape[1] + 1:
        return [math.nan] * x.shape[1], math.nan
    coef, *_ = np.linalg.lstsq(x, yv, rcond=None)
    resid = yv - x @ coef
    ss_tot = float(((yv - yv.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return [float(c) for c in coef], r2


def fit_rl(d: list[float], r: list[float]) -> dict:
    """Gao et al.'s RL form R(d) = d (alpha - beta log d); d = 0 contributes R = 0."""
    feats = [[x, -x * math.log(x) if x > 0 else 0.0] for x in d]
    (alpha, beta), r2 = least_squares(feats, r)
    return {"form": "d*(alpha - beta*log d)", "alpha": alpha, "beta": beta, "r2": r2,
            "points": len(d)}


def fit_bon(d: list[float], r: list[float]) -> dict:
    """Gao et al.'s best-of-n form R(d) = d (alpha - beta d)."""
    (alpha, beta), r2 = least_squares([[x, -x * x] for x in d], r)
    return {"form": "d*(alpha - beta*d)", "alpha": alpha, "beta": beta, "r2": r2,
            "points": len(d)}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (drift, reward) points: lower drift and higher reward are better."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def dominated_share(points: list[tuple[float, float]], others: list[tuple[float, float]]
                    ) -> float:
    """Fraction of `points` that some point of `others` strictly dominates."""
    if not points:
        return math.nan
    hit = sum(any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in others)
              for x, y in points)
    return hit / len(points)


# ---------------------------------------------------------------------------------------------
# Best-of-n samples from the SFT policy (in-process transformers generate)
# ---------------------------------------------------------------------------------------------


def bon_samples(ctx: Ctx, n_prompts: int, n_per_prompt: int, seed: int = 0) -> dict:
    """N completions per held-out prompt (the first `n_prompts` of the stratified held-out set
    that runs evaluate on: `learner.eval_prompts`) from SFT model 0, scored by every proxy
    member and by gold. {"prompts", "member": [K][P][N], "gold": [P][N]}; cached under ctx.runs."""
    import torch

    from tasks.base import stratified
    from tasks.models import sample_completions
    from tasks.tiny_world import RewardScorer, gold_score, load_policy

    w = world(ctx)
    cache = ctx.runs / f"bon-{w.root.name}-strat{n_prompts}x{n_per_prompt}-s{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = load_cfg(ctx, [])
    prompts = stratified(w.eval_prompts, n_prompts)  # the runs' held-out set (eval/gold)
    model, tok = load_policy(w.sft_dirs[0])
    torch.manual_seed(seed)
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    comps = sample_completions(model, tok, flat, cfg.rollout.sampling.max_new_tokens,
                               batch_size=256)
    gold = gold_score(flat, comps)
    members = []
    for d in w.rm_dirs:
        members.append(RewardScorer(d).score(flat, comps, batch_size=128))

    def split(xs):
        return [xs[i * n_per_prompt:(i + 1) * n_per_prompt] for i in range(len(prompts))]

    data = {"prompts": prompts, "member": [split(m) for m in members], "gold": split(gold),
            "examples": comps[:4]}
    ctx.runs.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data))
    return data


def bon_curve(proxy: list[list[float]], gold: list[list[float]], ns: list[int]) -> dict:
    """Per n: the order-statistics estimate of proxy and gold of the proxy-best of n, averaged
    over prompts, re-centred so n = 1 scores 0; d = sqrt(kl_bon(n)). Per-prompt values kept
    for bootstrap CIs."""
    from learner.ensemble import best_of_n, kl_bon

    per_prompt_gold = [[best_of_n(p, n, g) for n in ns] for p, g in zip(proxy, gold)]
    per_prompt_proxy = [[best_of_n(p, n) for n in ns] for p in proxy]
    g0 = statistics.fmean(row[0] for row in per_prompt_gold) if ns[0] == 1 else 0.0
    p0 = statistics.fmean(row[0] for row in per_prompt_proxy) if ns[0] == 1 else 0.0
    gold_n = [statistics.fmean(row[i] for row in per_prompt_gold) - g0 for i in range(len(ns))]
    proxy_n = [statistics.fmean(row[i] for row in per_prompt_proxy) - p0 for i in range(len(ns))]
    return {"n": ns, "d": [math.sqrt(kl_bon(n)) for n in ns], "gold": gold_n, "proxy": proxy_n,
            "gold_at_n1": g0, "proxy_at_n1": p0, "per_prompt_gold": per_prompt_gold}


def aggregate_scores(member: list[list[list[float]]], how: str, uwo_lambda: float | None = None,
                     ddof: int | None = None) -> list[list[float]]:
    """[K][P][N] member scores -> [P][N] with learner.ensemble.aggregate."""
    import torch

    from learner.ensemble import aggregate

    t = torch.tensor(member, dtype=torch.float64)  # (K, P, N)
    k, p, n = t.shape
    agg = aggregate(t.reshape(k, p * n), how, uwo_lambda=uwo_lambda, ddof=ddof)
    return agg.reshape(p, n).tolist()


# ---------------------------------------------------------------------------------------------
# Plots and files
# ---------------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, ctx: Ctx, stem: str) -> str:
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / f"{ctx.name}_{stem}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def mean_curve(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and s.e. over seeds of `key` (steps present in every seed)."""
    per = [dict(series(r, key)) for r in runs]
    steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
    ms, ses = zip(*(mean_se([p[s] for p in per]) for s in steps)) if steps else ((), ())
    return steps, list(ms), list(ses)


def finite(obj):
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}  # Student t, 97.5% quantile, by degrees of freedom


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom: the table to 10, then
    the Cornish-Fisher expansion t = z + (z^3 + z) / 4df + (5z^5 + 16z^3 + 3z) / 96df^2
    (within 0.003 of the exact value from df 11)."""
    if df < 1:
        raise ValueError(f"t975: degrees of freedom must be >= 1, got {df}")
    if df in T975:
        return T975[df]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def sd_from_t_ci(ci: tuple[float, float], n: int) -> float:
    """The s.d. of the paired differences behind a 95% paired t-interval of n seeds:
    half-width = t975(n - 1) sd / sqrt(n)."""
    return (ci[1] - ci[0]) / 2 * math.sqrt(n) / t975(n - 1)


def power_at(effect: float, sd: float, n: int) -> float:
    """Power of the 95% paired t-interval of n seeds to lie above 0 when the true effect is
    `effect` (> 0): P(mean - t975(n-1) sd/sqrt(n) > 0) ~ Phi(effect sqrt(n) / sd - t975(n-1))
    (the normal approximation to the non-central t); 0 below 2 seeds (no interval)."""
    if n < 2:
        return 0.0
    return statistics.NormalDist().cdf(effect * math.sqrt(n) / sd - t975(n - 1))


def seeds_for_power(effect: float, sd: float, power: float = 0.8, cap: int = 10_000) -> int:
    """The fewest seeds n (>= 2) whose paired t-interval lies above 0 with `power` when the
    true effect is `effect`: effect sqrt(n) / sd >= t975(n-1) + z(power); `cap` if none below."""
    z = statistics.NormalDist().inv_cdf(power)
    return next((n for n in range(2, cap) if effect * math.sqrt(n) / sd >= t975(n - 1) + z), cap)


BUDGET_HOURS = 3.0  # what one full experiment may take on the 2-core machine it is run on
RUN_MINUTES = 2.3  # one tiny-world run of 50 steps there (78 runs in 3 hours)


@dataclass(frozen=True)
class Power:
    """A paired claim's power plan, fixed before its runs: the smallest effect of interest,
    the s.d. of per-seed differences expected (from the runs already made), and the cost of
    one seed (runs of RUN_MINUTES x the run's length in 50-step units)."""

    claim: str
    effect: float
    sd: float
    runs_per_seed: int
    run_length: float = 1.0  # in 50-step runs
    tuning_runs: int = 0  # runs before the verdict seeds (equal tuning budgets), once

    def at(self, seeds: int) -> float:
        return power_at(self.effect, self.sd, seeds)

    def seeds(self, power: float = 0.8) -> int:
        return seeds_for_power(self.effect, self.sd, power)

    def hours(self, seeds: int) -> float:
        runs = seeds * self.runs_per_seed + self.tuning_runs
        return runs * self.run_length * RUN_MINUTES / 60

    def decidable(self, budget_hours: float = BUDGET_HOURS) -> bool:
        return self.hours(self.seeds()) <= budget_hours

    def plan(self, seeds: int, budget_hours: float = BUDGET_HOURS) -> str:
        need = self.seeds()
        return (f"{self.claim}: effect {self.effect:g}, s.d. {self.sd:g}: {seeds} seeds give "
                f"power {self.at(seeds):.2f}; 80% needs {need} seeds, "
                f"{self.hours(need):.1f} h ({'within' if self.decidable(budget_hours) else 'over'}"
                f" the {budget_hours:g} h budget)")


def paired_t_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of mean(a_i - b_i) over pairs (seeds shared by two arms), df = pairs - 1;
    NaN with fewer than 2 pairs."""
    d = [x - y for x, y in zip(a, b, strict=True) if x == x and y == y]
    if len(d) < 2:
        return math.nan, math.nan
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    m = statistics.fmean(d)
    return m - half, m + half


def cluster_bootstrap_ci(clusters: Sequence[Sequence[float]], n: int = 2000, seed: int = 0
                         ) -> tuple[float, float]:
    """Percentile 95% CI of the pooled mean of units grouped in clusters (e.g. per-prompt wins
    grouped by seed): each resample draws whole clusters with replacement, so the interval
    reflects how many seeds there are, not how many prompts. NaN with fewer than 2 clusters."""
    groups = [[x for x in c if x == x] for c in clusters]
    groups = [g for g in groups if g]
    if len(groups) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    reps = []
    for _ in range(n):
        pick = rng.choices(groups, k=len(groups))
        reps.append(statistics.fmean(x for g in pick for x in g))
    reps.sort()
    return reps[int(0.025 * n)], reps[int(0.975 * n) - 1]


VERDICT_RULE = ("held: the 95% interval of the pre-registered effect lies above 0 and its point "
                "estimate is at least the smallest effect of interest (with a smaller estimate: "
                "'held, smaller than the effect of interest'); refuted: the interval lies below "
                "the smallest effect of interest (so an effect of that size or larger is "
                "excluded) and not above 0; inconclusive: otherwise, or with fewer than 2 seeds")
HELD_SMALLER = "held, smaller than the effect of interest"


def verdict(ci: tuple[float, float], smallest_effect: float,
            estimate: float | None = None) -> str:
    """`held | HELD_SMALLER | refuted | inconclusive` for an effect predicted to be positive,
    given its 95% interval, its point estimate (default: the interval's midpoint) and the
    smallest effect of interest (> 0), fixed before the run (VERDICT_RULE)."""
    if smallest_effect <= 0:
        raise ValueError(f"verdict: smallest_effect must be > 0, got {smallest_effect}")
    lo, hi = ci
    if lo != lo or hi != hi:
        return "inconclusive"
    estimate = (lo + hi) / 2 if estimate is None else estimate
    if lo > 0:
        return "held" if estimate >= smallest_effect else HELD_SMALLER
    if hi < smallest_effect:
        return "refuted"
    return "inconclusive"


def joint_verdict(verdicts, refuted_by: str) -> str:
    """One verdict from the verdicts of a claim's parts: held if every part is held; refuted
    if `any` part (a claim that needs them all) or `all` parts (a claim that any part would
    show) are refuted; otherwise inconclusive."""
    vs = list(verdicts)
    if refuted_by not in ("any", "all"):
        raise ValueError(f"joint_verdict: refuted_by must be 'any' or 'all', got {refuted_by!r}")
    if all(v == "held" for v in vs):
        return "held"
    if all(v in ("held", HELD_SMALLER) for v in vs):
        return HELD_SMALLER
    refuted = [v == "refuted" for v in vs]
    return "refuted" if (any if refuted_by == "any" else all)(refuted) else "inconclusive"


def seed_rows(runs: dict[str, list[list[dict]]], keys: Sequence[str]) -> list[dict]:
    """Per-step per-seed rows of every arm, for the result JSON: {arm, seed, step, key...}."""
    return [{"arm": arm, "seed": seed, "step": r["step"], **{k: r[k] for k in keys if k in r}}
            for arm, per_seed in runs.items() for seed, rows in enumerate(per_seed)
            for r in rows]
