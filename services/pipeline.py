"""The driver: one loop from prompts to published weights (DESIGN.md section 1).

    prompts -> RolloutWorker x N -> RewardPool (K members) -> Learner -> weights v+1 -> workers

Each turn of `Driver.run` (1) reconciles the fleet with the controller, (2) keeps every rollout
worker busy within the staleness budget, (3) waits for whatever finished: a generated batch goes
to the reward pool, a scored batch to the train buffer, a learner step publishes its weights
ref to every worker, (4) starts a learner step when a full batch is buffered and the learner is
idle, (5) checkpoints and exports metrics. Weights travel only as object refs (one `ray.put` by
the learner, N readers); generated samples go worker -> reward members -> combine task by ref,
and only the small scored records come back to the driver (the ledger needs them).

Staleness: a sample made by version v is trained at learner version u only if u - v <=
max_staleness. The driver issues a prompt only if it will be trained within that bound, so
drops (reason `stale`) happen only after faults or scaling; they are counted, never silent.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayError
from tqdm import tqdm

from actors.engines import Prompt, Sampling
from actors.learner import LearnerActor
from actors.reward import RewardMember, combine_scores
from actors.rollout import RolloutWorker
from services.checkpoint import latest_valid, save_checkpoint
from services.config import Resources, RunConfig
from services.control import start_controller
from services.fleet import ActorGroup, Member
from services.ledger import Ledger
from services.metrics import Metrics
from services.records import ScoredSample, StepStats
from services.tasks.tiny_world import World, prepare


class RunFailed(RuntimeError):
    pass


def init_ray(cfg: RunConfig) -> bool:
    """Embedded Ray on 127.0.0.1 by default, or join `cluster.address`. True if we started it."""
    if ray.is_initialized():
        return False
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, namespace=cfg.cluster.namespace,
                 runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace,
                 _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)
    return True


PROBE_EVERY_S = 1.0  # health probes: how often each actor is asked for its pid


def _remote(cls, res: Resources, name: str, namespace: str):
    """Place one actor of a role with that role's resources; named, so ops can find it."""
    return ray.remote(cls).options(
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=res.resources or None,
        max_restarts=res.max_restarts, max_task_retries=0, name=name, namespace=namespace,
    )


@dataclass
class Gen:  # a generate call in flight
    worker: Member
    prompts: list[Prompt]
    version: int


@dataclass
class Score:  # a scoring of one generated batch in flight
    prompts: list[Prompt]
    samples_ref: ray.ObjectRef
    members: list[Member]
    member_refs: list[ray.ObjectRef]


@dataclass
class DriverState:
    """What a checkpoint holds of the driver (the learner saves its own state)."""

    steps: int = 0  # learner versions published
    cursor: int = 0  # next prompt id
    ledger: Ledger = field(default_factory=Ledger)
    restarts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"steps": self.steps, "cursor": self.cursor, "ledger": self.ledger.to_json(),
                "restarts": self.restarts}

    @classmethod
    def from_json(cls, d: dict) -> DriverState:
        return cls(d["steps"], d["cursor"], Ledger.from_json(d["ledger"]), d["restarts"])


class Driver:
    def __init__(self, cfg: RunConfig, world: World, run_dir: Path, metrics: Metrics) -> None:
        self.cfg, self.world, self.run_dir, self.metrics = cfg, world, run_dir, metrics
        self.state = DriverState()
        self.sampling = Sampling(**cfg.rollout.sampling.model_dump())
        self.reissue: list[int] = []  # prompt ids to hand out again before new ones
        self.rescore: list[tuple[list[Prompt], ray.ObjectRef]] = []  # batches awaiting scoring
        self.gens: dict[ray.ObjectRef, Gen] = {}
        self.scores: dict[ray.ObjectRef, Score] = {}
        self.probes: dict[ray.ObjectRef, tuple[Member, str]] = {}  # info() calls in flight
        self.buffer: list[ScoredSample] = []
        self.step_ref: ray.ObjectRef | None = None
        metrics.set_max_staleness(cfg.rollout.max_staleness)
        self.step_batch: list[ScoredSample] = []
        self.snapshots: list[tuple[int, ray.ObjectRef]] = []  # newest last
        self.base: tuple[int, ray.ObjectRef] | None = None
        self.stop_requested = False
        self.truncated = 0  # prompts cut to fit the context, since the last step
        self.t_start = time.perf_counter()

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(world.tokenizer_dir)
        self.pad_id = tokenizer.pad_token_id
        self.eval_texts = [  # "<s> text </s>", as the models were trained
            (tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])[: tokenizer.model_max_length]
            for t in world.heldout_texts[: cfg.learner.eval_texts]]
        ns = cfg.cluster.namespace

        def named(role: str) -> str:
            return f"{cfg.name}:{role}"

        self.learner = _remote(LearnerActor, cfg.learner, named("learner"), ns).remote(
            cfg, [str(d) for d in world.sft_dirs], self.pad_id)
        rm_dirs = cfg.reward.model_dirs or [str(d) for d in world.rm_dirs]
        k = cfg.reward.members or len(rm_dirs)
        self.reward_groups = [
            ActorGroup(f"reward{i}", lambda name, i=i: _remote(
                RewardMember, cfg.reward, named(name), ns).remote(
                    i, rm_dirs[i], cfg.reward.batch_size))
            for i in range(k)
        ]
        self.rollout = ActorGroup(
            "rollout",
            lambda name: _remote(RolloutWorker, cfg.rollout, named(name), ns).remote(
                name, str(world.sft_dirs[0]), cfg.rollout.engine, self.sampling, cfg.seed),
            on_start=self._send_weights,
        )
        self.combine = ray.remote(combine_scores).options(num_cpus=0)
        self.controller = start_controller(
            {"rollout": cfg.rollout.replicas, "reward": cfg.reward.replicas},
            cfg.cluster.namespace)

    # -- the loop -------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume:
            self._restore()
        self.base = ray.get(self.learner.publish_base.remote())  # LoRA only, else None
        self._reconcile()  # start the fleet (workers get the base, if any)
        self._publish(*ray.get(self.learner.publish.remote()))  # the version the run starts at
        self.bar = tqdm(total=cfg.learner.steps, initial=self.state.steps, desc="train",
                        unit="step")
        with _signals_to(self), open(self.run_dir / "metrics.jsonl", "a") as self.log:
            while self.state.steps < cfg.learner.steps and not self.stop_requested:
                self._reconcile()  # 1. fleet size = controller's desired counts
                self._fill_rollouts()  # 2. keep workers busy within the staleness budget
                self._retry_scoring()
                self._probe()  # health: notice actors Ray restarted, busy or idle
                for ref in self._wait():  # 3. route whatever finished
                    if ref in self.gens:
                        self._on_generated(ref)
                    elif ref in self.scores:
                        self._on_scored(ref)
                    elif ref in self.probes:
                        self._on_probe(ref)
                    elif ref == self.step_ref:
                        self._on_learner_step()
                        self._maybe_checkpoint()
                self._maybe_start_step()  # 4. train when a full batch is buffered
                self._report_status()  # 5. gauges + controller status
            summary = self._finish()
        self.bar.close()
        return summary

    # -- phases ---------------------------------------------------------------------------

    def _reconcile(self) -> None:
        desired, stop = ray.get(self.controller.poll.remote())
        if stop and not self.stop_requested:
            tqdm.write("stop requested (raylign stop): checkpointing, then stopping")
            self.stop_requested = True
        self.rollout.scale_to(desired["rollout"])
        for group in self.reward_groups:
            group.scale_to(desired["reward"])
        for name in self.rollout.reap() + [n for g in self.reward_groups for n in g.reap()]:
            self.metrics.forget_worker(name)
            tqdm.write(f"retired {name}")
        self.metrics.set_live_actors("rollout", len(self.rollout.active()))
        self.metrics.set_live_actors("reward", sum(len(g.active()) for g in self.reward_groups))
        self.metrics.set_desired_actors("rollout", desired["rollout"])
        self.metrics.set_desired_actors("reward", desired["reward"] * len(self.reward_groups))

    def _ahead(self) -> int:
        """Prompts that will be trained before a prompt issued now."""
        return (sum(len(g.prompts) for g in self.gens.values())
                + sum(len(s.prompts) for s in self.scores.values())
                + sum(len(p) for p, _ in self.rescore) + len(self.buffer))

    def _fill_rollouts(self) -> None:
        n, b = self.cfg.learner.samples_per_step, self.cfg.rollout.prompts_per_batch
        pending_step = int(self.step_ref is not None)
        # Steps whose batches may still take prompts issued now: within the staleness bound
        # (sampled at the published version) and before the run ends.
        steps_open = min(self.cfg.rollout.max_staleness + 1,
                         self.cfg.learner.steps - self.state.steps) - pending_step
        while True:
            room = steps_open * n - self._ahead()  # prompts that still fit in those steps
            if room <= 0:
                return
            worker = self.rollout.pick(self.cfg.rollout.max_inflight_per_worker)
            if worker is None:
                return
            self._issue(worker, self._next_prompts(min(b, room)))

    def _next_prompts(self, b: int) -> list[Prompt]:
        ids = self.reissue[:b]
        self.reissue = self.reissue[b:]
        while len(ids) < b:
            ids.append(self.state.cursor)
            self.state.ledger.issue(self.state.cursor)
            self.state.cursor += 1
        prompts = self.world.train_prompts
        return [(i, prompts[i % len(prompts)]) for i in ids]

    def _issue(self, worker: Member, prompts: list[Prompt]) -> None:
        if worker.needs_weights:  # restarted by Ray: fresh process, no weights yet
            self._send_weights(worker)
            worker.needs_weights = False
        worker.inflight += 1
        ref = worker.handle.generate.remote(prompts)
        self.gens[ref] = Gen(worker, prompts, self.snapshots[-1][0])

    def _on_generated(self, ref: ray.ObjectRef) -> None:
        gen = self.gens.pop(ref)
        gen.worker.inflight -= 1
        try:
            ray.get(ref)  # raises if the worker died mid-call
        except RayError as e:
            self._actor_failed(gen.worker, "rollout", e)
            self.reissue = sorted([p for p, _ in gen.prompts] + self.reissue)
            return
        gen.worker.succeeded()
        self.rescore.append((gen.prompts, ref))
        self._retry_scoring()

    def _retry_scoring(self) -> None:
        """Score the generated batches waiting for every member group to have a live actor."""
        while self.rescore:
            members = [g.pick(cap=10**9) for g in self.reward_groups]
            if any(m is None for m in members):
                return  # a member is backing off after a failure; try next turn
            prompts, samples_ref = self.rescore.pop(0)
            self._score(prompts, samples_ref, members)

    def _score(self, prompts: list[Prompt], samples_ref: ray.ObjectRef,
               members: list[Member]) -> None:
        member_refs = []
        for m in members:
            m.inflight += 1
            member_refs.append(m.handle.score.remote(samples_ref))
        rc = self.cfg.reward
        ref = self.combine.remote(
            samples_ref, *member_refs, aggregation=rc.aggregation, uwo_lambda=rc.uwo_lambda,
            ddof=rc.ddof, score_clip=rc.score_clip, with_gold=rc.gold_eval,
            gold_in_reward=rc.gold_in_reward)
        self.scores[ref] = Score(prompts, samples_ref, members, member_refs)

    def _on_scored(self, ref: ray.ObjectRef) -> None:
        job = self.scores.pop(ref)
        for m in job.members:
            m.inflight -= 1
        try:
            scored: list[ScoredSample] = ray.get(ref)
        except RayError as e:
            for m, mref in zip(job.members, job.member_refs):
                try:
                    ray.get(mref)
                except RayError:
                    self._actor_failed(m, "reward", e)
            self.rescore.append((job.prompts, job.samples_ref))
            return
        for m in job.members:
            m.succeeded()
        version = self.snapshots[-1][0]
        for s in scored:
            pid = s.sample.prompt_id
            if not self.state.ledger.is_pending(pid):  # a late duplicate of re-issued work
                self.metrics.record_dropped("duplicate")
            elif not s.is_finite:
                self._drop(pid, "nonfinite_reward")
                self.metrics.record_nonfinite("reward")
            elif version - s.sample.policy_version > self.cfg.rollout.max_staleness:
                self._drop(pid, "stale")
            else:
                self.buffer.append(s)
        self.truncated += sum(s.sample.prompt_truncated for s in scored)
        worker = scored[0].sample.worker_id if scored else "?"
        self.metrics.record_samples(worker, len(scored),
                                    sum(len(s.sample.response_tokens) for s in scored))

    def _maybe_start_step(self) -> None:
        n, s = self.cfg.learner.samples_per_step, self.cfg.rollout.max_staleness
        if self.step_ref is not None or len(self.buffer) < n:
            return
        if self.state.steps >= self.cfg.learner.steps:
            return
        version = self.snapshots[-1][0]
        fresh = []
        for x in self.buffer:  # buffered while newer versions were published
            if version - x.sample.policy_version > s:
                self._drop(x.sample.prompt_id, "stale")
            else:
                fresh.append(x)
        self.buffer = fresh
        if len(self.buffer) < n:
            return
        self.buffer.sort(key=lambda x: x.sample.prompt_id)
        self.step_batch, self.buffer = self.buffer[:n], self.buffer[n:]
        self.metrics.observe_staleness([version - x.sample.policy_version for x in self.step_batch])
        self.step_ref = self.learner.step.remote(self.step_batch)

    def _on_learner_step(self) -> StepStats:
        """Close the step's prompts in the ledger, publish its weights, log its figures."""
        ref, self.step_ref = self.step_ref, None
        try:
            stats, snap_ref, nbytes = ray.get(ref)
        except RayError as e:
            raise RunFailed(f"the learner failed: {e}; resume with --resume") from e
        batch, self.step_batch = self.step_batch, []
        for s in batch:
            if stats.skipped:
                self._drop(s.sample.prompt_id, "skipped_step")
            else:
                self.state.ledger.trained(s.sample.prompt_id)
        if not stats.skipped:
            self.metrics.record_trained(len(batch))
            self._publish(stats.policy_version, snap_ref, nbytes)
            self.state.steps = stats.step
        stats.values.update(self._batch_figures(batch))
        every = self.cfg.learner.eval_every
        if every and not stats.skipped and stats.step % every == 0:
            stats.values.update(ray.get(self.learner.evaluate.remote(self.eval_texts)))
        self._log_step(stats)
        return stats

    def _drain_learner(self) -> None:
        """Finish the learner step in flight, so a checkpoint sees a step boundary."""
        if self.step_ref is not None and ray.wait([self.step_ref], timeout=600)[0]:
            self._on_learner_step()

    def _publish(self, version: int, snap_ref: ray.ObjectRef, nbytes: int) -> None:
        """Hand the one ref to every worker; keep only the last few versions referenced."""
        t0 = time.perf_counter()
        self.snapshots = [*self.snapshots, (version, snap_ref)][-self.cfg.broadcast.keep_versions:]
        workers = self.rollout.active()
        acks = [m.handle.set_weights.remote(version, snap_ref) for m in workers]
        done, _ = ray.wait(acks, num_returns=len(acks), timeout=60)  # acked, not fire-and-forget
        self.metrics.record_broadcast(time.perf_counter() - t0, nbytes, version)
        for member, ack in zip(workers, acks):
            if ack in done:
                with contextlib.suppress(RayError):  # a dead worker is handled by its next call
                    self.metrics.set_policy_version(member.name, ray.get(ack))
        self.metrics.set_policy_version("learner", version)

    def _send_weights(self, worker: Member) -> None:
        """A new or restarted worker: (under LoRA the base weights, then) the current version.

        Ray runs these before any generate() submitted later to the same worker.
        """
        if self.base is not None:
            worker.handle.set_weights.remote(*self.base)
        if self.snapshots:  # else the first publish reaches every worker
            worker.handle.set_weights.remote(*self.snapshots[-1])

    # -- faults, drops, bookkeeping -------------------------------------------------------

    def _probe(self) -> None:
        """Ask every member for its pid about once a second (queued behind its work)."""
        groups = [(self.rollout, "rollout")] + [(g, "reward") for g in self.reward_groups]
        for group, role in groups:
            for member in group.due_for_probe(PROBE_EVERY_S):
                member.probing, member.probed_at = True, time.monotonic()
                self.probes[member.handle.info.remote()] = (member, role)

    def _on_probe(self, ref: ray.ObjectRef) -> None:
        member, role = self.probes.pop(ref)
        member.probing = False
        try:
            pid = ray.get(ref)["pid"]
        except RayError as e:  # dead or restarting: back off; the next probe will tell
            self._actor_failed(member, role, e)
            return
        if member.probed(pid):
            self.state.restarts[role] = self.state.restarts.get(role, 0) + 1
            self.metrics.record_restart(role)
            tqdm.write(f"{member.name} was restarted by Ray (pid {pid})")

    def _actor_failed(self, member: Member, role: str, error: Exception) -> None:
        if member.failed():  # a new fault (later ones are the same restart still under way)
            tqdm.write(f"{member.name} failed ({type(error).__name__}); its work is re-issued")
        if member.failures > self.cfg.checkpoint.max_actor_failures:
            self._drain_learner()
            self._checkpoint()
            raise RunFailed(f"{member.name} failed {member.failures} times in a row: {error}")

    def _drop(self, prompt_id: int, reason: str) -> None:
        self.state.ledger.dropped(prompt_id, reason)
        self.metrics.record_dropped(reason)

    def _wait(self) -> list[ray.ObjectRef]:
        refs = [*self.gens, *self.scores, *self.probes, *([self.step_ref] if self.step_ref else [])]
        if not refs:
            time.sleep(0.05)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        if ready:  # every ref that is ready, so none waits behind busier ones
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def _batch_figures(self, batch: list[ScoredSample]) -> dict[str, float]:
        k = len(batch[0].member_scores)
        members = [statistics.fmean(s.member_scores[i] for s in batch) for i in range(k)]
        spread = [statistics.pstdev(s.member_scores) if k > 1 else 0.0 for s in batch]
        golds = [s.gold for s in batch if s.gold is not None]
        out = {f"reward/member{i}": m for i, m in enumerate(members)}
        out["reward/proxy"] = statistics.fmean(s.reward for s in batch)
        out["reward/disagreement"] = statistics.fmean(spread)
        if golds:
            out["reward/gold"] = statistics.fmean(golds)
        out["rollout/response_len"] = statistics.fmean(len(s.sample.response_tokens)
                                                       for s in batch)
        version = self.snapshots[-1][0] - 1
        stale = [version - s.sample.policy_version for s in batch]
        out["rollout/staleness_mean"] = statistics.fmean(stale)
        out["rollout/staleness_max"] = float(max(stale))
        # The gauge's windowed rate, not "since the last step": with max_staleness > 0 a step's
        # batch is often scored before the step before it ends, and a per-step figure reads 0.
        out["rollout/samples_per_s"] = self.metrics.sample_rate()
        out["rollout/prompts_truncated"] = float(self.truncated)
        self.truncated = 0
        self.metrics.record_rewards(members, out["reward/proxy"], out.get("reward/gold"),
                                    out["reward/disagreement"])
        return out

    def _log_step(self, stats: StepStats) -> None:
        v = stats.values
        self.metrics.record_step(stats.step, v, v.get("time/learner_step_s", 0.0),
                                 stats.reset, stats.skipped)
        record = {"step": stats.step, "version": stats.policy_version, "reset": stats.reset,
                  "skipped": stats.skipped, "time": time.time(), **v}
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        self.bar.update(stats.step - self.bar.n)
        self.bar.set_postfix(proxy=f"{v['reward/proxy']:.3f}",
                        gold=f"{v.get('reward/gold', math.nan):.3f}",
                        kl=f"{v.get('kl/init_k1', math.nan):.3f}",
                        sps=f"{v['rollout/samples_per_s']:.1f}")

    def _report_status(self) -> None:
        self.metrics.set_queue_depth("rollout", sum(len(g.prompts) for g in self.gens.values()))
        self.metrics.set_queue_depth("reward", sum(len(s.prompts) for s in self.scores.values()))
        self.metrics.set_queue_depth("train", len(self.buffer))
        self.controller.report.remote({
            "version": self.snapshots[-1][0], "steps": self.state.steps,
            "rollout_workers": sorted(self.rollout.members),
            "queues": {"rollout": len(self.gens), "reward": len(self.scores),
                       "train": len(self.buffer)},
            "ledger": self.state.ledger.counts(),
        })

    # -- checkpoints and the end ----------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint.every
        if every and self.state.steps % every == 0:
            self._checkpoint()

    def _checkpoint(self) -> Path:
        """Save at a step boundary; prompts in flight are saved as pending and re-issued."""
        return save_checkpoint(
            self.run_dir, self.state.steps, self.state.to_json(),
            lambda d: ray.get(self.learner.save.remote(str(d))), self.cfg.checkpoint.keep)

    def _restore(self) -> None:
        ckpt = latest_valid(self.run_dir)
        if ckpt is None:
            raise RunFailed(f"--resume: no valid checkpoint under {self.run_dir / 'checkpoints'}")
        self.state = DriverState.from_json(json.loads((ckpt / "driver.json").read_text()))
        ray.get(self.learner.load.remote(str(ckpt / "learner")))
        self.state.ledger.check(allow_pending=True)
        self.reissue = self.state.ledger.pending()
        tqdm.write(f"resumed from {ckpt} at step {self.state.steps}")

    def _finish(self) -> dict:
        interrupted = self.stop_requested
        self._drain_learner()
        # Let calls in flight finish (briefly), so actors are killed idle and the last
        # probes are counted. (No ray.cancel: in Ray 2.60, cancelling an actor task whose
        # argument is being inlined can crash the driver, ray-project/ray#56123.)
        in_flight = [*self.gens, *self.scores, *self.probes]
        done, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=10)
        for ref in done:
            if ref in self.probes:
                self._on_probe(ref)
        if interrupted:
            self.gens.clear()
            self.scores.clear()
            self.rescore.clear()
            self.buffer.clear()  # pending in the checkpoint; re-issued on resume
            self.reissue.clear()
            ckpt = self._checkpoint()
            counts = self.state.ledger.check(allow_pending=True)
        else:
            for pid in self.state.ledger.pending():
                self._drop(pid, "run_end")
            counts = self.state.ledger.check()
            ckpt = self._checkpoint()
        summary = {"steps": self.state.steps, "interrupted": interrupted,
                   "checkpoint": str(ckpt), "ledger": counts, "restarts": self.state.restarts,
                   "seconds": time.perf_counter() - self.t_start}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def shutdown(self) -> None:
        self.rollout.shutdown()
        for g in self.reward_groups:
            g.shutdown()
        for actor in (self.learner, self.controller):
            ray.kill(actor, no_restart=True)


class _signals_to:
    """SIGINT/SIGTERM ask the driver to checkpoint and stop at the next turn of the loop."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.saved: dict = {}

    def _handle(self, signum, _frame) -> None:
        tqdm.write(f"signal {signum}: checkpointing, then stopping")
        self.driver.stop_requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def train(cfg: RunConfig, *, resume: bool = False) -> dict:
    """Build/load the world, start Ray (embedded unless cluster.address), run, report."""
    from services.report import write_report

    world = prepare(cfg.task)
    run_dir = cfg.path
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    metrics = Metrics()
    if cfg.metrics.enabled:
        port = metrics.serve(cfg.metrics.host, cfg.metrics.port)
        print(f"metrics: http://{cfg.metrics.host}:{port}/metrics", flush=True)
        (run_dir / "metrics_port").write_text(str(port))
    started = init_ray(cfg)
    driver = None
    try:
        driver = Driver(cfg, world, run_dir, metrics)
        summary = driver.run(resume=resume)
    finally:
        if driver is not None:
            driver.shutdown()
        if started:
            ray.shutdown()
        metrics.stop()
    summary["plots"] = write_report(run_dir)
    return summary
