"""RolloutWorker: one engine on its own resources; weights arrive as versioned snapshots."""

from __future__ import annotations

import time
from pathlib import Path

from actors.engines import make_engine
from actors.fleet import process_info, use_assigned_cpus
from actors.records import Prompt, Sample, Sampling
from learner.weights import WeightSnapshot


class RolloutWorker:
    """A plain class; the driver wraps it with `ray.remote(num_cpus=..., ...)`.

    Ray runs one method at a time per actor, in the order a caller submitted them, so a
    `set_weights` submitted before a `generate` is loaded before that batch is sampled.
    """

    def __init__(
        self, worker_id: str, model_dir: str | Path, engine: str, sampling: Sampling, seed: int,
        max_prompt_tokens: int | None = None, dtype: str = "float32",
    ) -> None:
        use_assigned_cpus()
        self.worker_id = worker_id
        self.sampling = sampling
        self.engine = make_engine(engine, model_dir, seed=seed,
                                  max_prompt_tokens=max_prompt_tokens, dtype=dtype)
        self.version = -1  # no snapshot loaded yet: generate() refuses to run
        self.loaded: tuple[int, str] | None = None  # (version, kind) last loaded
        self.load_seconds = 0.0

    def set_weights(self, version: int, snapshot: WeightSnapshot) -> int:
        """Load `snapshot` (Ray resolves the ObjectRef argument: zero-copy numpy arrays).

        Under LoRA a worker first gets the full base weights, then adapter snapshots.
        """
        if snapshot.version != version:
            raise ValueError(f"snapshot is version {snapshot.version}, expected {version}")
        if (version, snapshot.kind) != self.loaded:
            t0 = time.perf_counter()
            self.engine.load_weights(snapshot)
            self.load_seconds = time.perf_counter() - t0
            self.loaded = (version, snapshot.kind)
            self.version = version
        return self.version

    def generate(self, prompts: list[Prompt]) -> list[Sample]:
        if self.version < 0:
            raise RuntimeError(f"{self.worker_id}: generate() before any weights were loaded")
        return self.engine.generate(
            prompts, self.sampling, version=self.version, worker_id=self.worker_id
        )

    def info(self) -> dict:
        return {
            "worker_id": self.worker_id,
            "version": self.version,
            "engine": self.engine.name,
            "load_seconds": self.load_seconds,
            **process_info(),
        }
