"""Figure 8, peers: TRL's GRPOTrainer in one process vs raylign's train() with the grpo
estimator, and with the default PPO+GAE estimator (a critic) as a second row.

    .venv/bin/python -m benchmarks.peers [--steps S] [--repeats R] [--world-seed W]
                                                                      (the `peers` extra: trl)
    make bench                                                        (installs it; figure 8)

The same tiny world, the same start policy, the same prompt order (the task's prompt stream,
ids 0, 1, 2, ...), the same reward (raylign's K reward members in-process, aggregated by
`combine_scores` with the run's aggregation), the same batch (64 completions a step: 8 prompts
x 8 generations), the same sampling (24 new tokens at most, temperature 1, no top-k/top-p),
one optimiser step per generation round (TRL: num_iterations 1, one 64-sample micro-batch;
raylign: ppo_epochs 1, minibatch 64), no KL term (TRL beta 0, raylign kl.coef 0), lr and
clip alike, Adam without weight decay, a constant lr.

The PPO+GAE row changes only `learner.estimator` (the same batch, one epoch, no KL). Each
repeat runs TRL (this process, torch on every core), then raylign grpo, then raylign gae
(embedded Ray, the run config's actors); ratios are paired by repeat. Steady samples/s =
(steps - 1) x 64 / (time of the last step's end - time of the first step's end), for every
arm; gold = the world's gold scorer on the training samples,
the mean over the last `last` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.common import REPO, Settings, init_ray, load_cfg, machine, stats

GROUP = 8  # generations per prompt
PROMPTS = 8  # prompts per step
BATCH = GROUP * PROMPTS


def _cfg(settings: Settings, steps: int, *extra: str):
    return load_cfg(settings, "learner.estimator=grpo", f"rollout.sampling.n={GROUP}",
                    "rollout.sampling.max_new_tokens=24", "rollout.sampling.temperature=1.0",
                    f"learner.samples_per_step={BATCH}", f"learner.minibatch_size={BATCH}",
                    "learner.ppo_epochs=1", "learner.kl.coef=0",
                    "learner.elastic_reset.enabled=false", f"learner.steps={steps}",
                    "checkpoint.every=0", *extra)


def _steady(times: list[float]) -> float:
    return (len(times) - 1) * BATCH / (times[-1] - times[0]) if len(times) > 1 else 0.0


def run_trl(settings: Settings, steps: int, last: int, *extra: str) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from actors.records import Sample
    from actors.reward import RewardMember, combine_scores
    from services.fleet import combine_options, reward_specs
    from tasks import load_task

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = _cfg(settings, steps, *extra)
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
    prompts = [task.train.text(i) for i in range(steps * PROMPTS)]
    s = cfg.rollout.sampling
    with tempfile.TemporaryDirectory(prefix="raylign-peers-trl-") as tmp:
        args = trl.GRPOConfig(
            output_dir=tmp, use_cpu=True, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1, num_generations=GROUP, num_iterations=1,
            max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0,
            top_k=0, learning_rate=cfg.learner.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=cfg.learner.max_grad_norm,
            epsilon=cfg.learner.clip_eps, beta=0.0, loss_type="dapo", scale_rewards="group",
            max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
            bf16=False, fp16=False, dataloader_num_workers=0, seed=cfg.seed,
            shuffle_dataset=False, disable_dropout=True, log_completions=False)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                                  processing_class=tok, callbacks=[Clock()])
        t0 = time.perf_counter()
        trainer.train()
        whole = time.perf_counter() - t0
    n = min(last, len(golds))
    return {"steady_samples_per_s": _steady(times), "steps": len(times),
            "whole_run_samples_per_s": len(times) * BATCH / whole,
            "step_seconds": [b - a for a, b in zip([t0, *times], times)],
            "gold_last": statistics.fmean(x for g in golds[-n:] for x in g),
            "proxy_last": statistics.fmean(x for g in proxies[-n:] for x in g),
            "gold_by_step": [statistics.fmean(g) for g in golds],
            "trl": trl.__version__, "torch_threads": torch.get_num_threads(),
            "policy": str(start)}


def run_raylign(settings: Settings, steps: int, last: int, *extra: str) -> dict:
    from services.bootstrap import train

    with tempfile.TemporaryDirectory(prefix="raylign-peers-") as tmp:
        cfg = _cfg(settings, steps, f"run_dir={tmp}", "name=peers", *extra)
        init_ray(num_cpus=cfg.cluster.num_cpus)
        summary = train(cfg)
        rows = [json.loads(x) for x in (cfg.path / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows]
    n = min(last, len(rows))
    return {"steady_samples_per_s": _steady(times), "steps": len(rows),
            "whole_run_samples_per_s": len(rows) * BATCH / summary["seconds"],
            "step_seconds": [b - a for a, b in zip(times, times[1:])],
            "gold_last": statistics.fmean(r["reward/gold"] for r in rows[-n:]),
            "proxy_last": statistics.fmean(r["reward/proxy"] for r in rows[-n:]),
            "gold_by_step": [r.get("reward/gold") for r in rows],
            "estimator": cfg.learner.estimator,
            "rollout_workers": cfg.rollout.replicas, "engine": cfg.rollout.engine,
            "max_staleness": cfg.rollout.max_staleness,
            "cluster_cpus": cfg.cluster.num_cpus}


GOALS = {"grpo": 1.0, "gae": 0.6}  # raylign / TRL steady samples/s (issue: performance)


def measure(settings: Settings, steps: int, last: int, repeats: int,
            world: tuple[str, ...] = ()) -> dict:
    """Every arm `repeats` times, alternating; stats, ratios paired by repeat, goals. `world`:
    overrides of the task (e.g. task.seed=7: another build of the tiny world)."""
    try:
        import trl  # noqa: F401
    except ImportError as e:
        raise ImportError("the peer figure needs TRL: pip install -e '.[peers]' "
                          "(make bench installs it)") from e
    runs: dict[str, list[dict]] = {"trl": [], "grpo": [], "gae": []}
    for _ in tqdm(range(repeats), desc="peers", unit="repeat"):
        runs["trl"].append(run_trl(settings, steps, last, *world))
        for arm in ("grpo", "gae"):
            runs[arm].append(run_raylign(settings, steps, last, *world,
                                         f"learner.estimator={arm}"))
    out: dict = {"what": "steady-state samples/s and gold at equal samples: TRL GRPOTrainer in "
                         "one process vs raylign train() (grpo; gae)",
                 "config": settings.config, "world": list(world), "steps": steps,
                 "gold_last_steps": last,
                 "samples_per_step": BATCH, "prompts_per_step": PROMPTS, "generations": GROUP,
                 "repeats": repeats, "trl_version": runs["trl"][0]["trl"], "runs": runs,
                 "arms": {arm: {k: stats([r[k] for r in rs]) for k in
                                ("steady_samples_per_s", "gold_last")}
                          for arm, rs in runs.items()}}
    trl_gold = out["arms"]["trl"]["gold_last"]["median"]
    out["ratios"], out["goals"] = {}, {}
    for arm, target in GOALS.items():
        ratio = stats([r["steady_samples_per_s"] / t["steady_samples_per_s"]
                       for r, t in zip(runs[arm], runs["trl"])])
        gold = out["arms"][arm]["gold_last"]["median"]
        out["ratios"][arm] = ratio
        out["goals"][arm] = {"target": f">= {target}x TRL samples/s"
                             + (" at equal or better gold" if arm == "grpo" else ""),
                             "value": ratio["median"],
                             "met": ratio["median"] >= target
                             and (arm != "grpo" or gold >= trl_gold)}
    out["goal"] = {"figure": "raylign grpo >= 1.0x and PPO+GAE >= 0.6x TRL GRPOTrainer",
                   "met": all(g["met"] for g in out["goals"].values())}
    return out


def table(out: dict) -> list[str]:
    """The markdown rows (also BENCHMARKS.md's figure 8)."""
    a, last = out["arms"], out["gold_last_steps"]

    def cell(x: dict, fmt: str) -> str:
        return f"{fmt.format(x['median'])} [{fmt.format(x['min'])}–{fmt.format(x['max'])}]"

    rows = [f"| | samples/s (steady) | gold, last {last} steps | ratio ÷ TRL | goal | met |",
            "|---|---|---|---|---|---|",
            f"| TRL {out['trl_version']} GRPOTrainer, one process | "
            f"{cell(a['trl']['steady_samples_per_s'], '{:.1f}')} | "
            f"{cell(a['trl']['gold_last'], '{:.3f}')} | 1 | | |"]
    for arm, name in (("grpo", "raylign train(), grpo"), ("gae", "raylign train(), PPO+GAE")):
        g = out["goals"][arm]
        rows.append(f"| {name} | {cell(a[arm]['steady_samples_per_s'], '{:.1f}')} | "
                    f"{cell(a[arm]['gold_last'], '{:.3f}')} | "
                    f"{cell(out['ratios'][arm], '{:.2f}')} | {g['target']} | "
                    f"{'yes' if g['met'] else '**no**'} |")
    return rows


def run(settings: Settings, cfg_unused=None, world_unused=None) -> dict:
    """Figure 8 of `python -m benchmarks` (not in --quick: TRL is an optional extra)."""
    if not settings.peer_repeats:
        raise ValueError("the peer figure is not part of --quick; its smoke run is "
                         "python -m benchmarks.peers --quick")
    return measure(settings, steps=8, last=3, repeats=settings.peer_repeats)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--last", type=int, default=3, help="steps the gold mean is taken over")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the micro world (a smoke run)")
    p.add_argument("--world-seed", type=int, help="build seed of the tiny world (task.seed; "
                   "default: the config's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results"), help="results directory")
    a = p.parse_args(argv)
    settings = Settings.make(a.quick)
    world = () if a.world_seed is None else (f"task.seed={a.world_seed}",)
    out = {**measure(settings, a.steps, a.last, a.repeats, world), "machine": machine(),
           "load_avg_end": os.getloadavg()}
    print("\n".join(table(out)))
    tag = ("-quick" if a.quick else "") + ("" if a.world_seed is None else f"-w{a.world_seed}")
    path = Path(a.out) / f"{time.strftime('%Y-%m-%d')}-peers{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
