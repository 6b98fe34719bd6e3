"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
# Before torch loads: idle OpenMP threads sleep instead of spinning; with several test
# processes on 2 cores, spinning makes torch 5x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
TEST_WORLDS = REPO / ".cache/test-worlds"  # where the tests' worlds are built (and cached)


@pytest.fixture(scope="session")
def micro_world():
    """The micro tiny-world (`deploy/configs/micro.yaml`), built once into
    `<repo>/.cache/test-worlds` and reused across sessions (the cache key covers the build)."""
    from services.config import load_config
    from services.tasks.tiny_world import prepare

    cfg = load_config(REPO / "deploy/configs/micro.yaml")
    cfg.task.cache_dir = str(TEST_WORLDS)
    return prepare(cfg.task)
