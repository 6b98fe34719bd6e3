"""Security properties of the deploy manifests and images, read from the real files: Ray token
auth from a Kubernetes Secret on every Ray process, NetworkPolicies that admit only the
cluster's own pods (plus the job submitter, the operator and Prometheus, each on its port),
non-root containers with a read-only root filesystem, the cluster launcher's token, and images
built from exact versions that run as a non-root user (docs/deploy.md, "Security")."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import list2cmdline

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.config import load_config
from tests.deploy.test_docker import DOCKERFILES, instructions, pip_installs, pyproject

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
LAUNCHER = ROOT / "deploy" / "ray" / "cluster.yaml"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
SECRET, TOKEN_KEY = "raylign-ray-auth", "auth_token"
MANIFESTS = ("raycluster.yaml", "rayjob.yaml")
MAIN_PACKAGES = {"torch", "ray", "transformers", "peft", "pydantic", "safetensors", "tokenizers",
                 "prometheus-client", "datasets", "numpy", "vadersentiment", "pyyaml", "tqdm",
                 "matplotlib"}
IMAGE_UID = 1000  # docker/Dockerfile*: useradd --uid 1000 raylign; USER 1000:1000


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _cluster_spec(name: str) -> dict:
    cr = _load(KUBERAY / name)
    return cr["spec"]["rayClusterSpec"] if cr["kind"] == "RayJob" else cr["spec"]


def _pods(name: str) -> dict[str, dict]:
    """Every pod template of a manifest: the head, each worker group, a RayJob's submitter."""
    spec = _cluster_spec(name)
    pods = {"head": spec["headGroupSpec"]["template"]}
    pods |= {g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}
    submitter = _load(KUBERAY / name)["spec"].get("submitterPodTemplate")
    if submitter:
        pods["submitter"] = submitter
    return pods


def _ray_pod_labels(template: dict, node_type: str, cluster: str) -> dict[str, str]:
    """The labels KubeRay (>= 1.6, labelPod) gives a Ray pod: its own, then the template's
    (which may override all but cluster, node type and group)."""
    labels = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster,
              "ray.io/node-type": node_type, "app.kubernetes.io/name": "kuberay",
              "app.kubernetes.io/created-by": "kuberay-operator"}
    labels |= {k: v for k, v in template["metadata"].get("labels", {}).items()
               if k not in ("ray.io/cluster", "ray.io/node-type", "ray.io/group")}
    return labels


def _pod_labels(name: str) -> dict[str, dict[str, str]]:
    cluster = "raylign" if name == "raycluster.yaml" else "raylign-train-x7k2p"  # generated
    out = {}
    for group, template in _pods(name).items():
        if group == "submitter":
            out[group] = dict(template["metadata"]["labels"])
        else:
            out[group] = _ray_pod_labels(template, "head" if group == "head" else "worker",
                                         cluster)
    return out


def _matches(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # no matchExpressions to reason about
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# -- KubeRay: containers ---------------------------------------------------------------------

@pytest.mark.parametrize("name", MANIFESTS)
def test_every_container_runs_non_root_read_only_without_capabilities(name):
    spec = _cluster_spec(name)
    checked = []
    for group, template in _pods(name).items():
        pod = template["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == IMAGE_UID, group
        assert psc["runAsGroup"] == IMAGE_UID and psc["seccompProfile"] == {
            "type": "RuntimeDefault"}, group
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (group, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (group, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (group, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (group, c["name"])
            assert not sc.get("privileged") and sc.get("runAsUser", IMAGE_UID) != 0
            # Ray writes /tmp/ray (sessions, logs, spilled objects): /tmp must be an emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], (group, c["name"])
            assert set(mounts.values()) <= set(volumes), (group, c["name"])
            checked.append(f"{group}/{c['name']}")
            if group == "head":  # the autoscaler sidecar KubeRay adds to this pod
                auto = spec["autoscalerOptions"]
                assert auto["securityContext"] == sc
                auto_mounts = {m["mountPath"]: m["name"] for m in auto["volumeMounts"]}
                assert "emptyDir" in volumes[auto_mounts["/tmp"]]
    groups = {g["groupName"] for g in spec["workerGroupSpecs"]}
    assert {c.split("/")[0] for c in checked} >= {"head"} | groups
    if name == "rayjob.yaml":
        assert "submitter/ray-job-submitter" in checked
        assert _load(KUBERAY / name)["spec"]["submissionMode"] == "K8sJobMode"


@pytest.mark.parametrize("name", MANIFESTS)
def test_writable_paths_are_the_ones_raylign_writes(name):
    """Read-only root: the run dir (checkpoints; the learner writes its own files) and the home
    dir (vLLM/Triton/matplotlib caches) are emptyDirs on every Ray pod, next to /tmp."""
    for group, template in _pods(name).items():
        (c,) = template["spec"]["containers"]
        paths = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/home/raylign"} <= paths, group
        if group != "submitter":
            assert {"/app/runs", "/dev/shm"} <= paths, group
    cfg = load_config(ROOT / "deploy" / "configs" / "cluster.yaml")
    assert Path("/app") / cfg.path.parent == Path("/app/runs")  # WORKDIR /app + run_dir


# -- KubeRay: token auth ---------------------------------------------------------------------

def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("name", MANIFESTS)
def test_token_auth_from_the_secret_on_head_workers_and_submitter(name):
    spec = _cluster_spec(name)
    assert spec["authOptions"] == {"mode": "token", "secretName": SECRET}
    major, minor, *_ = (int(x) for x in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "Ray token auth (and KubeRay's authOptions) need >= 2.52"
    pods = _pods(name)
    assert {"head", "rollout", "learner"} <= set(pods)
    for group, template in pods.items():
        for c in template["spec"]["containers"]:
            env = _env(c)
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, group
            token = env["RAY_AUTH_TOKEN"]
            assert "value" not in token, f"{group}: a literal token in the manifest"
            assert token["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": TOKEN_KEY}}
    # The autoscaler's token comes from authOptions (KubeRay adds it before the overrides, and
    # a second copy from autoscalerOptions.env would duplicate the variable).
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {
        e["name"] for e in spec["autoscalerOptions"].get("env", [])}


def test_no_token_anywhere_in_the_manifests():
    for path in KUBERAY.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            text = json.dumps(doc)
            assert not re.search(r"\b[0-9a-f]{32,}\b", text), f"{path.name}: a token?"


def test_secret_is_a_template_with_a_placeholder():
    secret = _load(KUBERAY / "auth-secret.yaml")
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["metadata"]["name"] == SECRET
    for name in MANIFESTS:
        assert secret["metadata"]["namespace"] == _load(KUBERAY / name)["metadata"]["namespace"]
    assert set(secret["stringData"]) == {TOKEN_KEY}
    assert secret["stringData"][TOKEN_KEY].startswith("REPLACE-ME")
    text = (KUBERAY / "auth-secret.yaml").read_text()
    assert f"create secret generic {SECRET}" in text
    assert f"--from-literal={TOKEN_KEY}=" in text


# -- KubeRay: NetworkPolicy ------------------------------------------------------------------

def _policies() -> list[dict]:
    docs = list(yaml.safe_load_all((KUBERAY / "networkpolicy.yaml").read_text()))
    assert all((d["apiVersion"], d["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
               for d in docs)
    return docs


def _selecting(labels: dict[str, str]) -> list[dict]:
    return [p for p in _policies() if _matches(p["spec"]["podSelector"], labels)]


def _head_ports(name: str) -> dict[str, int]:
    (c,) = _cluster_spec(name)["headGroupSpec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in c["ports"]}


@pytest.mark.parametrize("name", MANIFESTS)
def test_network_policies_select_every_ray_pod(name):
    for group, labels in _pod_labels(name).items():
        selecting = _selecting(labels)
        if group == "submitter":  # a client: nothing connects to it
            assert not selecting
            continue
        assert len(selecting) == 1, group
        (policy,) = selecting
        assert policy["metadata"]["namespace"] == _load(KUBERAY / name)["metadata"]["namespace"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_head_ingress_only_from_the_cluster_submitter_operator_and_prometheus(name):
    labels = _pod_labels(name)
    (policy,) = _selecting(labels["head"])
    ports = _head_ports(name)
    metrics = {ports["metrics"], ports["raylign-metrics"]}
    ray_pods = [lab for g, lab in labels.items() if g != "submitter"]
    seen = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits everyone"
        opened = {p["port"] for p in rule.get("ports", [])}
        assert all(p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" not in peer:  # pods of this namespace
                if _matches(peer["podSelector"], labels["head"]):
                    # the cluster's own pods, all ports: they must all match, the submitter not
                    assert all(_matches(peer["podSelector"], lab) for lab in ray_pods)
                    assert "submitter" not in labels or not _matches(
                        peer["podSelector"], labels["submitter"])
                    assert not opened
                    seen.add("cluster")
                else:  # the RayJob's submitter: the Jobs API only
                    assert opened == {ports["dashboard"]} == {8265}
                    if "submitter" in labels:
                        assert _matches(peer["podSelector"], labels["submitter"])
                    seen.add("submitter")
                continue
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            if namespace == "monitoring":  # Prometheus: the metrics ports, nothing else
                assert "podSelector" not in peer and opened == metrics == {8080, 9464}
                seen.add("monitoring")
            else:  # the KubeRay operator polls the job status: its pods, the Jobs API only
                assert peer["podSelector"]["matchLabels"] == {
                    "app.kubernetes.io/name": "kuberay-operator"}
                assert opened == {8265}
                seen.add("operator")
    assert seen == {"cluster", "submitter", "operator", "monitoring"}


def test_worker_ingress_only_from_the_cluster_and_prometheus():
    for name in MANIFESTS:
        labels = _pod_labels(name)
        (policy,) = _selecting(labels["rollout"])
        assert _selecting(labels["learner"]) == [policy]
        assert not _matches(policy["spec"]["podSelector"], labels["head"])
        rules = policy["spec"]["ingress"]
        cluster = [r for r in rules if "ports" not in r]
        assert len(cluster) == 1 and len(cluster[0]["from"]) == 1
        assert all(_matches(cluster[0]["from"][0]["podSelector"], lab)
                   for g, lab in labels.items() if g != "submitter")
        (metrics,) = [r for r in rules if "ports" in r]
        assert metrics["from"] == [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}]
        assert len(rules) == 2


def test_monitoring_scrapes_only_ports_the_policies_open():
    docs = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "monitoring.yaml").read_text())}
    ports = _head_ports("raycluster.yaml")
    scraped = {ports[e["port"]] for e in docs["ServiceMonitor"]["spec"]["endpoints"]}
    assert scraped == {8080, 9464}
    assert {e["port"] for e in docs["PodMonitor"]["spec"]["podMetricsEndpoints"]} == {"metrics"}


# -- RayJob entrypoint through the submitter's shell -----------------------------------------

@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sh") is None,
                    reason="needs bash and sh")
def test_rayjob_entrypoint_survives_the_submitter_shell(tmp_path):
    """KubeRay (K8sJobMode) pastes the entrypoint unquoted into `bash -lc "... ray job submit
    ... -- <entrypoint> ; fi ; ..."`. It must reach `ray job submit` as one command run on the
    head, where $MY_POD_IP is the head's IP, and give a run config that loads."""
    entry = _load(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    stub = (f"#!{sys.executable}\nimport json, os, sys\n"
            f"open({str(log)!r}, 'a').write(json.dumps([os.path.basename(sys.argv[0])]"
            f" + sys.argv[1:]) + '\\n')\n"
            "sys.exit(sys.argv[1:3] == ['job', 'status'])  # not submitted yet\n")
    for tool in ("ray", "raylign"):
        (bin_dir / tool).write_text(stub)
        (bin_dir / tool).chmod(0o755)
    address = "http://raylign-train-x7k2p-head-svc.raylign.svc.cluster.local:8265"
    submitter = (f"if ! ray job status --address {address} raylign-train-abc >/dev/null 2>&1 ;"
                 f" then ray job submit --address {address} --no-wait --submission-id "
                 f"raylign-train-abc -- {entry.strip()} ; fi ; ray job logs --address "
                 f"{address} --follow raylign-train-abc")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("MY_POD_IP", None)  # the submitter pod has no such variable
    subprocess.run(["bash", "-c", submitter], env=env, check=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[:3] for c in calls] == [["ray", "job", "status"], ["ray", "job", "submit"],
                                      ["ray", "job", "logs"]], "raylign ran in the submitter"
    submit = calls[1]
    job_args = submit[submit.index("--") + 1:]
    # On the head: the Jobs API runs list2cmdline(args) with a shell, MY_POD_IP set.
    log.unlink()
    head_cmd = list2cmdline(job_args).replace("cd /app", f"cd {shlex.quote(str(tmp_path))}")
    subprocess.run(head_cmd, shell=True, check=True, timeout=60,
                   env={**env, "MY_POD_IP": "10.4.2.7"})
    ((tool, *args),) = [json.loads(line) for line in log.read_text().splitlines()]
    assert tool == "raylign" and args[:3] == ["train", "--config",
                                              "deploy/configs/cluster.yaml"]
    assert "metrics.host=10.4.2.7" in args
    cfg = load_config(ROOT / args[2], args[3:])
    assert (cfg.metrics.host, cfg.metrics.public, cfg.metrics.port) == ("10.4.2.7", True, 9464)


# -- cluster launcher ------------------------------------------------------------------------

def _start_commands(kind: str) -> list[str]:
    cmds = _load(LAUNCHER)[f"{kind}_start_ray_commands"]
    starts = [c for c in cmds if "ray start" in c]
    assert len(starts) == 1, cmds
    return starts


@pytest.mark.parametrize("kind", ["head", "worker"])
def test_launcher_starts_ray_with_token_auth(kind, tmp_path):
    (cmd,) = _start_commands(kind)
    before = cmd[:cmd.index("ray start")]
    assert "RAY_AUTH_MODE=token" in before and "RAY_AUTH_TOKEN_PATH=" in before
    # Run it with a stub `ray`: the variables must reach `ray start` itself.
    (tmp_path / "ray").write_text("#!/bin/sh\necho \"$RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH\"\n")
    (tmp_path / "ray").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "HOME": "/home/raylign",
           "RAY_HEAD_IP": "10.0.0.1"}
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["token", "/home/raylign/.ray/auth_token"], done


def test_launcher_ships_the_token_file_and_sets_the_mode_for_every_shell():
    cfg = _load(LAUNCHER)
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert "--env=RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert any("--dashboard-host=127.0.0.1" in c for c in _start_commands("head"))


# -- images ----------------------------------------------------------------------------------

def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, line
        assert not req.extras and req.marker is None, line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_constraints_pin_the_main_packages_exactly():
    pins = _constraints()
    assert set(pins) == MAIN_PACKAGES
    # Each pin satisfies pyproject.toml's range (else pip would refuse the image build).
    for dep in pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (dep, pins[name])
    declared = {canonicalize_name(Requirement(d).name)
                for d in pyproject()["project"]["dependencies"]}
    assert declared >= MAIN_PACKAGES


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_installs_with_the_constraints(kind):
    steps = instructions(DOCKERFILES[kind])
    installs = pip_installs(DOCKERFILES[kind])
    assert installs and all(
        any(a[i:i + 2] == ["-c", "docker/constraints.txt"] for i in range(len(a)))
        for a in installs), installs
    copies = [i for i, (w, a) in enumerate(steps)
              if w == "COPY" and shlex.split(a)[0] == "docker/constraints.txt"]
    first_pip = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "pip install" in a)
    assert copies and copies[0] < first_pip


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_base_image_pinned_to_an_exact_tag_with_the_digest_command(kind):
    text = DOCKERFILES[kind].read_text()
    (base,) = [a for w, a in instructions(DOCKERFILES[kind]) if w == "FROM"]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and ":latest" not in text
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"{base}: not an exact version tag"
    assert f"docker buildx imagetools inspect {base}" in text
    assert f"FROM {base}@sha256:" in text  # the comment shows where the digest goes


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_image_user_is_the_uid_the_pods_run_as(kind):
    steps = instructions(DOCKERFILES[kind])
    user = [a for w, a in steps if w == "USER"][-1]
    assert user == f"{IMAGE_UID}:{IMAGE_UID}"  # numeric: runAsNonRoot can verify it
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert f"useradd --create-home --uid {IMAGE_UID} raylign" in runs  # home: /home/raylign


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` re-includes."""
    import fnmatch

    verdict = False
    for p in patterns:
        negate = p.startswith("!")
        p = p.lstrip("!")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict


def test_build_context_has_the_constraints():
    """The root .dockerignore drops docker/ but lets docker/constraints.txt back in."""
    root = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
            if p.strip() and not p.startswith("#")]
    assert not _ignored(root, "docker/constraints.txt")
    assert _ignored(root, "docker/Dockerfile") and _ignored(root, ".venv")


# -- docs ------------------------------------------------------------------------------------

def test_security_section_names_what_it_describes():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    section = doc[doc.index("## Security"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    for path in ("deploy/kuberay/auth-secret.yaml", "deploy/kuberay/networkpolicy.yaml",
                 "docker/constraints.txt", "deploy/ray/cluster.yaml"):
        assert path in section and (ROOT / path).is_file(), path
    for port in ("8265", "6379", "10001", "8080", "9464"):
        assert f"| {port} |" in section, port
    for words in ("RAY_AUTH_MODE=token", "metrics.public: true", SECRET,
                  "docker buildx imagetools inspect", "TLS", "kuberay-system", "monitoring"):
        assert words in section, words
    for kind in DOCKERFILES:
        (base,) = [a for w, a in instructions(DOCKERFILES[kind]) if w == "FROM"]
        assert base in section, base


def test_the_variable_names_are_rays():
    """The installed Ray reads RAY_AUTH_MODE, and its own tokens are 32 random bytes in hex,
    as `openssl rand -hex 32` in auth-secret.yaml makes them."""
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert re.fullmatch(r"[0-9a-f]{64}", generate_new_authentication_token())
    assert "openssl rand -hex 32" in (KUBERAY / "auth-secret.yaml").read_text()
