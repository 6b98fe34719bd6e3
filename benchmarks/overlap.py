"""Figure 4, overlap: samples/s of `services.bootstrap.train` at rollout.max_staleness=1 ÷ at 0,
the same config otherwise; and figure 5, peak RSS per role of such a run.

Samples/s is taken in the steady state: trained samples between the first and the last learner
step ÷ the wall time between them (from metrics.jsonl), so actor start-up, world loading, the
first step's warm-up and the final checkpoint/report are excluded from both arms alike; the
whole-run rate (start-up included, from summary.json) is reported beside it. Runs alternate
0, 1, 0, 1, ... in one Ray session.

Memory: one more run in a child process (the driver) that joins this Ray session; a sampler in
this process reads VmHWM (the kernel's peak RSS) of every actor process by its Ray title
(`ray::RolloutWorker...`) and of the child, until each exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import REPO, load_cfg, stats

ROLES = {"RolloutWorker": "rollout worker", "RewardMember": "reward member",
         "LearnerActor": "learner", "Combiner": "combiner", "Controller": "controller"}


def _overrides(settings, run_dir: str, staleness: int) -> list[str]:
    return [f"run_dir={run_dir}", f"learner.steps={settings.overlap_steps}",
            f"rollout.max_staleness={staleness}", "checkpoint.every=0", "metrics.enabled=false"]


def _rate(cfg, summary: dict) -> dict:
    rows = [json.loads(x) for x in (cfg.path / "metrics.jsonl").read_text().splitlines()]
    n = cfg.learner.samples_per_step
    steady = (len(rows) - 1) * n / (rows[-1]["time"] - rows[0]["time"]) if len(rows) > 1 else 0
    return {"steady": steady, "whole": len(rows) * n / summary["seconds"],
            "staleness_mean": sum(r["rollout/staleness_mean"] for r in rows) / len(rows)}


def run(settings, cfg_unused, world_unused) -> dict:
    from services.bootstrap import train

    runs: dict[int, list[dict]] = {0: [], 1: []}
    before = _pids_with_roles()
    sampler = Sampler({})  # actor peaks over these runs (figure 5 in --quick)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="raylign-bench-") as tmp:
        for r in range(settings.overlap_repeats):
            for s in (0, 1):
                cfg = load_cfg(settings, *_overrides(settings, tmp, s), f"name=overlap-{s}-{r}")
                runs[s].append(_rate(cfg, train(cfg)))
    sampler.done.set()
    sampler.join()
    cfg = load_cfg(settings)
    ratio = [a["steady"] / b["steady"] for a, b in zip(runs[1], runs[0])]
    out = {
        "what": "steady-state samples/s of train() at max_staleness=1 ÷ at 0",
        "steps_per_run": settings.overlap_steps, "samples_per_step": cfg.learner.samples_per_step,
        "rollout_workers": cfg.rollout.replicas, "engine": cfg.rollout.engine,
        "prompts_per_batch": cfg.rollout.prompts_per_batch,
        "max_inflight_per_worker": cfg.rollout.max_inflight_per_worker,
        "by_staleness": {str(s): {"steady_samples_per_s": stats([x["steady"] for x in v]),
                                  "whole_run_samples_per_s": stats([x["whole"] for x in v]),
                                  "staleness_mean": stats([x["staleness_mean"] for x in v])}
                         for s, v in runs.items()},
        "ratio": stats(ratio),
        "whole_run_ratio": stats([a["whole"] / b["whole"] for a, b in zip(runs[1], runs[0])]),
        "peak_rss_bytes": _by_role(sampler, before),
    }
    out["goal"] = {"figure": "steady-state ratio", "target": ">= 1.3",
                   "value": out["ratio"]["median"], "met": out["ratio"]["median"] >= 1.3}
    return out


# -- figure 5: peak RSS per role -------------------------------------------------------------


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _role(cmdline: list[str]) -> str | None:
    title = " ".join(cmdline)
    if not title.startswith("ray::"):
        return None
    name = title[5:].split(".")[0].split()[0]
    return ROLES.get(name)


class Sampler(threading.Thread):
    """Polls VmHWM of our Ray actor processes (by title) and of given pids until stopped."""

    def __init__(self, extra: dict[int, str], every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.extra, self.every = extra, every
        self.peak: dict[int, tuple[str, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:

        while not self.done.is_set():
            for pid, cmdline in _descendants():
                role = self.extra.get(pid) or _role(cmdline)
                hwm = _hwm(pid) if role else None
                if hwm is not None:
                    old = self.peak.get(pid, (role, 0))[1]
                    self.peak[pid] = (role, max(old, hwm))
            self.done.wait(self.every)


CHILD = """
import json, sys, ray
from benchmarks.common import ENV, load_cfg, Settings
from services.bootstrap import train
address, quick, overrides = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
ray.init(address=address, _node_ip_address="127.0.0.1", namespace="raylign-bench-mem",
         log_to_driver=False, runtime_env={"env_vars": ENV})
summary = train(load_cfg(Settings.make(quick), *overrides))
print("SUMMARY " + json.dumps(summary))
"""


def _by_role(sampler: Sampler, exclude: set[int]) -> dict[str, list[int]]:
    by_role: dict[str, list[int]] = {}
    for pid, (role, hwm) in sampler.peak.items():
        if pid not in exclude:
            by_role.setdefault(role, []).append(hwm)
    return by_role


ESTIMATORS = {"gae": [], "grpo": ["learner.estimator=grpo", "rollout.sampling.n=4"]}


def memory(settings, overlap: dict | None = None) -> dict:
    """Figure 5. Full run: one more train() per advantage estimator (gae: a critic; grpo: none),
    its driver in a child process. --quick: the actors' peaks over the overlap runs (gae), and
    this process (the driver there, but it also ran the other figures) as the driver."""
    cfg = load_cfg(settings)
    if not settings.driver_child and overlap:
        by_role = {**overlap["peak_rss_bytes"], "driver": [_hwm(os.getpid()) or 0]}
        return _memory_result(settings, cfg, {"gae": by_role}, "driver = the benchmark process")
    by_estimator = {est: _child_run_peaks(settings, extra)
                    for est, extra in ESTIMATORS.items()}
    return _memory_result(settings, cfg, by_estimator,
                          "driver = a child process running only train()")


def _child_run_peaks(settings, extra: list[str]) -> dict[str, list[int]]:
    import ray

    address = ray.get_runtime_context().gcs_address
    with tempfile.TemporaryDirectory(prefix="raylign-bench-mem-") as tmp:
        overrides = _overrides(settings, tmp, 1) + ["name=memory", *extra]
        before = {p for p in _pids_with_roles()}
        child = subprocess.Popen([sys.executable, "-c", CHILD, address,
                                  "1" if settings.quick else "0", *overrides],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        sampler = Sampler({child.pid: "driver"})
        sampler.start()
        stdout, stderr = child.communicate(timeout=900)
        time.sleep(0.5)
        sampler.done.set()
        sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"memory run failed ({child.returncode}): {stderr[-2000:]}")
    return _by_role(sampler, before)


def _memory_result(settings, cfg, by_estimator: dict[str, dict[str, list[int]]],
                   driver: str) -> dict:
    def peaks(by_role: dict[str, list[int]]) -> dict:
        return {role: {"max": max(v) / 2**20, "each": [x / 2**20 for x in sorted(v)]}
                for role, v in sorted(by_role.items())}

    gae = by_estimator["gae"]
    return {
        "what": "peak RSS (VmHWM) per process, by role, over train() runs",
        "config": settings.config, "steps": settings.overlap_steps,
        "processes": {role: len(v) for role, v in gae.items()},
        "peak_rss_mib": peaks(gae),  # the default estimator (gae)
        "by_estimator": {est: peaks(v) for est, v in by_estimator.items()},
        "rollout_engine": cfg.rollout.engine, "driver": driver,
        "note": "RSS counts shared pages (torch libraries, object-store mappings) in every "
                "process; the total over-counts what the machine uses",
    }


def _descendants() -> list[tuple[int, list[str]]]:
    """(pid, cmdline) of this process's tree: our raylet's workers, not other users' Ray."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append((p.pid, p.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _pids_with_roles() -> set[int]:
    return {pid for pid, cmdline in _descendants() if _role(cmdline)}
