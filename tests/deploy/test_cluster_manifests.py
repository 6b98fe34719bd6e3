"""deploy/ray/cluster.yaml and deploy/kuberay/*.yaml, checked with Ray's own validators, and
deploy/configs/cluster.yaml: every role's resources fit a node group that advertises them."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from services.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "deploy" / "ray" / "cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"
RUN_CONFIG = ROOT / "deploy" / "configs" / "cluster.yaml"
EXPORTER_PORT = 9464


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _roles() -> dict[str, dict[str, float]]:
    """Ray resources one actor of each role asks for, from the cluster run config."""
    cfg = load_config(RUN_CONFIG)
    out = {}
    for role in ("rollout", "reward", "learner"):
        r = getattr(cfg, role)
        need = {"CPU": r.num_cpus, **r.resources}
        if r.num_gpus:
            need["GPU"] = r.num_gpus
        out[role] = need
    return out


def _placement(node_types: dict) -> dict[str, list[str]]:
    """Role -> the node types that can hold one of its actors (resources a superset)."""
    return {role: [name for name, nt in node_types.items()
                   if all(nt["resources"].get(k, 0) >= v for k, v in need.items())]
            for role, need in _roles().items()}


# -- run config ------------------------------------------------------------------------------

def test_cluster_run_config_loads():
    cfg = load_config(RUN_CONFIG)
    assert cfg.rollout.num_gpus == 1 and cfg.rollout.resources == {"rollout": 1}
    assert cfg.rollout.engine == "vllm"
    assert cfg.learner.resources == {"learner": 1} and cfg.learner.num_gpus == 1
    assert cfg.reward.resources == {"reward": 1}
    assert cfg.task.kind == "tiny_world" and cfg.cluster.address == "auto"
    assert cfg.metrics.port == EXPORTER_PORT and cfg.metrics.host == "127.0.0.1"


# -- cluster launcher ------------------------------------------------------------------------

def test_launcher_config_passes_ray_validator():
    cfg = prepare_config(_load(LAUNCHER))
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert set(types) == {"head", "rollout_gpu", "learner_gpu"}
    assert types["rollout_gpu"]["resources"]["GPU"] == 1


def test_launcher_validator_rejects_a_broken_config():
    bad = _load(LAUNCHER)
    bad["available_node_types"]["rollout_gpu"]["min_workers"] = "one"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(bad))


def test_launcher_node_types_hold_each_role():
    types = prepare_config(_load(LAUNCHER))["available_node_types"]
    assert _placement(types) == {"rollout": ["rollout_gpu"], "reward": ["head"],
                                 "learner": ["learner_gpu"]}
    cfg = load_config(RUN_CONFIG)
    members = cfg.reward.members or cfg.task.num_members
    assert types["head"]["resources"]["reward"] >= members * cfg.reward.replicas
    assert types["rollout_gpu"]["max_workers"] >= cfg.rollout.replicas
    for resource in ("learner", "GPU"):  # the learner node holds every rank of the group
        assert types["learner_gpu"]["resources"][resource] >= cfg.learner.world_size


def test_launcher_ray_metrics_on_fixed_port():
    cfg = _load(LAUNCHER)
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert any("--metrics-export-port=8080" in c for c in cmds)
    assert not any("--dashboard-host=0.0.0.0" in c for c in cfg["head_start_ray_commands"])


# -- KubeRay ---------------------------------------------------------------------------------

def _check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay (ray.io/v1) requires of a RayCluster spec."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] and container["name"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == group["rayStartParams"].get("num-gpus")
    assert spec["rayVersion"] == "2.60.0"


def test_raycluster_fields():
    cr = _load(KUBERAY / "raycluster.yaml")
    assert (cr["apiVersion"], cr["kind"]) == ("ray.io/v1", "RayCluster")
    assert cr["metadata"]["name"] and cr["metadata"]["namespace"]
    _check_ray_cluster_spec(cr["spec"])
    ports = {p["name"]: p["containerPort"]
             for p in cr["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 8080 and ports["raylign-metrics"] == EXPORTER_PORT


def test_raycluster_autoscaling_config_validates():
    cr = _load(KUBERAY / "raycluster.yaml")
    cfg = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert _placement(types) == {"rollout": ["rollout"], "reward": ["headgroup"],
                                 "learner": ["learner"]}
    assert (types["rollout"]["min_workers"], types["rollout"]["max_workers"]) == (1, 8)
    world_size = load_config(RUN_CONFIG).learner.world_size  # every rank on the learner pod
    assert types["learner"]["resources"]["learner"] >= world_size
    assert types["learner"]["resources"]["GPU"] >= world_size


def test_raycluster_check_catches_missing_resources():
    cr = _load(KUBERAY / "raycluster.yaml")
    broken = copy.deepcopy(cr)
    del broken["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"]
    types = _derive_autoscaling_config_from_ray_cr(broken)["available_node_types"]
    assert _placement(types)["rollout"] == []


def test_rayjob_runs_raylign_train_on_the_same_cluster():
    job = _load(KUBERAY / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    entry = job["spec"]["entrypoint"]
    assert "raylign train --config deploy/configs/cluster.yaml" in entry
    assert "metrics.host=$MY_POD_IP" in entry
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"])
    assert job["spec"]["rayClusterSpec"] == _load(KUBERAY / "raycluster.yaml")["spec"]
    validate_config(_derive_autoscaling_config_from_ray_cr(
        {"metadata": job["metadata"], "spec": job["spec"]["rayClusterSpec"]}))
    env = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in env["env"]} >= {"MY_POD_IP"}


def test_monitoring_objects():
    docs = list(yaml.safe_load_all((KUBERAY / "monitoring.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert all(d["apiVersion"] == "monitoring.coreos.com/v1" for d in docs)
    head_ports = {p["name"] for p in _load(KUBERAY / "raycluster.yaml")["spec"]["headGroupSpec"]
                  ["template"]["spec"]["containers"][0]["ports"]}
    endpoints = kinds["ServiceMonitor"]["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} <= head_ports
    assert {e["port"] for e in endpoints} == {"metrics", "raylign-metrics"}
    assert kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"] == {
        "ray.io/node-type": "head"}
    assert kinds["PodMonitor"]["spec"]["selector"]["matchLabels"] == {"ray.io/node-type": "worker"}
    # The PrometheusRule carries exactly the rules of deploy/prometheus/alerts.yml.
    alerts = _load(ROOT / "deploy" / "prometheus" / "alerts.yml")["groups"]
    for g in alerts:
        for r in g["rules"]:
            r["expr"] = r["expr"].strip()
    assert kinds["PrometheusRule"]["spec"]["groups"] == alerts
