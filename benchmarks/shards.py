"""Real model shapes: a learner group's memory and step time by world size, and a 0.5B step.

`python -m benchmarks.shards [--quick]` (part of `python -m benchmarks` as the `shards` figure).

Models are Qwen2-shaped, random, stored in bf16 (learner/shapes.py): `100m` (~100M
parameters) at learner world size 1 and 2, and `0.5b` (the shape of Qwen2.5-0.5B) for one step
at world size 1 (`--quick`: the `test` shape instead of both). For each: real LearnerActor
ranks on the embedded Ray (1 CPU each), rloo, a batch of 16 samples (8 prompts x 2) of 32
prompt + 32 response tokens, minibatch 8, one epoch. Measured per rank: the peak resident
memory growth (peak RSS after the steps minus the peak before the model was built, i.e. what
the learner added), beside the memory plan's total for that rank (learner/memory.py); the
median step time over steps 2.. (step 1 pays for lazy initialisation); the publish time (the
full-weight gather on rank 0, the cast to the publish dtype and the `ray.put`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, init_ray, machine

BEGIN, END = "<!-- shards:begin (python -m benchmarks.shards) -->", "<!-- shards:end -->"
# glibc keeps freed blocks in its arenas (one per thread that allocated: gloo adds threads), so
# a process's RSS can stay far above its live tensors; with this threshold every block of
# 64 KiB or more is its own mapping, returned to the OS when freed, and the peak RSS measures
# what the learner really holds (measured: without it, world size 2 showed the same peak as 1)
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _samples(n: int, prompt: int, response: int, vocab: int):
    import torch

    from actors.records import Sample, ScoredSample

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        tokens = torch.randint(1, vocab, (prompt + response,), generator=g).tolist()
        reward = float(torch.randn((), generator=g))
        out.append(ScoredSample(Sample(i // 2, tokens[:prompt], tokens[prompt:],
                                       [-5.0] * response, 0, "bench", index=i % 2),
                                (reward,), reward))
    return out


def measure(model_dir: Path, shape: str, world_size: int, steps: int) -> dict:
    import ray

    from actors.learner import LearnerActor
    from learner.memory import plan_learner
    from learner.settings import KLSettings, PPOSettings
    from services.plan import model_shape

    settings = PPOSettings(estimator="rloo", lr=1e-5, minibatch_size=8, ppo_epochs=1,
                           kl=KLSettings(coef=0.05), off_policy="tis")
    model, _ = model_shape(model_dir)
    samples = _samples(16, 32, 32, model.vocab)
    options = {"num_cpus": 1, "runtime_env": {"env_vars": MALLOC}}
    actor = ray.remote(LearnerActor).options(**options).remote(
        settings, str(model_dir), [], pad_token_id=0, world_size=world_size,
        rank_options=options, collective_timeout_s=1800, publish_dtype="bfloat16")
    step_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        ray.get(actor.step.remote(samples))
        step_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ray.get(actor.publish.remote())
    publish_s = time.perf_counter() - t0
    infos = ray.get(actor.rank_infos.remote())
    ray.kill(actor)
    plan = plan_learner(model, world_size=world_size, compute_bytes=4, publish_bytes=2,
                        tokens=8 // world_size * 64)
    return {"shape": shape, "params": model.params, "world_size": world_size,
            "steps": steps, "step_s": step_s,
            "step_s_median": statistics.median(step_s[1:] or step_s),
            "publish_s": publish_s,
            "rank_growth_bytes": [i["max_rss"] - i["rss_start"] for i in infos],
            "plan_bytes": sum(plan.values()),
            "plan_params_grads_adam_bytes": sum(plan[k] for k in (
                "policy master weights", "gradients", "Adam moments"))}


def run(settings=None, cfg=None, world=None, quick: bool | None = None) -> dict:
    """The figure: rows by (shape, world size)."""
    from learner.shapes import build_model_dir

    quick = bool(settings and settings.quick) if quick is None else quick
    rows = []
    with tempfile.TemporaryDirectory(prefix="raylign-shards-") as tmp:
        big = "test" if quick else "100m"
        model_dir = build_model_dir(Path(tmp) / big, big)
        for world_size in (1, 2):
            rows.append(measure(model_dir, big, world_size, steps=3 if quick else 4))
        if not quick:
            model_dir = build_model_dir(Path(tmp) / "0.5b", "0.5b")
            rows.append(measure(model_dir, "0.5b", 1, steps=1))
    one, two = rows[0], rows[1]
    ratio = max(two["rank_growth_bytes"]) / max(one["rank_growth_bytes"])
    return {"rows": rows, "rank_memory_ratio_2_over_1": ratio,
            "goal": f"per-rank learner memory at world size 2 / 1 = {ratio:.2f} (about 0.5 "
                    f"for parameters + optimizer)"}


def markdown(fig: dict, date: str, json_path: str) -> str:
    gib = 2**30
    lines = [BEGIN, "", f"Run {date}, results `{json_path}`. Per rank: peak RSS growth "
             "(measured) beside the memory plan (total, and its exact parameters + gradients "
             "+ Adam part); step = median over steps 2.. ; publish = gather + cast + put.", "",
             "| model | params | world size | rank growth (GiB) | plan total (GiB) | "
             "plan params+grads+Adam (GiB) | step (s) | publish (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in fig["rows"]:
        growth = " / ".join(f"{b / gib:.2f}" for b in r["rank_growth_bytes"])
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:.0f}M | {r['world_size']} | "
                     f"{growth} | {r['plan_bytes'] / gib:.2f} | "
                     f"{r['plan_params_grads_adam_bytes'] / gib:.2f} | "
                     f"{r['step_s_median']:.2f} | {r['publish_s']:.2f} |")
    lines += ["", fig["goal"], "", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the tiny `test` shape only")
    p.add_argument("--out", default=str(REPO / "benchmarks/results"))
    p.add_argument("--markdown", help="file to splice the table into (default: BENCHMARKS.md, "
                   "or <out>/<date>-shards-quick.md with --quick)")
    args = p.parse_args(argv)
    init_ray()
    fig = run(quick=args.quick)
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-shards" + ("-quick" if args.quick else "")
    json_path = out / f"{date}{suffix}.json"
    json_path.write_text(json.dumps({"date": date, "machine": machine(), **fig}, indent=1))
    md = Path(args.markdown) if args.markdown else (
        out / f"{date}{suffix}.md" if args.quick else REPO / "BENCHMARKS.md")
    rel = json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    table = markdown(fig, date, str(rel))
    old = md.read_text() if md.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + table.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + table
    md.write_text(new)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
