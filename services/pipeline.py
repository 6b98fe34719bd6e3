"""The driver: one loop from prompts to published weights (docs/design.md section 1).

    prompts -> RolloutWorker x N -> RewardPool (K members) -> Learner -> weights v+1 -> workers

One prompt's path, in the order of `Driver.run`'s phases:
  1. `_fill_rollouts`: the prompt id is issued (ledger: pending) in a batch to the least-loaded
     worker, if it can still be trained within the staleness bound (`admission.issue_room`);
  2. `_on_generated`: its samples (a group of `rollout.sampling.n`) go by reference to the
     reward pool, one call per batch;
  3. `_on_scored`: the scored group joins the train buffer (or is dropped whole: quarantined,
     stale, a late duplicate of re-issued work; too long prompts are dropped at step 1);
  4. `_start_step`: the groups of the lowest fresh prompt ids make a `TrainBatch`;
  5. `_on_learner_step`: the ledger marks them trained, and the new weights ref reaches every
     worker (one `ray.put` by the learner, N readers).
Each of these moves the prompt id along `PromptFlow` (services/flow.py), which checks the
ledger's invariant at every transition: a worker that fails hands its prompts back (requeue);
the ledger counts every id exactly once.

Faults (deadlines, replacements, a learner restored from its checkpoint) and checkpoints are
the driver's `Recovery` methods, in services/recovery.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayError
from tqdm import tqdm

from actors.fleet import ActorGroup, Member
from actors.records import Prompt, ScoredSample, StepStats, TrainBatch
from actors.reward import RewardFunctionError
from services import admission
from services.alarm import STATES, Alarm
from services.broadcast import Broadcast
from services.checkpoint import DriverState, write_recommended
from services.fleet import Fleet, signals_to
from services.flow import SCORING, PromptFlow
from services.health import Health
from services.prometheus_metrics import Metrics
from services.recovery import Recovery
from services.step_log import StepLog, disagreement


@dataclass
class Gen:  # a generate call in flight
    worker: Member
    prompts: list[Prompt]
    started: float = field(default_factory=time.monotonic)


class Driver(Recovery):
    def __init__(self, fleet: Fleet, run_dir: Path, metrics: Metrics) -> None:
        self.cfg, self.task, self.run_dir, self.metrics = fleet.cfg, fleet.task, run_dir, metrics
        self.storage = self.cfg.storage  # where checkpoints go (RUN_DIR, or a URI)
        self.deadlines = self.cfg.deadlines
        self.controller = fleet.controller
        self.desired: dict[str, int] = {}  # the controller's counts, as last read
        self.controller_pid: int | None = None
        self.learners: ActorGroup = fleet.learners()
        self.weights = Broadcast(self.cfg.broadcast.keep_versions, metrics,
                                 self.deadlines.publish_s)
        self.rollout: ActorGroup = fleet.rollout(on_start=self.weights.send_to)
        self.rewards = fleet.rewards(on_failure=lambda m, e: self.health.failed(m, "reward", e))
        self.heldout = fleet.heldout
        self.state = DriverState(alarm=Alarm(**self.cfg.alarm.params()))
        self.flow = PromptFlow()  # every prompt's stage, the ledger and the cursor
        self.gens: dict[ray.ObjectRef, Gen] = {}
        self.buffer: list[ScoredSample] = []  # scored, waiting for a learner step
        self.nonfinite_run = 0  # samples in a row whose rewards were all non-finite
        self.step: tuple[ray.ObjectRef, TrainBatch] | None = None  # the learner step running
        self.step_started = 0.0
        self.health = Health(
            lambda: ([(self.learners, "learner"), (self.rollout, "rollout")]
                     + [(g, "reward") for g in self.rewards.groups]),
            metrics, self.cfg.checkpoint.max_actor_failures, self._replace, self._on_restart)
        self.health.restarts = self.state.restarts
        self.stop_requested = False  # raylign stop, a signal: an interrupted run
        self.alarm_stop = False  # alarm.action stop: the run ends (not interrupted)
        self.t_start = time.perf_counter()
        metrics.set_max_staleness(self.cfg.rollout.max_staleness)

    @property
    def learner_member(self) -> Member:
        return self.learners.active()[0]

    @property
    def learner(self) -> ray.actor.ActorHandle:
        return self.learner_member.handle

    # -- the loop -------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        if resume:
            self._restore()
        self.weights.base = self._get(self.learner.publish_base.remote())  # LoRA, else None
        self._reconcile()  # start the fleet (workers get the base, if any)
        self._publish(*self._get(self.learner.publish.remote()))  # the version it starts at
        self.report = StepLog(self.metrics, self.run_dir, self.cfg.learner.steps,
                               self.state.steps)
        with signals_to(self):
            while (self.state.steps < self.cfg.learner.steps
                   and not (self.stop_requested or self.alarm_stop)):
                with self.report.phase("reconcile"):
                    self._reconcile()  # 1. fleet size = the controller's desired counts
                with self.report.phase("issue"):
                    self._fill_rollouts()  # 2. keep workers busy within the staleness bound
                    self.rewards.pump()  # batches whose member was restarting
                    self.health.probe()  # notice actors Ray restarted, busy or idle
                with self.report.phase("wait"):
                    ready = self._wait()
                for ref in ready:  # 3. route whatever finished
                    self._route(ref)
                self._enforce_deadlines()  # replace actors whose calls hang
                self._start_step()  # 4. train when a full batch is buffered
                self._report_status()  # 5. gauges + controller status
            summary = self._finish()
        self.report.close()
        return summary

    def _route(self, ref: ray.ObjectRef) -> None:
        if ref in self.gens:
            self._on_generated(ref)
        elif ref in self.rewards.jobs:
            self._on_scored(ref)
        elif ref in self.health.probes:
            self.health.on_probe(ref)
        elif ref in self.weights.acks:
            member, error = self.weights.on_ack(ref)
            if error is not None:
                self.health.failed(member, "rollout", error)
        elif (self.step is not None and ref == self.step[0]
              and self._on_learner_step() is not None):  # None: the learner was restored
            self._maybe_checkpoint()

    # -- one prompt's path ----------------------------------------------------------------

    def _fill_rollouts(self) -> None:
        cfg, n = self.cfg, self.cfg.rollout.sampling.n
        now = time.monotonic()
        for worker in self.rollout.active():  # restarted by Ray: a fresh process, no weights
            if worker.needs_weights and worker.ready and worker.retry_at <= now:
                self.weights.send_to(worker)  # it gets prompts once it acknowledges them
                worker.needs_weights = False
        while True:
            room = admission.issue_room(  # in samples; a prompt makes a group of n
                samples_per_step=cfg.learner.samples_per_step,
                max_staleness=cfg.rollout.max_staleness,
                steps_left=cfg.learner.steps - self.state.steps,
                step_running=self.step is not None, ahead=self._ahead()) // n
            worker = self.rollout.pick(  # one holding a version within the staleness window
                cfg.rollout.max_inflight_per_worker,
                min_version=self.weights.version - cfg.rollout.max_staleness)
            capped = admission.generation_capped(cfg.rollout.max_generating_during_step,
                                                 self.step is not None, len(self.gens))
            if room <= 0 or worker is None or capped:
                return
            prompts = self._next_prompts(min(cfg.rollout.prompts_per_batch, room))
            worker.inflight += 1
            self.gens[worker.handle.generate.remote(prompts)] = Gen(worker, prompts)

    def _ahead(self) -> int:
        """Samples that will be trained before those of a prompt issued now."""
        prompts = (sum(len(g.prompts) for g in self.gens.values())
                   + sum(len(p) for p in self.rewards.in_flight()))
        return prompts * self.cfg.rollout.sampling.n + len(self.buffer)

    def _next_prompts(self, n: int) -> list[Prompt]:
        ids, too_long = self.flow.issue(n, self._too_long)  # requeued ids first
        for _ in too_long:
            self.metrics.record_dropped("too_long")
        return [(i, self.task.train.text(i)) for i in ids]

    def _too_long(self, prompt_id: int) -> bool:
        """Over task.max_prompt_tokens with truncate: drop (truncate: left cuts it instead)."""
        limit, tokens = self.task.max_prompt_tokens, self.task.train.tokens(prompt_id)
        return self.task.truncate == "drop" and None not in (limit, tokens) and tokens > limit

    def _on_generated(self, ref: ray.ObjectRef) -> None:
        gen = self.gens.pop(ref)
        gen.worker.inflight -= 1
        try:
            ray.get(ref)  # raises if the worker died mid-call (the samples stay in the store)
        except RayError as e:
            self.health.failed(gen.worker, "rollout", e)
            self.flow.requeue(p for p, _ in gen.prompts)
            return
        gen.worker.succeeded()
        self.flow.generated(p for p, _ in gen.prompts)
        labels = (None if self.task.train.labels is None else
                  {pid: self.task.train.label(pid) for pid, _ in gen.prompts})
        self.rewards.submit(gen.prompts, ref, labels)

    def _on_scored(self, ref: ray.ObjectRef) -> None:
        try:
            scored = self.rewards.collect(ref)
        except RewardFunctionError as e:  # a bug in the user's function: no retry fixes it
            self._stop(str(e), checkpoint=True)
        if scored is None:  # a member failed: the pool scores the batch again
            return
        every = scored.samples + scored.quarantined
        self.nonfinite_run = 0 if scored.samples else self.nonfinite_run + len(every)
        if self.nonfinite_run >= self.cfg.learner.samples_per_step:
            members = sorted({k for s in scored.quarantined
                              for k, x in enumerate(s.member_scores) if not math.isfinite(x)})
            self._stop(f"the last {self.nonfinite_run} samples all had non-finite rewards "
                       f"(NaN/inf; reward members {members}): nothing can be trained on them",
                       checkpoint=True)
        quarantined = {s.sample.prompt_id for s in scored.quarantined}
        self.metrics.record_nonfinite("reward", len(scored.quarantined))
        for pid, group in admission.groups(every):  # a prompt's group is kept or dropped whole
            if self.flow.at(pid) != SCORING:  # a late duplicate of work issued again
                self.metrics.record_dropped("duplicate")
            elif pid in quarantined:
                self._drop(pid, "nonfinite_reward")
            elif admission.is_stale(self.weights.version, group[0],
                                    self.cfg.rollout.max_staleness):
                self._drop(pid, "stale")
            else:
                self.flow.buffered([pid])
                self.buffer += group
        self.report.truncated += sum(s.sample.prompt_truncated for s in every)
        self.metrics.record_samples(every[0].sample.worker_id if every else "?", len(every),
                                    sum(len(s.sample.response_tokens) for s in every))

    def _start_step(self) -> None:
        n = self.cfg.learner.samples_per_step
        if self.step is not None or len(self.buffer) < n:
            return
        batch, self.buffer, stale = admission.take_batch(
            self.buffer, self.weights.version, self.cfg.rollout.max_staleness, n)
        for pid, _ in admission.groups(stale):  # buffered while newer versions were published
            self._drop(pid, "stale")
        if batch is not None:
            self.flow.batched(pid for pid, _ in admission.groups(batch))
            train = TrainBatch(batch, learner_version=self.weights.version)
            self.metrics.observe_staleness(train.staleness)
            self.step = (self.learner.step.remote(batch), train)
            self.step_started = time.monotonic()
            self.learner_member.inflight = 1  # a probe queued behind it is not idle

    def _on_learner_step(self) -> StepStats | None:
        """Close the step's prompts in the ledger, publish its weights, log its figures."""
        (ref, batch), self.step = self.step, None
        self.learner_member.inflight = 0
        try:
            stats, snap_ref, nbytes = ray.get(ref)
        except RayError as e:
            self._recover_learner(f"failed mid-step ({type(e).__name__})", count_restart=True)
            return None
        if stats.policy_version != self.weights.version + (0 if stats.skipped else 1):
            # Ray restarted the learner between steps: it began again from the initial
            # weights. Training on would silently reset the run.
            self._recover_learner(f"was restarted (its step made version "
                                  f"{stats.policy_version} after {self.weights.version})",
                                  count_restart=True)
            return None
        for pid, _ in admission.groups(batch.samples):
            if stats.skipped:
                self._drop(pid, "skipped_step")
            else:
                self.flow.trained([pid])
        extra = {"data/epoch": float(self.task.train.epoch(self.flow.cursor))}
        if not stats.skipped:
            self.metrics.record_trained(len(batch))
            with self.report.phase("broadcast"):
                self._publish(stats.policy_version, snap_ref, nbytes)
            self.state.steps = stats.step
            extra.update(self._watch(stats.step, batch))
            every = self.cfg.learner.eval_every
            if every and stats.step % every == 0:
                with self.report.phase("evaluate"):
                    extra.update(self.heldout.evaluate(self.learner, self._get))
        self.report.step(stats, batch, extra)
        return stats

    def _watch(self, step: int, batch: TrainBatch) -> dict[str, float]:
        """Fold the step into the over-optimisation alarm; when it fires, mark the checkpoint
        from before its score left ok as recommended (and with action stop, stop)."""
        alarm, action = self.state.alarm, self.cfg.alarm.action
        alarm.update(step, disagreement(batch.samples))
        self.metrics.record_alarm(alarm.score, alarm.state)
        if alarm.fired_at == step:
            tqdm.write(f"over-optimisation alarm at step {step} (score {alarm.score:.2f}, ok "
                       f"until step {alarm.last_ok}); alarm.action: {action}")
            if action != "none":
                self.state.recommended = self.state.candidate
                if self.state.recommended is None:
                    tqdm.write("no checkpoint from before the alarm to recommend")
                else:
                    write_recommended(self.storage, {
                        "step": self.state.recommended, "alarm_step": step,
                        "last_ok_step": alarm.last_ok, "score": alarm.score})
                    tqdm.write(f"recommended checkpoint: step {self.state.recommended}")
            self.alarm_stop = action == "stop"
        return alarm.figures()

    # -- the fleet: scaling, health (faults: services/recovery.py) --------------------------

    def _reconcile(self) -> None:
        try:
            desired, stop, pid = ray.get(self.controller.poll.remote(),
                                         timeout=self.deadlines.probe_s)
        except RayError as e:  # restarting (Ray retries its calls): keep the fleet as it is
            tqdm.write(f"the controller did not answer ({type(e).__name__}); retrying")
            desired, stop, pid = self.desired or {"rollout": len(self.rollout.active()),
                                                  "reward": self.rewards.replicas()}, False, None
        if pid is not None and self.controller_pid not in (None, pid) and self.desired:
            tqdm.write("the controller was restarted: handing it the desired counts")
            self.controller.restore.remote(self.desired, self.stop_requested)
            desired = self.desired
        self.desired, self.controller_pid = desired, pid or self.controller_pid
        if stop and not self.stop_requested:
            tqdm.write("stop requested (raylign stop): checkpointing, then stopping")
            self.stop_requested = True
        self.rollout.scale_to(desired["rollout"])
        self.rewards.scale_to(desired["reward"])
        for name in self.rollout.reap() + self.rewards.reap():
            self.metrics.forget_worker(name)
            tqdm.write(f"retired {name}")
        self.metrics.set_live_actors("rollout", sum(m.ready for m in self.rollout.active()))
        self.metrics.set_live_actors("reward", self.rewards.live())
        self.metrics.set_desired_actors("rollout", desired["rollout"])
        self.metrics.set_desired_actors("reward", desired["reward"] * len(self.rewards.groups))

    def _drop(self, prompt_id: int, reason: str) -> None:
        self.flow.drop(prompt_id, reason)
        self.metrics.record_dropped(reason)

    def _wait(self) -> list[ray.ObjectRef]:
        step = [self.step[0]] if self.step else []
        refs = [*self.gens, *self.rewards.jobs, *self.health.probes, *self.weights.acks, *step]
        if not refs:
            time.sleep(0.05)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        if ready:  # every ref that is ready, so none waits behind busier ones
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def _report_status(self) -> None:
        in_scoring = sum(len(p) for p in self.rewards.in_flight())
        self.metrics.set_queue_depth("rollout", sum(len(g.prompts) for g in self.gens.values()))
        self.metrics.set_queue_depth("reward", in_scoring)
        self.metrics.set_queue_depth("train", len(self.buffer))
        self.controller.report.remote({
            "version": self.weights.version, "steps": self.state.steps,
            "rollout_workers": sorted(self.rollout.members),
            "queues": {"rollout": len(self.gens), "reward": len(self.rewards.in_flight()),
                       "train": len(self.buffer)},
            "ledger": self.flow.ledger.counts(),
        })

    # -- the end ---------------------------------------------------------------------------

    def _finish(self) -> dict:
        interrupted = self.stop_requested
        learner_ok = self._drain_learner()
        # Let calls in flight finish (briefly), so actors are killed idle and the last
        # probes are counted. (No ray.cancel: in Ray 2.60, cancelling an actor task whose
        # argument is being inlined can crash the driver, ray-project/ray#56123.)
        in_flight = [*self.gens, *self.rewards.jobs, *self.health.probes]
        done, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=10)
        for ref in done:
            if ref in self.health.probes:
                self.health.on_probe(ref)
        if interrupted or not learner_ok:  # in flight stays pending in the checkpoint
            interrupted = True
            self.gens.clear()
            self.rewards.clear()
            self.buffer.clear()
            ckpt = self._final_checkpoint()
            counts = self.flow.ledger.check(allow_pending=True)
        else:
            for pid in self.flow.ledger.pending():
                self._drop(pid, "run_end")
            counts = self.flow.ledger.check()
            ckpt = self._checkpoint()
        summary = {"steps": self.state.steps, "interrupted": interrupted,
                   "checkpoint": str(ckpt), "ledger": counts, "restarts": self.state.restarts,
                   "replaced": self.state.replacements,
                   "alarm": {"state": STATES[self.state.alarm.state],
                             "fired_at": self.state.alarm.fired_at,
                             "recommended_step": self.state.recommended,
                             "stopped_run": self.alarm_stop},
                   "seconds": time.perf_counter() - self.t_start}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def shutdown(self) -> None:
        self.rollout.shutdown()
        self.rewards.shutdown()
        self.learners.shutdown()
        ray.kill(self.controller, no_restart=True)

