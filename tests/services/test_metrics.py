"""services/prometheus_metrics.py: the exporter over real HTTP on 127.0.0.1, as Prometheus text."""

from __future__ import annotations

import math
import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.prometheus_metrics import DROP_REASONS, MAX_LABEL_VALUES, STEP_STATS, Metrics


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics -> {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def served():
    m = Metrics()
    port = m.serve()
    yield m, port
    m.stop()


def test_serve_on_loopback_free_port_and_stop():
    m = Metrics()
    port = m.serve()
    assert port > 0 and m.port == port
    assert m.serve() == port  # idempotent
    assert scrape(port)
    m.stop()
    m.stop()  # no-op
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nothing listens
        s.connect(("127.0.0.1", port))


def test_own_registry_not_global():
    m = Metrics()
    assert m.registry is not REGISTRY
    assert not any(n.startswith("raylign_") for n in REGISTRY._names_to_collectors)
    Metrics()  # a second instance does not clash (each has its own registry)
    reg = CollectorRegistry()
    assert Metrics(reg).registry is reg


def test_values_over_http(served):
    m, port = served
    m.record_samples("rollout-0", 16, 200)
    m.record_samples("rollout-0", 16, 100)
    m.record_samples("rollout-1", 8, 50)
    m.record_dropped("stale", 2)
    m.record_dropped("actor_failed")
    m.record_trained(30)
    m.set_queue_depth("rollout", 4)
    m.set_policy_version("learner", 7)
    m.set_policy_version("rollout-1", 6)
    m.observe_staleness([0, 1, 1, 5])
    m.record_rewards([0.1, 0.4], combined=0.25, gold=0.05, disagreement=0.15)
    m.record_step(7, {"loss/policy": 0.5, "kl/ref": 2.0, "kl/coef": 0.05, "unknown/key": 9.0},
                  seconds=1.5, reset=True, skipped=False)
    m.record_broadcast(0.02, 1000, 7)
    m.record_broadcast(0.04, 3000, 8)
    m.set_live_actors("rollout", 2)
    m.record_restart("reward")
    m.record_nonfinite("reward", 3)
    got = scrape(port)

    assert got[("raylign_rollout_samples_total", (("worker", "rollout-0"),))] == 32
    assert got[("raylign_rollout_tokens_total", (("worker", "rollout-0"),))] == 300
    assert got[("raylign_samples_dropped_total", (("reason", "stale"),))] == 2
    assert got[("raylign_samples_dropped_total", (("reason", "actor_failed"),))] == 1
    assert got[("raylign_samples_dropped_total", (("reason", "duplicate"),))] == 0  # pre-made
    assert got[("raylign_samples_trained_total", ())] == 30
    assert got[("raylign_queue_depth", (("stage", "rollout"),))] == 4
    assert got[("raylign_learner_policy_version", ())] == 7
    assert got[("raylign_worker_policy_version", (("worker", "rollout-1"),))] == 6
    assert got[("raylign_sample_staleness_versions_count", ())] == 4
    assert got[("raylign_sample_staleness_versions_sum", ())] == 7
    assert got[("raylign_sample_staleness_versions_bucket", (("le", "1.0"),))] == 3
    assert got[("raylign_reward_member_mean", (("member", "1"),))] == 0.4
    assert got[("raylign_reward_combined_mean", ())] == 0.25
    assert got[("raylign_reward_proxy_gold_gap", ())] == pytest.approx(0.2)
    assert got[("raylign_reward_disagreement_std", ())] == 0.15
    assert got[("raylign_policy_loss", ())] == 0.5
    assert got[("raylign_kl_reference_nats", ())] == 2.0
    assert got[("raylign_kl_coefficient", ())] == 0.05
    assert got[("raylign_learner_step", ())] == 7
    assert got[("raylign_learner_last_step_seconds", ())] == 1.5
    assert got[("raylign_learner_step_seconds_count", ())] == 1
    assert got[("raylign_elastic_resets_total", ())] == 1
    assert got[("raylign_weight_broadcast_bytes_total", ())] == 4000
    assert got[("raylign_weight_broadcast_last_bytes", ())] == 3000
    assert got[("raylign_weight_broadcast_version", ())] == 8
    assert got[("raylign_weight_broadcast_seconds_count", ())] == 2
    assert got[("raylign_live_actors", (("role", "rollout"),))] == 2
    assert got[("raylign_actor_restarts_total", (("role", "reward"),))] == 1
    assert got[("raylign_nonfinite_total", (("stage", "reward"),))] == 3
    assert got[("raylign_rollout_samples_per_second", ())] > 0
    assert got[("raylign_process_resident_memory_bytes", ())] > 0
    assert math.isnan(got[("raylign_max_staleness_versions", ())])  # unset = alert never fires
    assert not any("unknown" in name for name, _ in got)


def test_skipped_step_and_nonfinite_stats_keep_last_gauges(served):
    m, port = served
    m.record_step(1, {"loss/policy": 0.5, "kl/ref": 1.0}, 0.1, reset=False, skipped=False)
    m.record_step(2, {"loss/policy": float("nan")}, 0.1, reset=False, skipped=True)
    m.record_step(3, {"kl/ref": float("inf")}, 0.1, reset=False, skipped=False)
    got = scrape(port)
    assert got[("raylign_policy_loss", ())] == 0.5
    assert got[("raylign_kl_reference_nats", ())] == 1.0
    assert got[("raylign_learner_skipped_steps_total", ())] == 1
    assert got[("raylign_learner_steps_total", ())] == 3
    assert got[("raylign_learner_step", ())] == 3


def test_gold_none_leaves_gold_unset(served):
    m, port = served
    m.record_rewards([0.2], combined=0.2, gold=None, disagreement=0.0)
    got = scrape(port)
    assert got[("raylign_reward_gold_mean", ())] == 0
    assert got[("raylign_reward_proxy_gold_gap", ())] == 0


def test_forget_worker(served):
    m, port = served
    m.set_policy_version("rollout-3", 2)
    m.forget_worker("rollout-3")
    m.forget_worker("never-seen")
    assert not [k for k in scrape(port) if k[0] == "raylign_worker_policy_version"]


def test_label_values_are_bounded(served):
    m, port = served
    for i in range(MAX_LABEL_VALUES + 10):
        m.record_samples(f"w{i}", 1, 1)
        m.record_dropped(f"reason-{i}")
    got = scrape(port)
    workers = {dict(k[1])["worker"] for k in got if k[0] == "raylign_rollout_samples_total"}
    assert len(workers) == MAX_LABEL_VALUES + 1 and "other" in workers
    assert got[("raylign_rollout_samples_total", (("worker", "other"),))] == 10
    reasons = {dict(k[1])["reason"] for k in got if k[0] == "raylign_samples_dropped_total"}
    assert set(DROP_REASONS) <= reasons and len(reasons) == MAX_LABEL_VALUES + 1


def test_names_units_and_labels():
    m = Metrics()
    allowed = {"worker", "member", "role", "reason", "stage", "le"}
    for family in m.registry.collect():
        assert family.name.startswith("raylign_"), family.name
        for s in family.samples:
            assert set(s.labels) <= allowed, (s.name, s.labels)
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_versions")), family.name
    names = m.exported_names()
    assert {"raylign_rollout_samples_total", "raylign_learner_step_seconds_bucket",
            "raylign_learner_step_seconds_sum", "raylign_learner_step_seconds_count",
            "raylign_weight_broadcast_bytes_total", "raylign_rollout_samples_per_second",
            "raylign_elastic_resets_total", "raylign_learner_skipped_steps_total",
            "raylign_kl_reference_nats", "raylign_reward_proxy_gold_gap"} <= names
    assert {"raylign_reward_member_mean", "raylign_worker_policy_version"} <= names  # no series
    assert set(STEP_STATS.values()) <= names
    # series_names: only what a query can name (no bare counter/histogram family names).
    assert "raylign_elastic_resets" not in m.series_names()
    assert "raylign_elastic_resets" in names


def test_actor_cpu_counts_what_each_process_used_across_restarts():
    m = Metrics()
    m.record_actor_cpu("rollout", "rollout-0", 1.0)
    m.record_actor_cpu("rollout", "rollout-0", 3.0)  # +2
    m.record_actor_cpu("rollout", "rollout-1", 0.5)  # +0.5, another worker
    m.record_actor_cpu("rollout", "rollout-0", 0.25)  # restarted: its new process used 0.25
    m.record_actor_cpu("learner", "learner", 4.0)
    value = m.registry.get_sample_value
    assert value("raylign_actor_cpu_seconds_total", {"role": "rollout"}) == 3.75
    assert value("raylign_actor_cpu_seconds_total", {"role": "learner"}) == 4.0
    assert value("raylign_actor_cpu_seconds_total", {"role": "reward"}) == 0.0
