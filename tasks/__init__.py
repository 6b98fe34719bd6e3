"""Task kits. The tiny world (`tiny_world.py`) is the embedded RLHF task."""

from learner.process_env import set_process_env

set_process_env()  # before torch loads (if it has not yet)


def load_task(cfg):
    """The run's task (`cfg.task`) as a `base.Task`: the tiny world built or loaded from its
    cache, or a user's prompt files (every row checked: `dataset.DataError`)."""
    if cfg.task.kind == "dataset":
        from tasks.dataset import load_dataset_task

        return load_dataset_task(cfg)
    from tasks.tiny_world import prepare, task_of

    return task_of(prepare(cfg.task), cfg.seed)
