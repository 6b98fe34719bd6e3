"""Prometheus metrics of a raylign run: one registry, the metric definitions, the exporter.

The driver owns one `Metrics` and calls its `record_*` / `set_*` methods with the figures that
the actors return; `serve()` exports them over HTTP (127.0.0.1 by default, port 0 = a free
port, logged). Every name starts `raylign_` and carries its unit (`_seconds`, `_bytes`,
`_total`, `_versions`, `_nats`); labels are only `worker`, `member`, `role`, `reason` and
`stage`, each with a bounded set of values (see `MAX_LABEL_VALUES`).

    m = Metrics()
    port = m.serve()                      # curl 127.0.0.1:<port>/metrics
    m.record_samples("rollout-0", samples=16, tokens=384)
    m.record_step(3, {"loss/policy": 0.1, "kl/ref": 0.4}, seconds=1.2, reset=False, skipped=False)
    m.stop()

Ray's own metrics (actors, object store, node CPU/GPU) are exported by every Ray node on its
metrics export port; deploy/prometheus/prometheus.yml scrapes both (docs/observability.md).
The metric table lives in docs/observability.md; the alert rules and the Grafana dashboard in
deploy/ name only metrics this module exports (tests/deploy checks it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

# Label values known in advance: their series exist (at 0) from the start, so rate() and
# increase() in the alert rules see the first event instead of a series that appears.
DROP_REASONS = ("stale", "nonfinite_reward", "too_long", "actor_failed", "duplicate",
                "skipped_step", "run_end")
STAGES = ("rollout", "reward", "train")
ROLES = ("rollout", "reward", "learner")
NONFINITE_STAGES = ("reward", "loss")
# Any other value is accepted until a label has this many; later ones fold into "other" (a
# typo or an id in a label must not grow the series count without bound).
MAX_LABEL_VALUES = 64

# record_step's stats keys -> the gauge each one sets (keys of StepStats / PPOTrainer.step).
STEP_STATS = {
    "loss/policy": "raylign_policy_loss",
    "loss/value": "raylign_value_loss",
    "policy/clipfrac": "raylign_policy_clip_ratio",
    "policy/approx_kl": "raylign_policy_approx_kl_nats",
    "policy/entropy": "raylign_policy_entropy_nats",
    "kl/ref": "raylign_kl_reference_nats",
    "kl/init_k1": "raylign_kl_init_k1_nats",
    "kl/coef": "raylign_kl_coefficient",
    "offpolicy/ratio_mean": "raylign_offpolicy_ratio_mean",
    "offpolicy/truncated_frac": "raylign_offpolicy_truncated_ratio",
    "offpolicy/kl_behaviour": "raylign_offpolicy_kl_behaviour_nats",
}

# Buckets: staleness in learner versions; step and broadcast times from ~10 ms (tiny world on
# a laptop) to minutes (a 7B learner).
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BROADCAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_WINDOW_S = 30.0  # samples/s and tokens/s gauges: events of the last this many seconds


class _Bounded:
    """Maps free-form label values onto a bounded set (known values + the first few others)."""

    def __init__(self, label: str, known: tuple[str, ...] = ()):
        self.label = label
        self.seen: set[str] = set(known)
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: object) -> str:
        v = str(value)
        with self._lock:
            if v in self.seen:
                return v
            if len(self.seen) < MAX_LABEL_VALUES:
                self.seen.add(v)
                return v
            if not self._warned:
                log.warning("metrics: label %s has %d values; %r and later ones count as "
                            "'other'", self.label, MAX_LABEL_VALUES, v)
                self._warned = True
            return "other"


class _Rate:
    """Events per second over the last `window` seconds, read at scrape time."""

    def __init__(self, window: float = RATE_WINDOW_S):
        self.window = window
        self.events: deque[tuple[float, float]] = deque()
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, n: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.events.append((now, n))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()

    def __call__(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            # Before a full window has passed, divide by the time so far (at least 1 s).
            span = min(self.window, max(now - self.started, 1.0))
            return sum(n for _, n in self.events) / span


class Metrics:
    """The run's metrics in their own `CollectorRegistry` (never prometheus-client's global)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server = None
        self._thread: threading.Thread | None = None
        self._worker = _Bounded("worker")
        self._member = _Bounded("member")
        self._role = _Bounded("role", ROLES)
        self._reason = _Bounded("reason", DROP_REASONS)
        self._stage = _Bounded("stage", STAGES)
        self._nonfinite_stage = _Bounded("stage", NONFINITE_STAGES)
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        # -- rollout: throughput per worker, drops by reason, queues, versions, staleness
        self.rollout_samples = counter(
            "raylign_rollout_samples_total", "Samples generated, per rollout worker", ("worker",))
        self.rollout_tokens = counter(
            "raylign_rollout_tokens_total", "Completion tokens generated, per rollout worker",
            ("worker",))
        self.samples_per_second = gauge(
            "raylign_rollout_samples_per_second",
            f"Samples generated per second over the last {RATE_WINDOW_S:.0f} s, all workers")
        self.tokens_per_second = gauge(
            "raylign_rollout_tokens_per_second",
            f"Tokens generated per second over the last {RATE_WINDOW_S:.0f} s, all workers")
        self._sample_rate, self._token_rate = _Rate(), _Rate()
        self.samples_per_second.set_function(self._sample_rate)
        self.tokens_per_second.set_function(self._token_rate)
        self.dropped = counter(
            "raylign_samples_dropped_total", "Samples dropped (never trained on), by reason",
            ("reason",))
        self.trained = counter("raylign_samples_trained_total", "Samples trained on")
        self.queue_depth = gauge(
            "raylign_queue_depth", "Items waiting or in flight, per pipeline stage", ("stage",))
        self.learner_version = gauge(
            "raylign_learner_policy_version", "Policy version the learner has published")
        self.worker_version = gauge(
            "raylign_worker_policy_version", "Policy version a rollout worker has loaded",
            ("worker",))
        self.max_staleness = gauge(
            "raylign_max_staleness_versions",
            "The run's staleness bound (rollout.max_staleness); NaN until the driver sets it")
        self.max_staleness.set(math.nan)
        self.staleness = Histogram(
            "raylign_sample_staleness_versions",
            "Learner version minus the sample's policy version, per sample",
            buckets=STALENESS_BUCKETS, registry=r)

        # -- reward ensemble
        self.reward_member = gauge(
            "raylign_reward_member_mean", "Mean proxy reward of the last batch, per member",
            ("member",))
        self.reward_combined = gauge(
            "raylign_reward_combined_mean", "Mean aggregated (trained-on) reward, last batch")
        self.reward_gold = gauge(
            "raylign_reward_gold_mean", "Mean gold (oracle) reward of the last batch")
        self.reward_gap = gauge(
            "raylign_reward_proxy_gold_gap",
            "Combined proxy mean minus gold mean, last batch (rising = overoptimisation)")
        self.disagreement = gauge(
            "raylign_reward_disagreement_std",
            "Mean over samples of the std of the member scores, last batch")
        self.overopt_score = gauge(
            "raylign_overoptimisation_score",
            "Over-optimisation alarm score: smoothed member disagreement / its floor - 1")
        self.overopt_state = gauge(
            "raylign_overoptimisation_state",
            "Over-optimisation alarm state: 0 ok, 1 warning, 2 alarm (latched)")
        self.nonfinite = counter(
            "raylign_nonfinite_total", "NaN/inf values met (and quarantined), by stage",
            ("stage",))

        # -- learner
        self.steps = counter("raylign_learner_steps_total", "Learner steps taken")
        self.skipped = counter(
            "raylign_learner_skipped_steps_total", "Learner steps skipped (non-finite loss)")
        self.resets = counter("raylign_elastic_resets_total", "Elastic Resets (online <- EMA)")
        self.step_number = gauge("raylign_learner_step", "Last learner step number")
        self.step_seconds = Histogram(
            "raylign_learner_step_seconds", "Learner step wall time", buckets=STEP_BUCKETS,
            registry=r)
        self.last_step_seconds = gauge(
            "raylign_learner_last_step_seconds", "Wall time of the last learner step")
        self.last_step_time = gauge(
            "raylign_learner_last_step_timestamp_seconds", "Unix time of the last learner step")
        self.step_stats = {key: gauge(name, f"Last learner step's {key}")
                           for key, name in STEP_STATS.items()}

        # -- weight broadcast
        self.broadcast_seconds = Histogram(
            "raylign_weight_broadcast_seconds", "Time until every rollout worker holds a version",
            buckets=BROADCAST_BUCKETS, registry=r)
        self.broadcast_bytes = counter(
            "raylign_weight_broadcast_bytes_total", "Bytes of weight snapshots published")
        self.last_broadcast_bytes = gauge(
            "raylign_weight_broadcast_last_bytes", "Size of the last weight snapshot")
        self.broadcast_version = gauge(
            "raylign_weight_broadcast_version", "Policy version of the last broadcast")

        # -- actors
        self.live_actors = gauge("raylign_live_actors", "Live actors, per role", ("role",))
        self.desired_actors = gauge(
            "raylign_desired_actors", "Actors the controller wants, per role", ("role",))
        self.restarts = counter("raylign_actor_restarts_total", "Actor restarts, per role",
                                ("role",))
        self.replacements = counter(
            "raylign_actor_replacements_total",
            "Actors killed and replaced by new ones, per role and reason (timeout: a call "
            "past its deadline; failures: too many failed calls in a row)", ("role", "reason"))
        self.actor_cpu = counter("raylign_actor_cpu_seconds_total",
                                 "CPU seconds used by the actors of a role (their processes)",
                                 ("role",))
        self._cpu_seen: dict[str, float] = {}  # actor -> its last reported CPU seconds
        self.cpu_by_role: dict[str, float] = {}  # role -> CPU seconds counted so far
        self.checkpoint_failures = counter(
            "raylign_checkpoint_failures_total", "Periodic checkpoints that failed (disk, I/O)")

        # The driver process itself (memory, CPU, fds) as raylign_process_*.
        ProcessCollector(namespace="raylign", registry=r)

        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for stage in STAGES:
            self.queue_depth.labels(stage)
        for stage in NONFINITE_STAGES:
            self.nonfinite.labels(stage)
        for role in ROLES:
            self.live_actors.labels(role)
            self.restarts.labels(role)
            self.actor_cpu.labels(role)

    # -- exporter ---------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the HTTP exporter thread on host:port (0 = a free port); return the port."""
        if self._server is not None:
            return self._server.server_port
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_port
        log.info("metrics: serving http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        """Shut the exporter down (no-op when not serving)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_port

    # -- rollout ----------------------------------------------------------------------------

    def record_samples(self, worker: str, samples: int, tokens: int) -> None:
        w = self._worker(worker)
        self.rollout_samples.labels(w).inc(samples)
        self.rollout_tokens.labels(w).inc(tokens)
        self._sample_rate.add(samples)
        self._token_rate.add(tokens)

    def sample_rate(self) -> float:
        """What the `raylign_rollout_samples_per_second` gauge reads now."""
        return self._sample_rate()

    def record_dropped(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped.labels(self._reason(reason)).inc(n)

    def record_trained(self, n: int) -> None:
        self.trained.inc(n)

    def set_queue_depth(self, stage: str, depth: int) -> None:
        self.queue_depth.labels(self._stage(stage)).set(depth)

    def set_policy_version(self, role_or_worker: str, version: int) -> None:
        """`"learner"` sets the published version; any other name is a rollout worker's."""
        if role_or_worker == "learner":
            self.learner_version.set(version)
        else:
            self.worker_version.labels(self._worker(role_or_worker)).set(version)

    def forget_worker(self, worker: str) -> None:
        """Drop a removed worker's version series (scaled down), so lag alerts ignore it."""
        with contextlib.suppress(KeyError):
            self.worker_version.remove(str(worker))

    def set_max_staleness(self, bound: int) -> None:
        """The run's staleness bound, for the lag alert (optional; NaN = never fires)."""
        self.max_staleness.set(bound)

    def observe_staleness(self, values: list[int]) -> None:
        for v in values:
            self.staleness.observe(v)

    # -- rewards ----------------------------------------------------------------------------

    def record_rewards(self, member_means: list[float], combined: float, gold: float | None,
                       disagreement: float) -> None:
        """Per-member mean, combined mean, gold mean (None = no gold scorer), mean member std."""
        for k, mean in enumerate(member_means):
            self.reward_member.labels(self._member(k)).set(mean)
        self.reward_combined.set(combined)
        if gold is not None:
            self.reward_gold.set(gold)
            self.reward_gap.set(combined - gold)
        self.disagreement.set(disagreement)

    def record_alarm(self, score: float, state: int) -> None:
        """The over-optimisation alarm after a step: its score and state (0, 1, 2)."""
        self.overopt_score.set(score)
        self.overopt_state.set(state)

    def record_nonfinite(self, where: str, n: int = 1) -> None:
        """Count NaN/inf values met at `where` (reward, loss, ...)."""
        self.nonfinite.labels(self._nonfinite_stage(where)).inc(n)

    def record_checkpoint_failure(self) -> None:
        """A periodic checkpoint could not be written (the run carried on)."""
        self.checkpoint_failures.inc()

    # -- learner ----------------------------------------------------------------------------

    def record_step(self, step: int, stats: dict[str, float], seconds: float, reset: bool,
                    skipped: bool) -> None:
        """One learner step. Stats of a skipped step, and non-finite values, leave the gauges
        at their last finite value (NaNs are counted by record_nonfinite)."""
        self.steps.inc()
        self.step_number.set(step)
        self.step_seconds.observe(seconds)
        self.last_step_seconds.set(seconds)
        self.last_step_time.set(time.time())
        if reset:
            self.resets.inc()
        if skipped:
            self.skipped.inc()
            return
        for key, value in stats.items():
            g = self.step_stats.get(key)
            if g is not None and math.isfinite(value):
                g.set(value)

    def record_broadcast(self, seconds: float, nbytes: int, version: int) -> None:
        self.broadcast_seconds.observe(seconds)
        self.broadcast_bytes.inc(nbytes)
        self.last_broadcast_bytes.set(nbytes)
        self.broadcast_version.set(version)

    # -- actors -----------------------------------------------------------------------------

    def set_live_actors(self, role: str, n: int) -> None:
        self.live_actors.labels(self._role(role)).set(n)

    def set_desired_actors(self, role: str, n: int) -> None:
        """Replicas the controller wants (optional; the workers-down alert compares to it)."""
        self.desired_actors.labels(self._role(role)).set(n)

    def record_restart(self, role: str) -> None:
        self.restarts.labels(self._role(role)).inc()

    def record_replacement(self, role: str, reason: str) -> None:
        self.replacements.labels(self._role(role), reason).inc()

    def record_actor_cpu(self, role: str, actor: str, cpu_s: float) -> None:
        """An actor's process CPU time so far: the role's counter grows by what it used since
        its last report (all of it after a restart, when the process's time starts again)."""
        last = self._cpu_seen.get(actor, 0.0)
        used = cpu_s - last if cpu_s >= last else cpu_s
        self.actor_cpu.labels(self._role(role)).inc(used)
        self.cpu_by_role[role] = self.cpu_by_role.get(role, 0.0) + used
        self._cpu_seen[actor] = cpu_s

    # -- introspection ----------------------------------------------------------------------

    def exported_names(self) -> set[str]:
        """Every metric family name and every sample name the registry exports (e.g.
        `raylign_x` and `raylign_x_total`, `raylign_y_bucket`), including those of labelled
        families with no series yet."""
        names = self.series_names()
        names.update(family.name for family in self.registry.collect())
        return names

    def series_names(self) -> set[str]:
        """The names Prometheus stores series under (what a PromQL query can name): counter
        `_total`, histogram `_bucket`/`_sum`/`_count`, gauges as they are."""
        suffixes = {"counter": ("_total", "_created"),
                    "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("", "_sum", "_count", "_created"),
                    "gauge": ("",), "unknown": ("",), "info": ("_info",)}
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ()))
            names.update(s.name for s in family.samples)
        return names

    def label_names(self) -> dict[str, set[str]]:
        """Sample name -> the label names its series carry (for the dashboard/rules check)."""
        out: dict[str, set[str]] = {}
        for family in self.registry.collect():
            for s in family.samples:
                out.setdefault(s.name, set()).update(s.labels)
        return out
