"""docs/observability.md and docs/deploy.md stay in step with the exporter and the manifests."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.prometheus_metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def test_metric_table_lists_every_metric():
    doc = (ROOT / "docs" / "observability.md").read_text()
    missing = []
    for family in Metrics().registry.collect():
        if family.name.startswith("raylign_process_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        if f"| `{name}` |" not in doc:
            missing.append(name)
    assert not missing, f"not in the metric table of docs/observability.md: {missing}"


def test_alerts_documented():
    doc = (ROOT / "docs" / "observability.md").read_text()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    missing = [r["alert"] for g in rules["groups"] for r in g["rules"]
               if f"`{r['alert']}`" not in doc]
    assert not missing


def test_deploy_doc_names_files_that_exist():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in ("deploy/configs/tiny.yaml", "deploy/configs/cluster.yaml",
                 "deploy/ray/cluster.yaml", "deploy/kuberay/raycluster.yaml",
                 "deploy/kuberay/rayjob.yaml", "deploy/kuberay/monitoring.yaml",
                 "deploy/prometheus/prometheus.yml", "deploy/grafana/raylign.json",
                 "docker/Dockerfile", "docker/Dockerfile.gpu"):
        assert path in doc and (ROOT / path).is_file(), path
    assert "ray start --head --node-ip-address=127.0.0.1" in doc
    assert "RAY_AUTH_MODE=token" in doc and "raylign scale --rollout" in doc
