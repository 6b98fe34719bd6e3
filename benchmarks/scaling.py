"""Figure 6, scaling: steady-state samples/s of `services.bootstrap.train` with 1..4 rollout
workers (the same config otherwise), the learner step time beside it, and where the CPU goes:
CPU seconds per learner step of each role's actor processes (`cpu/<role>_s` of metrics.jsonl,
from the health probes) and of the driver.

Runs go 1, 2, 3, 4 workers, then again, in one Ray session. Steady state: between the first and
the last learner step (as the overlap figure).

Scaling during a run: one more run starts with 1 worker and is scaled up by one every
`scaling_segment` learner steps, as `raylign scale --rollout N` does (the controller's
`set_replicas`). Each segment's rate is taken over its steps after the first two (the new
worker's start-up falls in those), and over the whole segment.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time

from benchmarks.common import load_cfg, stats

ROLES = ("rollout", "reward", "learner", "driver")


def _rate(rows: list[dict], n: int) -> float:
    return (len(rows) - 1) * n / (rows[-1]["time"] - rows[0]["time"])


def _figures(cfg, summary: dict) -> dict:
    rows = [json.loads(x) for x in (cfg.path / "metrics.jsonl").read_text().splitlines()]
    n = cfg.learner.samples_per_step
    steady = rows[1:]  # the first step's row holds the start-up
    out = {"steady": _rate(rows, n),
           "learner_step_s": statistics.median(r["time/learner_step_s"] for r in steady)}
    for role in ROLES:
        out[f"cpu_{role}_s"] = statistics.fmean(r.get(f"cpu/{role}_s", 0.0) for r in steady)
    return out


def _live(settings, run_dir: str) -> dict:
    """One run scaled up during its course: 1, 2, ... workers, `scaling_segment` steps each."""
    import ray

    from services.bootstrap import train
    from services.control import find_controller

    workers, seg = settings.scaling_workers, settings.scaling_segment
    cfg = load_cfg(settings, f"run_dir={run_dir}", "name=scaling-live",
                   f"rollout.replicas={workers[0]}", f"learner.steps={seg * len(workers)}",
                   "checkpoint.every=0", "metrics.enabled=false")
    failed: list[BaseException] = []

    def run() -> None:
        try:
            train(cfg)
        except BaseException as e:  # re-raised below, in the benchmark's thread
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    log = cfg.path / "metrics.jsonl"
    for i, n in enumerate(workers[1:], 1):
        while thread.is_alive() and (len(log.read_text().splitlines()) if log.is_file()
                                     else 0) < i * seg:
            time.sleep(0.2)
        if thread.is_alive():
            controller = find_controller(cfg.cluster.namespace, cfg.name)[1]
            ray.get(controller.set_replicas.remote("rollout", n), timeout=60)
    thread.join()
    if failed:
        raise failed[0]
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    size = cfg.learner.samples_per_step
    segments = {str(n): rows[i * seg:(i + 1) * seg] for i, n in enumerate(workers)}
    return {"segment_steps": seg,
            "by_workers": {n: {"steady": _rate(r[2:], size), "whole": _rate(r, size),
                               "learner_step_s": statistics.median(
                                   x["time/learner_step_s"] for x in r)}
                           for n, r in segments.items()}}


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
        live = _live(settings, tmp)
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
    live_rates = [live["by_workers"][str(n)]["steady"] for n in workers]
    live_never_falls = all(r >= 0.95 * max(live_rates[:i + 1]) for i, r in enumerate(live_rates))
    out["live"] = live
    out["goal"] = {"figure": "samples/s never falls as workers are added (5% noise), in separate "
                             "runs and scaled during one run",
                   "target": "monotone", "value": [round(r, 2) for r in rates],
                   "live_value": [round(r, 2) for r in live_rates],
                   "met": never_falls and live_never_falls}
    return out
