"""The environment every raylign process runs torch under, set in one place.

`OMP_WAIT_POLICY=PASSIVE` makes idle OpenMP threads sleep instead of spinning: with several
processes sharing a few cores (a driver, rollout workers, reward members, a learner), spinning
threads made training about 5x slower on a 2-core machine (measured). It must be set before
torch loads, so entry points call `set_process_env()` before importing torch, and Ray's
workers get `PROCESS_ENV` as their runtime environment. The other settings keep transformers
off the model hub (every model is a local directory) and its tokenizers single-threaded."""

from __future__ import annotations

import os

PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


def set_process_env() -> None:
    """Set PROCESS_ENV in this process where the user has not (too late once torch loaded)."""
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)
