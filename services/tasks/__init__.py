"""Task kits. The tiny world (`tiny_world.py`) is the embedded RLHF task."""

import os

# Before torch loads (if it has not yet): idle OpenMP threads sleep instead of spinning; on a
# shared 2-core machine spinning threads make training about 5x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_task(cfg):
    """The run's task (`cfg.task`), built or loaded from the cache: a `base.Task`."""
    from services.tasks.tiny_world import prepare, task_of

    return task_of(prepare(cfg.task), cfg.seed)
