"""Figure 8, peers: TRL's GRPOTrainer in one process vs raylign's train() with the grpo
estimator, and with the default PPO+GAE estimator (a critic) as a second row.

    .venv/bin/python -m benchmarks.peers [--worlds 0 7 13] [--steps 30] [--repeats 2]
                                         [--prompts 8 --generations 8] [--model 100m]
    make bench                            (installs the `peers` extra, trl; figure 8)

The same tiny world, the same start policy, the same prompt order (the task's prompt stream,
ids 0, 1, 2, ...), the same reward (raylign's K reward members in-process, aggregated by
`combine_scores` with the run's aggregation), the same batch (prompts x generations
completions a step, 8 x 8 by default), the same sampling (24 new tokens at most, temperature
1, no top-k/top-p), one optimiser step per generation round (TRL: num_iterations 1, one
micro-batch of the whole batch; raylign: ppo_epochs 1, one minibatch), no KL term (TRL beta 0,
raylign kl.coef 0, and no per-step drift metric: learner.drift_every 0), lr and clip alike,
Adam without weight decay, a constant lr.

Each world build (task.seed) is run `repeats` times with run seeds 0, 1, ...; a repeat runs
TRL (this process, torch on every core), then raylign grpo, then raylign gae (embedded Ray,
the run config's actors), all with the same seed. Both sides are timed the same way: steady
samples/s = (steps - 1) x batch / (last step's end - first step's end), and the whole run
= steps x batch / wall seconds from loading the models to the end (raylign: the train() call,
the actors' start included; the Ray session, started once per process, is not counted).
Gold, two ways: of the training samples (the world's gold scorer, the mean over the last
`last` steps; each side's own prompts of those steps), and of the final policy on the same
held-out prompts (`heldout_gold`: the task's first 64 eval prompts x 4, the HF engine's
sampler, seeded alike); the goal uses the first, the second is reported beside it. Differences
raylign - TRL are paired by (world, seed) and given 95% t-intervals.

`--model 100m`: the policy is a randomly initialised Qwen2 of about 100M parameters (the
shape of learner/shapes.py's 100m with the tiny world's tokenizer: 16 layers of hidden 768),
where generation and the update both cost seconds; the row reports speed only (a random
model's gold means nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import REPO, Settings, init_ray, load_cfg, machine, stats
from experiments.common import paired_t_ci

WORLDS = (0, 7, 13)  # tiny-world build seeds (task.seed) of the full figure
BIG = dict(num_hidden_layers=16)  # learner/shapes.py's 100m shape, tiny-world vocabulary
GOALS = {"grpo": 1.0, "gae": 0.6}  # raylign / TRL steady samples/s on every world
BIG_GOALS = {"grpo": 1.3}  # the ~100M row: where overlapping generation and update should pay


@dataclass(frozen=True)
class Batch:
    """One generation round: `prompts` x `generations` completions, one optimiser step."""

    prompts: int = 8
    generations: int = 8

    @property
    def samples(self) -> int:
        return self.prompts * self.generations


BIG_BATCH = Batch(prompts=4, generations=4)  # the ~100M row: a step takes seconds on 2 cores
BIG_STEPS = 10


def _cfg(settings: Settings, steps: int, batch: Batch, *extra: str):
    return load_cfg(settings, "learner.estimator=grpo", f"rollout.sampling.n={batch.generations}",
                    "rollout.sampling.max_new_tokens=24", "rollout.sampling.temperature=1.0",
                    f"learner.samples_per_step={batch.samples}",
                    f"learner.minibatch_size={batch.samples}", "learner.ppo_epochs=1",
                    "learner.kl.coef=0", "learner.drift_every=0",
                    "learner.elastic_reset.enabled=false", f"learner.steps={steps}",
                    "checkpoint.every=0", *extra)


def _steady(times: list[float], batch: Batch) -> float:
    return (len(times) - 1) * batch.samples / (times[-1] - times[0]) if len(times) > 1 else 0.0


def big_policy(settings: Settings, *world: str) -> Path:
    """The ~100M-parameter policy (random init, fp32, the world's tokenizer), built once per
    world in the world cache (<world key>-peers-100m); returns its HF model dir."""
    import torch
    from transformers import AutoTokenizer

    from learner.shapes import build_model_dir
    from tasks import load_task

    task = load_task(load_cfg(settings, *world))
    root = Path(task.tokenizer_dir).parent  # the world build; beside it, not in its digest
    out = root.with_name(f"{root.name}-peers-100m")
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(task.tokenizer_dir)
    tmp = out.with_name(out.name + ".tmp")
    build_model_dir(tmp, "100m", dtype=torch.float32, vocab_size=len(tok),
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    bos_token_id=tok.bos_token_id, **BIG)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


HELDOUT = (64, 4)  # the final policies' held-out gold: the task's first 64 eval prompts x 4


def heldout_gold(model, tok, cfg, task, seed: int) -> float:
    """Mean gold of `model`'s completions of the task's first HELDOUT[0] held-out prompts,
    HELDOUT[1] each, drawn by the HF engine's sampler (`hf_sample`, the run's sampling, torch
    seeded with `seed`): both sides' final policies on the same prompts, sampled the same way."""
    import torch

    from actors.engines import hf_sample, stop_ids
    from actors.scoring import load_callable
    from services.fleet import gold_scorer

    n, k = HELDOUT
    prompts = [p for p in task.eval_prompts[:n] for _ in range(k)]
    torch.manual_seed(seed)
    model.eval()
    out = hf_sample(model, [tok(p).input_ids for p in prompts], cfg.rollout.sampling,
                    pad_id=tok.pad_token_id, stop=stop_ids(model, tok.eos_token_id))
    completions = [tok.decode(r, skip_special_tokens=True) for r, _, _ in out]
    gold = load_callable(gold_scorer(cfg, task))
    return statistics.fmean(gold(prompts, completions, None))


def run_trl(settings: Settings, steps: int, last: int, batch: Batch, *extra: str) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from actors.records import Sample
    from actors.reward import RewardMember, combine_scores
    from services.fleet import combine_options, reward_specs
    from tasks import load_task

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()  # the whole run: from loading the models, as raylign's
    cfg = _cfg(settings, steps, batch, *extra)
    task = load_task(cfg)
    start = cfg.start_dir(task)
    members = [RewardMember(k, spec, cfg.reward.batch_size)
               for k, spec in enumerate(reward_specs(cfg, task))]
    combine = combine_options(cfg, task)
    golds: list[list[float]] = []  # per generation round
    proxies: list[list[float]] = []

    def reward(prompts, completions, **_):
        samples = [Sample(prompt_id=i, prompt_tokens=[], response_tokens=[], logprobs=[],
                          policy_version=0, worker_id="trl", prompt_text=p, response_text=c)
                   for i, (p, c) in enumerate(zip(prompts, completions))]
        scored = combine_scores(samples, *(m.score(samples) for m in members), **combine)
        golds.append([s.gold for s in scored if s.gold is not None])
        proxies.append([s.reward for s in scored])
        return [s.reward for s in scored]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(start)
    model = AutoModelForCausalLM.from_pretrained(start, use_safetensors=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    prompts = [task.train.text(i) for i in range(steps * batch.prompts)]
    s = cfg.rollout.sampling
    with tempfile.TemporaryDirectory(prefix="raylign-peers-trl-") as tmp:
        args = trl.GRPOConfig(
            output_dir=tmp, use_cpu=True, per_device_train_batch_size=batch.samples,
            gradient_accumulation_steps=1, num_generations=batch.generations,
            num_iterations=1, max_completion_length=s.max_new_tokens,
            temperature=s.temperature, top_p=1.0, top_k=0, learning_rate=cfg.learner.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=cfg.learner.max_grad_norm, epsilon=cfg.learner.clip_eps, beta=0.0,
            loss_type="dapo", scale_rewards="group", max_steps=steps, logging_steps=1,
            report_to="none", save_strategy="no", bf16=False, fp16=False,
            dataloader_num_workers=0, seed=cfg.seed, shuffle_dataset=False,
            disable_dropout=True, log_completions=False)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                                  processing_class=tok, callbacks=[Clock()])
        trainer.train()
        whole = time.perf_counter() - t0
    final = heldout_gold(model, tok, cfg, task, cfg.seed)
    n = min(last, len(golds))
    return {"steady_samples_per_s": _steady(times, batch), "steps": len(times),
            "whole_run_samples_per_s": len(times) * batch.samples / whole,
            "step_seconds": [b - a for a, b in zip(times, times[1:])],
            "gold_last": statistics.fmean(x for g in golds[-n:] for x in g),
            "proxy_last": statistics.fmean(x for g in proxies[-n:] for x in g),
            "gold_by_step": [statistics.fmean(g) for g in golds],
            "heldout_gold": final,
            "trl": trl.__version__, "torch_threads": torch.get_num_threads(),
            "policy": str(start), "parameters": sum(p.numel() for p in model.parameters())}


def run_raylign(settings: Settings, steps: int, last: int, batch: Batch, *extra: str) -> dict:
    from services.bootstrap import train

    with tempfile.TemporaryDirectory(prefix="raylign-peers-") as tmp:
        cfg = _cfg(settings, steps, batch, f"run_dir={tmp}", "name=peers", *extra)
        init_ray(num_cpus=cfg.cluster.num_cpus)  # once per process, not timed
        t0 = time.perf_counter()  # the whole run: the actors' start, the world's load, ...
        summary = train(cfg)
        whole = time.perf_counter() - t0
        rows = [json.loads(x) for x in (cfg.path / "metrics.jsonl").read_text().splitlines()]
        final = _final_heldout_gold(cfg, summary["export"])
    times = [r["time"] for r in rows]
    n = min(last, len(rows))
    return {"steady_samples_per_s": _steady(times, batch), "steps": len(rows),
            "whole_run_samples_per_s": len(rows) * batch.samples / whole,
            "step_seconds": [b - a for a, b in zip(times, times[1:])],
            "gold_last": statistics.fmean(r["reward/gold"] for r in rows[-n:]),
            "proxy_last": statistics.fmean(r["reward/proxy"] for r in rows[-n:]),
            "gold_by_step": [r.get("reward/gold") for r in rows],
            "heldout_gold": final, "estimator": cfg.learner.estimator,
            "rollout_workers": cfg.rollout.replicas, "engine": cfg.rollout.engine,
            "max_staleness": cfg.rollout.max_staleness, "learner_cpus": cfg.learner.num_cpus,
            "cluster_cpus": cfg.cluster.num_cpus}


def _final_heldout_gold(cfg, export_dir: str) -> float:
    """heldout_gold of a raylign run's exported final policy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks import load_task

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(export_dir, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(export_dir)
    return heldout_gold(model, tok, cfg, load_task(cfg), cfg.seed)


def measure(settings: Settings, steps: int, last: int, repeats: int,
            worlds: tuple[int | None, ...] = (None,), batch: Batch = Batch(),
            model: str = "tiny", arms: tuple[str, ...] = ("grpo", "gae")) -> dict:
    """For each world build (None: the config's) and seed 0..repeats-1: TRL, then each raylign
    arm. Ratios and gold differences paired by (world, seed); goals per world."""
    try:
        import trl  # noqa: F401
    except ImportError as e:
        raise ImportError("the peer figure needs TRL: pip install -e '.[peers]' "
                          "(make bench installs it)") from e
    big = model == "100m"
    runs: dict[str, list[dict]] = {"trl": [], **{arm: [] for arm in arms}}
    pairs = [(w, seed) for w in worlds for seed in range(repeats)]
    for w, seed in tqdm(pairs, desc=f"peers ({model})", unit="repeat"):
        extra = ([] if w is None else [f"task.seed={w}"])
        if big:
            extra.append(f"policy.model_dir={big_policy(settings, *extra)}")
        extra.append(f"seed={seed}")
        tag = {"world": w, "seed": seed}
        runs["trl"].append({**tag, **run_trl(settings, steps, last, batch, *extra)})
        for arm in arms:
            runs[arm].append({**tag, **run_raylign(settings, steps, last, batch, *extra,
                                                   f"learner.estimator={arm}")})
    goals = BIG_GOALS if big else GOALS
    out: dict = {"what": "steady samples/s, whole-run samples/s and gold at equal samples: TRL "
                         "GRPOTrainer in one process vs raylign train()",
                 "config": settings.config, "model": model, "worlds": list(worlds),
                 "steps": steps, "gold_last_steps": last, "samples_per_step": batch.samples,
                 "prompts_per_step": batch.prompts, "generations": batch.generations,
                 "repeats": repeats, "trl_version": runs["trl"][0]["trl"], "runs": runs,
                 "arms": {arm: {k: stats([r[k] for r in rs]) for k in
                                ("steady_samples_per_s", "whole_run_samples_per_s",
                                 "gold_last", "heldout_gold")} for arm, rs in runs.items()},
                 "heldout": {"prompts": HELDOUT[0], "samples": HELDOUT[1]},
                 "ratios": {}, "whole_ratios": {}, "by_world": {}, "goals": {}}
    trl_runs = runs["trl"]
    for arm in arms:
        steady, whole = ([r[key] / t[key] for r, t in zip(runs[arm], trl_runs)]
                         for key in ("steady_samples_per_s", "whole_run_samples_per_s"))
        out["ratios"][arm], out["whole_ratios"][arm] = stats(steady), stats(whole)
        out["by_world"][arm] = {str(w): stats([x for x, r in zip(steady, runs[arm])
                                               if r["world"] == w]) for w in worlds}
        for key, name in (("heldout_gold", "gold_diff"), ("gold_last", "train_gold_diff")):
            lo, hi = paired_t_ci([r[key] for r in runs[arm]], [t[key] for t in trl_runs])
            mean = statistics.fmean(r[key] - t[key] for r, t in zip(runs[arm], trl_runs))
            out.setdefault(name, {})[arm] = {"mean": mean, "ci95": [lo, hi],
                                             "pairs": len(trl_runs)}
        lo, hi = out["train_gold_diff"][arm]["ci95"]  # the goal: the training samples' gold
        every = min(x["median"] for x in out["by_world"][arm].values())
        gold_ok = big or arm != "grpo" or (not math.isnan(hi) and hi >= 0)
        out["goals"][arm] = {
            "target": f">= {goals[arm]}x TRL steady samples/s on every world"
                      + ("" if big or arm != "grpo" else
                         f", gold of the last {last} steps' samples not lower (the paired "
                         "interval reaches 0)"),
            "value": every, "met": every >= goals[arm] and gold_ok}
    out["goal"] = {"figure": ", ".join(f"raylign {a} >= {goals[a]}x TRL" for a in arms),
                   "met": all(g["met"] for g in out["goals"].values())}
    return out


def settings_rows(out: dict) -> list[str]:
    """The settings both sides ran with (printed beside the numbers)."""
    t, r = out["runs"]["trl"][0], next(rs[0] for a, rs in out["runs"].items() if a != "trl")
    worlds = ", ".join("config's" if w is None else str(w) for w in out["worlds"])
    return ["| setting | both sides |", "|---|---|",
            f"| policy | {out['model']} ({t['parameters'] / 1e6:.1f}M parameters) |",
            f"| world builds (task.seed) x run seeds | {worlds} x {out['repeats']} |",
            f"| steps; gold over the last | {out['steps']}; "
            f"{min(out['steps'], out['gold_last_steps'])} |",
            f"| batch | {out['prompts_per_step']} prompts x {out['generations']} = "
            f"{out['samples_per_step']} completions, one optimiser step |",
            "| sampling | 24 new tokens at most, temperature 1 |",
            "| loss | clipped policy gradient, no KL, no drift metric, constant lr |",
            f"| TRL {out['trl_version']} | one process, {t['torch_threads']} torch threads, "
            "loss dapo, group-scaled rewards |",
            f"| raylign | {r['rollout_workers']} rollout workers ({r['engine']} engine), "
            f"max_staleness {r['max_staleness']}, learner {r['learner_cpus']} CPU, Ray "
            f"{r['cluster_cpus']} CPUs |"]


def table(out: dict) -> list[str]:
    """The markdown rows (also BENCHMARKS.md's figure 8)."""
    a, last = out["arms"], min(out["steps"], out["gold_last_steps"])

    def cell(x: dict, fmt: str) -> str:
        return f"{fmt.format(x['median'])} [{fmt.format(x['min'])}–{fmt.format(x['max'])}]"

    def diff(d: dict | None) -> str:
        if d is None:
            return "—"
        lo, hi = d["ci95"]
        return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    def heldout(arm: str) -> str:  # absent from results made before it was measured
        x = a[arm].get("heldout_gold")
        return "—" if x is None else cell(x, "{:.3f}")

    rows = [f"| | steady samples/s | whole run samples/s | gold of the training samples, last "
            f"{last} steps (− TRL [95% CI]) | held-out gold of the final policy (− TRL [95% "
            "CI]) | steady ÷ TRL, per world | whole run ÷ TRL | goal | met |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| TRL {out['trl_version']} GRPOTrainer, one process | "
            f"{cell(a['trl']['steady_samples_per_s'], '{:.1f}')} | "
            f"{cell(a['trl']['whole_run_samples_per_s'], '{:.1f}')} | "
            f"{cell(a['trl']['gold_last'], '{:.3f}')} | "
            f"{heldout('trl')} | 1 | 1 | | |"]
    before = "train_gold_diff" not in out  # made before held-out gold: gold_diff is training's
    train = "gold_diff" if before else "train_gold_diff"
    for arm in out["goals"]:
        g = out["goals"][arm]
        worlds = "; ".join(f"{'cfg' if w == 'None' else w}: {cell(x, '{:.2f}')}"
                           for w, x in out["by_world"][arm].items())
        rows.append(f"| raylign train(), {'PPO+GAE' if arm == 'gae' else arm} | "
                    f"{cell(a[arm]['steady_samples_per_s'], '{:.1f}')} | "
                    f"{cell(a[arm]['whole_run_samples_per_s'], '{:.1f}')} | "
                    f"{cell(a[arm]['gold_last'], '{:.3f}')} "
                    f"({diff(out[train][arm])}) | "
                    f"{heldout(arm)} ({diff(None if before else out['gold_diff'][arm])}) | "
                    f"{worlds} | {cell(out['whole_ratios'][arm], '{:.2f}')} | {g['target']} | "
                    f"{'yes' if g['met'] else '**no**'} |")
    return rows


def run(settings: Settings, cfg_unused=None, world_unused=None) -> dict:
    """Figure 8 of `python -m benchmarks` (not in --quick: TRL is an optional extra): the
    tiny policy on every world of WORLDS at 30 steps, then the ~100M row (BIG_BATCH, BIG_STEPS)
    on the first."""
    if not settings.peer_repeats:
        raise ValueError("the peer figure is not part of --quick; its smoke run is "
                         "python -m benchmarks.peers --quick")
    out = measure(settings, steps=30, last=10, repeats=settings.peer_repeats, worlds=WORLDS)
    out["big"] = measure(settings, steps=BIG_STEPS, last=5, repeats=settings.peer_repeats,
                         worlds=WORLDS[:1], batch=BIG_BATCH, model="100m", arms=("grpo",))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--last", type=int, default=10, help="steps the gold mean is taken over")
    p.add_argument("--repeats", type=int, default=2, help="run seeds per world")
    p.add_argument("--worlds", type=int, nargs="+", help="tiny-world build seeds (task.seed); "
                   f"default {' '.join(map(str, WORLDS))}, with --quick the config's")
    p.add_argument("--prompts", type=int, default=Batch.prompts, help="prompts per step")
    p.add_argument("--generations", type=int, default=Batch.generations,
                   help="completions per prompt")
    p.add_argument("--model", choices=("tiny", "100m"), default="tiny",
                   help="the world's SFT policy, or a ~100M random-init Qwen2 (grpo arm only)")
    p.add_argument("--quick", action="store_true", help="the micro world (a smoke run)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results"), help="results directory")
    a = p.parse_args(argv)
    settings = Settings.make(a.quick)
    worlds = tuple(a.worlds) if a.worlds else ((None,) if a.quick else WORLDS)
    batch = Batch(a.prompts, a.generations)
    arms = ("grpo",) if a.model == "100m" else ("grpo", "gae")
    out = {**measure(settings, a.steps, a.last, a.repeats, worlds, batch, a.model, arms),
           "machine": machine(), "load_avg_end": os.getloadavg()}
    print("\n".join(settings_rows(out) + [""] + table(out)))
    tag = "".join(["-quick" if a.quick else "", "" if a.model == "tiny" else f"-{a.model}",
                   "" if batch == Batch() else f"-{batch.prompts}x{batch.generations}"])
    path = Path(a.out) / f"{time.strftime('%Y-%m-%d')}-peers{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
