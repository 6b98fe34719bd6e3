"""Task kits. The tiny world (`tiny_world.py`) is the embedded RLHF task."""

import os

# Before torch loads (if it has not yet): idle OpenMP threads sleep instead of spinning; on a
# shared 2-core machine spinning threads make training about 5x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_task(cfg):
    """The run's task (`cfg.task`) as a `base.Task`: the tiny world built or loaded from its
    cache, or a user's prompt files (every row checked: `dataset.DataError`)."""
    if cfg.task.kind == "dataset":
        from services.tasks.dataset import load_dataset_task

        return load_dataset_task(cfg)
    from services.tasks.tiny_world import prepare, task_of

    return task_of(prepare(cfg.task), cfg.seed)
