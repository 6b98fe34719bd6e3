"""Figure 6, scaling: steady-state samples/s of `services.bootstrap.train` with 1..4 rollout
workers (the same config otherwise), the learner step time beside it, and where the CPU goes:
CPU seconds per learner step of each role's actor processes (`cpu/<role>_s` of metrics.jsonl,
from the health probes) and of the driver.

Runs go 1, 2, 3, 4 workers, then again, in one Ray session. Steady state: between the first and
the last learner step (as the overlap figure).
"""

from __future__ import annotations

import json
import statistics
import tempfile

from benchmarks.common import load_cfg, stats

ROLES = ("rollout", "reward", "learner", "driver")


def _figures(cfg, summary: dict) -> dict:
    rows = [json.loads(x) for x in (cfg.path / "metrics.jsonl").read_text().splitlines()]
    n = cfg.learner.samples_per_step
    steady = rows[1:]  # the first step's row holds the start-up
    out = {"steady": (len(rows) - 1) * n / (rows[-1]["time"] - rows[0]["time"]),
           "learner_step_s": statistics.median(r["time/learner_step_s"] for r in steady)}
    for role in ROLES:
        out[f"cpu_{role}_s"] = statistics.fmean(r.get(f"cpu/{role}_s", 0.0) for r in steady)
    return out


def run(settings, cfg_unused, world_unused) -> dict:
    from services.bootstrap import train

    workers = settings.scaling_workers
    runs: dict[int, list[dict]] = {n: [] for n in workers}
    with tempfile.TemporaryDirectory(prefix="raylign-bench-") as tmp:
        for r in range(settings.scaling_repeats):
            for n in workers:
                cfg = load_cfg(settings, f"run_dir={tmp}", f"name=scaling-{n}-{r}",
                               f"rollout.replicas={n}", f"learner.steps={settings.overlap_steps}",
                               "checkpoint.every=0", "metrics.enabled=false")
                runs[n].append(_figures(cfg, train(cfg)))
    cfg = load_cfg(settings)
    by_workers = {str(n): {k: stats([x[k] for x in v]) for k in v[0]} for n, v in runs.items()}
    rates = [by_workers[str(n)]["steady"]["median"] for n in workers]
    out = {
        "what": "steady-state samples/s of train() vs rollout workers (same config otherwise)",
        "steps_per_run": settings.overlap_steps, "samples_per_step": cfg.learner.samples_per_step,
        "engine": cfg.rollout.engine, "cpu_per_worker": cfg.rollout.num_cpus,
        "embedded_cpus": cfg.cluster.num_cpus, "by_workers": by_workers,
    }
    # Never slower with more workers: each rate within 5% (run-to-run noise) of the best before.
    never_falls = all(r >= 0.95 * max(rates[:i + 1]) for i, r in enumerate(rates))
    out["goal"] = {"figure": "samples/s never falls as workers are added (5% noise)",
                   "target": "monotone", "value": [round(r, 2) for r in rates],
                   "met": never_falls}
    return out
