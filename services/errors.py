"""What a raylign command can fail with, besides a bad config (`config.ConfigError`) or bad
data (`tasks.dataset.DataError`); the CLI maps each to an exit code (README, "CLI")."""


class RunFailed(RuntimeError):
    """The run stopped on a fault it could not recover from (exit code 4); it checkpointed
    first where it could."""


class NoCluster(RuntimeError):
    """No Ray cluster, or no running raylign job, where a command looked (exit code 3)."""
