"""A multi-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`: a head and worker nodes,
each a raylet of its own with its own resources), and a micro run on it whose nodes are
removed mid-run. Run by tests/services/test_nodes.py in a process of its own (a process holds
one Ray); prints one JSON line with what it saw.

    python -m tests.services.cluster_faults rollout RUN_DIR   # lose a rollout node, add one
    python -m tests.services.cluster_faults learner RUN_DIR   # lose the learner's node
    python -m tests.services.cluster_faults reward RUN_DIR    # lose the reward members' node
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

# Before Ray is imported: every node, and so every address of the cluster, on 127.0.0.1
# (Ray reads this once, at import; services/__init__.py sets it too, but later).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from services.bootstrap import train  # noqa: E402
from services.control import controller_name  # noqa: E402
from services.errors import RunFailed  # noqa: E402
from tests.services.test_pipeline import micro, rows  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FAST = ["deadlines.generate_s=20", "deadlines.score_s=20", "deadlines.probe_s=20",
        "deadlines.publish_s=20",
        "checkpoint.max_actor_failures=3"]


def wait_for(predicate, what: str, run: threading.Thread, timeout: float = 300):
    """Poll `predicate` until it holds; fail as soon as the run has ended without it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if not run.is_alive():
            raise RuntimeError(f"the run ended before: {what}")
        time.sleep(0.5)
    raise TimeoutError(what)


def actor_nodes(cfg) -> dict[str, str]:
    """Actor name -> the node id it runs on, for every live actor of the run ({} once the run
    has ended and its controller is gone)."""
    try:
        status = ray.get(controller(cfg).status.remote(), timeout=10)
    except (ValueError, ray.exceptions.RayError):
        return {}
    names = [*status.get("rollout_workers", []), "learner-0", "reward0-0"]
    out = {}
    for name in names:
        try:
            actor = ray.get_actor(f"{cfg.name}:{name}", namespace=cfg.cluster.namespace)
            out[name] = ray.get(actor.info.remote(), timeout=10)["node_id"]
        except (ValueError, ray.exceptions.RayError):
            continue
    return out


def controller(cfg):
    return ray.get_actor(controller_name(cfg.name), namespace=cfg.cluster.namespace)


def run_in_thread(cfg) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = train(cfg)
        except RunFailed as e:
            result["error"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def steps_logged(cfg) -> int:
    path = cfg.path / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def lose_a_rollout_node(cluster: Cluster, run_dir: Path) -> dict:
    nodes = {"a": cluster.add_node(num_cpus=1, resources={"rollout": 1}),
             "b": cluster.add_node(num_cpus=1, resources={"rollout": 1})}
    cluster.wait_for_nodes()
    # Long enough never to end by itself: stopped (raylign stop) once node c has a worker.
    cfg = micro(run_dir, "learner.steps=200", "rollout.replicas=2", "checkpoint.every=0",
                "rollout.resources.rollout=1", "learner.resources.learner=1",
                "reward.resources.reward=1", *FAST)
    thread, result = run_in_thread(cfg)
    wait_for(lambda: steps_logged(cfg) >= 2, "2 steps", thread)
    placed = actor_nodes(cfg)
    lost = next(k for k, n in nodes.items() if n.node_id == placed["rollout-0"])
    cluster.remove_node(nodes[lost], allow_graceful=False)
    at_loss = steps_logged(cfg)
    wait_for(lambda: steps_logged(cfg) >= at_loss + 3, "3 steps after the node loss", thread)
    after_loss = actor_nodes(cfg)
    nodes["c"] = cluster.add_node(num_cpus=1, resources={"rollout": 1})  # a node joins
    wait_for(lambda: nodes["c"].node_id in actor_nodes(cfg).values(), "a worker on node c",
             thread)
    joined_at = steps_logged(cfg)
    wait_for(lambda: steps_logged(cfg) >= joined_at + 2, "2 steps with node c", thread)
    ray.get(controller(cfg).request_stop.remote())
    thread.join(timeout=600)
    return {"result": result, "placed": placed, "after_loss": after_loss,
            "final": {k: n.node_id for k, n in nodes.items()}, "lost": lost,
            "head": cluster.head_node.node_id, "steps": [r["step"] for r in rows(cfg)],
            "samples_per_step": cfg.learner.samples_per_step}


def lose_the_node_of(role: str, cluster: Cluster, run_dir: Path) -> dict:
    """The learner or the reward members on a node of their own, which is then removed."""
    cluster.add_node(num_cpus=1, resources={"rollout": 1})
    node = cluster.add_node(num_cpus=1, resources={role: 4})
    cluster.wait_for_nodes()
    cfg = micro(run_dir, "learner.steps=40", "checkpoint.every=1",
                "rollout.resources.rollout=1", "learner.resources.learner=1",
                "reward.resources.reward=1", "learner.max_replacements=1",
                "deadlines.step_s=15", *FAST)
    thread, result = run_in_thread(cfg)
    wait_for(lambda: steps_logged(cfg) >= 2, "2 steps", thread)
    placed = actor_nodes(cfg)
    cluster.remove_node(node, allow_graceful=False)
    thread.join(timeout=600)
    return {"result": result, "placed": placed, "node": node.node_id,
            "steps": [r["step"] for r in rows(cfg)]}


def main() -> None:
    scenario, run_dir = sys.argv[1], Path(sys.argv[2])
    head = {"num_cpus": 3, "resources": {"reward": 4, "learner": 1}}
    if scenario != "rollout":  # the role gets a node of its own
        del head["resources"][scenario]
    cluster = Cluster(initialize_head=True, head_node_args=head)
    ray.init(address=cluster.address, namespace="raylign-nodes", runtime_env={"env_vars": ENV},
             log_to_driver=False)
    try:
        out = (lose_a_rollout_node(cluster, run_dir) if scenario == "rollout"
               else lose_the_node_of(scenario, cluster, run_dir))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
