"""promtool on deploy/prometheus: the scrape config, the alert rules and their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy._prom import binary

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_check_config():
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_rules():
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 rules found" in done.stdout


def test_rule_unit_tests():
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_case():
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    cases = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    fired = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert alerts - fired == set(), "alerts without a firing case in alerts_test.yml"
    assert {"RaylignLearnerStalled", "RaylignRolloutWorkersDown", "RaylignStalenessOverBound",
            "RaylignNonfiniteRewards", "RaylignKLExploding",
            "RaylignOverOptimisationWarning", "RaylignOverOptimisationAlarm"} <= alerts


def test_rule_tests_can_fail(tmp_path):
    """A wrong expectation makes `promtool test rules` fail (the check above is not vacuous)."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM_DIR / name, tmp_path / name)
    rules = (tmp_path / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(
        rules.replace("raylign_kl_reference_nats > 20", "raylign_kl_reference_nats > 200"))
    done = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert "RaylignKLExploding" in done.stdout + done.stderr
