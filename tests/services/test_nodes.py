"""Placement and node loss on a multi-node Ray cluster on 127.0.0.1 (tests/services/
cluster_faults.py, in a process of its own): roles land on the nodes whose resources they ask
for; losing a rollout node leaves the run going; losing the learner's or the reward members'
node (with no other node for them) stops it with its checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.services.test_reliability import REPO


def scenario(name: str, run_dir) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.services.cluster_faults", name,
                           str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_roles_are_placed_by_resources_and_a_lost_rollout_node_is_survived(micro_world,
                                                                          tmp_path):
    out = scenario("rollout", tmp_path)
    placed, nodes, head = out["placed"], out["final"], out["head"]
    assert {placed["rollout-0"], placed["rollout-1"]} == {nodes["a"], nodes["b"]}
    assert placed["learner-0"] == head and placed["reward0-0"] == head
    summary = out["result"]["summary"]  # stopped (raylign stop) after node c's worker ran
    steps = summary["steps"]
    assert summary["interrupted"] and out["steps"] == list(range(1, steps + 1))
    assert summary["ledger"]["trained"] == steps * out["samples_per_step"]  # in-flight re-issued
    survivor = nodes["b" if out["lost"] == "a" else "a"]
    assert set(out["after_loss"].values()) >= {survivor}
    assert nodes[out["lost"]] not in out["after_loss"].values()


@pytest.mark.slow  # 2 min: make test-slow
@pytest.mark.parametrize("role", ["learner", "reward"])
def test_losing_the_node_of_the_learner_or_the_rewards_stops_the_run(role, micro_world,
                                                                     tmp_path):
    """No other node has the role's resources: a learner whose replacements cannot be placed,
    or reward members without a replica, stop the run with RunFailed naming the newest
    checkpoint (`--resume` continues once capacity is back)."""
    out = scenario(role, tmp_path)
    assert out["placed"][f"{role}{'-0' if role == 'learner' else '0-0'}"] == out["node"]
    error = out["result"]["error"]
    expected = ("learner.max_replacements" if role == "learner"
                else "reward member 0 has had no replica that answers")
    assert expected in error and "the newest checkpoint is " in error, error
    assert out["steps"] == list(range(1, len(out["steps"]) + 1))
