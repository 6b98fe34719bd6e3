"""Every metric that the Grafana dashboard and the alert rules name is one the exporter exports.

A small PromQL tokenizer pulls metric names out of each expression: identifiers that are not
followed by `(` (functions), not keywords (by, without, on, offset, and, ...), not inside
strings, `{label matchers}`, `[ranges]` or `by (...)` label lists. It also checks that label
names used in matchers are labels of that metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services.prometheus_metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "raylign.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan", "atan2"}
# Series that Prometheus itself makes for every target (not the exporter's).
PROMETHEUS_SERIES = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set()}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _clean(expr: str) -> str:
    expr = _GRAFANA_VAR.sub("1m", _STRING.sub('""', expr))
    return re.sub(r"#[^\n]*", " ", expr)  # comments


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression."""
    s = _clean(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range / subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?(ms|s|m|h|d|w|y)?\b", " ", s)  # numbers, durations
    names = set()
    for m in re.finditer(_IDENT, s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def matcher_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its {matchers}) for each `metric{...}` selector."""
    s = _clean(expr)
    out = []
    for m in re.finditer(rf"({_IDENT})\s*\{{([^}}]*)\}}", s):
        labels = set(re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), labels))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel '{p['title']}'", t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation '{a['name']}'", a["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q or "")
        if m:  # label_values(selector, label): the selector is PromQL, the label is not
            out.append((f"variable '{var['name']}'", m.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(f"rule '{r.get('alert') or r.get('record')}'", r["expr"])
            for g in rules["groups"] for r in g["rules"]]


def _exercised() -> Metrics:
    """A Metrics with one sample of everything recorded (so every labelled series exists)."""
    m = Metrics()
    m.record_samples("rollout-0", 8, 100)
    m.record_dropped("stale", 2)
    m.record_trained(6)
    m.set_queue_depth("reward", 3)
    m.set_policy_version("learner", 2)
    m.set_policy_version("rollout-0", 1)
    m.set_max_staleness(1)
    m.observe_staleness([0, 1, 1])
    m.record_rewards([0.1, 0.3], 0.2, 0.15, 0.1)
    m.record_step(2, {"loss/policy": 0.1, "loss/value": 0.2, "policy/clipfrac": 0.05,
                      "policy/approx_kl": 0.01, "policy/entropy": 2.0, "kl/ref": 0.4,
                      "kl/init_k1": 0.5, "kl/coef": 0.05}, 0.5, reset=True, skipped=False)
    m.record_broadcast(0.02, 1 << 20, 2)
    m.set_live_actors("rollout", 2)
    m.set_desired_actors("rollout", 2)
    m.record_restart("rollout")
    m.record_nonfinite("reward")
    return m


@pytest.fixture(scope="module")
def exported() -> tuple[set[str], dict[str, set[str]]]:
    m = _exercised()
    return m.series_names(), m.label_names()


def test_tokenizer():
    expr = ('histogram_quantile(0.95, sum by (le) (rate(raylign_a_bucket{job=~"$job", '
            'le!="x"}[$__rate_interval]))) / on(instance) group_left(worker) raylign_b offset 5m'
            ' > bool 1e3 and ignoring (x) raylign_c{role="learner"} unless sum(raylign_d) '
            'without (member)')
    assert metric_names(expr) == {"raylign_a_bucket", "raylign_b", "raylign_c", "raylign_d"}
    assert matcher_labels(expr) == [("raylign_a_bucket", {"job", "le"}),
                                    ("raylign_c", {"role"})]
    assert metric_names("raylign_x > 20 or delta(raylign_y[10m]) > 10") == {"raylign_x",
                                                                            "raylign_y"}


def test_exprs_found():
    dash, rules = dashboard_exprs(), rule_exprs()
    assert len(dash) >= 30 and len(rules) == 11
    for where, expr in dash + rules:
        assert metric_names(expr), f"{where}: no metric in {expr!r}"


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_named_metrics_are_exported(source, exported):
    names, labels = exported
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    bad = []
    for where, expr in exprs:
        for name in metric_names(expr):
            if name not in names and name not in PROMETHEUS_SERIES:
                bad.append(f"{where}: {name} is not exported")
        for name, used in matcher_labels(expr):
            known = labels.get(name, PROMETHEUS_SERIES.get(name, set())) | TARGET_LABELS
            if used - known:
                bad.append(f"{where}: {name} has no label(s) {sorted(used - known)}")
    assert not bad, "\n".join(bad)


def test_check_catches_an_unknown_metric(exported):
    names, _ = exported
    expr = "rate(raylign_rollout_samples_total[5m]) / raylign_no_such_metric_seconds"
    assert metric_names(expr) - names == {"raylign_no_such_metric_seconds"}


def test_dashboard_shows_every_metric(exported):
    """Each raylign family (but the process_* ones) appears on some dashboard panel."""
    named = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    m = Metrics()
    missing = []
    for family in m.registry.collect():
        if family.name.startswith("raylign_process_"):
            continue
        if not any(n == family.name or n.startswith(family.name + "_") for n in named):
            missing.append(family.name)
    assert not missing, f"not on the dashboard: {missing}"


def test_dashboard_panels_have_unique_ids_and_datasource():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "raylign"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]


def test_dashboard_json_is_generated():
    """raylign.json is what make_dashboard.py writes (edit the script, then run it)."""
    import runpy

    build = runpy.run_path(str(DASHBOARD.with_name("make_dashboard.py")))["build"]
    assert json.loads(DASHBOARD.read_text()) == build(), \
        "run: python deploy/grafana/make_dashboard.py"
