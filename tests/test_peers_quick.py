"""`python -m benchmarks.peers --quick` (BENCHMARKS.md, figure 8) on the micro world: TRL's
GRPOTrainer and raylign's grpo and PPO+GAE runs complete and the results are well-formed. Needs
the `peers` extra (TRL), which `make test-slow` installs; no timing assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO, numbers


@pytest.mark.slow  # ~2 min, and TRL is an optional extra: make test-slow
def test_peer_benchmark_quick(micro_world, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--quick", "--steps", "3", "--repeats", "1",
         "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = tmp_path.glob("*-peers-quick.json")
    res = json.loads(path.read_text())
    assert set(res["arms"]) == {"trl", "grpo", "gae"}
    assert [r["estimator"] for r in res["runs"]["gae"]] == ["gae"]
    assert all(len(r["gold_by_step"]) == 3 for rs in res["runs"].values() for r in rs)
    assert all(math.isfinite(x) for x in numbers(res["arms"]))
    assert set(res["goals"]) == {"grpo", "gae"}
    assert [(r["world"], r["seed"]) for r in res["runs"]["grpo"]] == [(None, 0)]
    assert set(res["by_world"]["grpo"]) == {"None"} and res["gold_diff"]["gae"]["pairs"] == 1
    assert all(-1 <= r["heldout_gold"] <= 1 for rs in res["runs"].values() for r in rs)
    assert math.isclose(res["train_gold_diff"]["grpo"]["mean"],
                        res["runs"]["grpo"][0]["gold_last"] - res["runs"]["trl"][0]["gold_last"])
    assert "| setting | both sides |" in proc.stdout and "steady ÷ TRL, per world" in proc.stdout
