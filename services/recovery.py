"""What the driver does when something fails, and its checkpoints (a mixin of `Driver`).

An actor whose call outlives its deadline (`deadlines.*`), or that failed
`checkpoint.max_actor_failures` times in a row, is replaced by a new one (`_replace`); past its
role's `max_replacements` the run stops with a checkpoint (`_stop`). A learner that lost its
state (killed, restarted by Ray, hung) is restored from the newest valid checkpoint and the
driver rewinds to it (`_recover_learner`): what was trained after it is issued and trained
again. Checkpoints hold the learner's files (written by the learner itself), the driver state,
the config and the metrics rows, on RUN_DIR or `checkpoint.storage`.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayError
from tqdm import tqdm

from actors.fleet import Member
from services.alarm import OK, Alarm
from services.checkpoint import (
    CheckpointError,
    DriverState,
    latest_valid,
    learner_source,
    read_driver_state,
    read_file,
    save_checkpoint,
)
from services.errors import RunFailed


class Recovery:
    """Driver methods for faults and checkpoints; they use the driver's state (cfg, state,
    learners, rollout, rewards, gens, buffer, step, health, weights, report, metrics)."""

    def _replace(self, member: Member, role: str, reason: str) -> None:
        """Kill `member` and start a new actor in its place (its work is issued again); the
        learner's replacement is restored from the newest checkpoint. Past the role's
        max_replacements the run stops."""
        replaced = self.state.replacements
        limit = getattr(self.cfg, role).max_replacements
        if replaced.get(role, 0) >= limit:
            what = ("did not answer within its deadline (hung, or no node has its resources)"
                    if reason == "timeout"
                    else f"failed {member.failures} times in a row")
            self._stop(f"{member.name} {what}, and {role} actors were replaced {limit} times "
                       f"already ({role}.max_replacements)", checkpoint=role != "learner")
        replaced[role] = replaced.get(role, 0) + 1
        self.metrics.record_replacement(role, reason)
        self.health.forget(member)
        tqdm.write(f"{member.name}: {reason}; replacing it")
        if role == "rollout":
            for ref, gen in [(r, g) for r, g in self.gens.items() if g.worker is member]:
                del self.gens[ref]
                self.flow.requeue(p for p, _ in gen.prompts)
            self.weights.forget(member)
            self.rollout.replace(member)
        elif role == "reward":
            self.rewards.replace(member)
        else:
            self.learners.replace(member)
            self._recover_learner(f"was replaced ({reason})")

    def _on_restart(self, member: Member, role: str) -> None:
        if role == "learner":  # a fresh process: the initial weights, version 0
            self._recover_learner("was restarted by Ray")

    def _recover_learner(self, why: str, count_restart: bool = False) -> None:
        """The learner lost its state: load the newest valid checkpoint into it and rewind
        the driver to that step; work issued after it is dropped and issued again."""
        if count_restart:
            self.state.restarts["learner"] = self.state.restarts.get("learner", 0) + 1
            self.metrics.record_restart("learner")
        ckpt = latest_valid(self.storage)
        if ckpt is None:
            raise RunFailed(f"the learner {why}, and there is no checkpoint to restore it "
                            "from (checkpoint.every: 0?); start the run again")
        tqdm.write(f"the learner {why}: restoring {ckpt}")
        try:
            self._load_checkpoint(ckpt)
        except RayError as e:  # dead for good (max_restarts spent), hung or not placed
            self._replace(self.learner_member, "learner",
                          "timeout" if isinstance(e, GetTimeoutError) else "failures")
            return
        self.step, self.buffer = None, []
        self.gens.clear()
        self.rewards.clear()
        for member in [*self.rollout.members.values(), *self.rewards.members()]:
            member.inflight = 0  # their calls finish unheard; new ones queue behind them
        learner = self.learner_member
        self.health.forget(learner)  # its pid now is the one that holds the checkpoint
        learner.inflight, learner.probing = 0, False
        learner.pid = self._get(self.learner.info.remote())["pid"]
        self.report.rewind(self.state.steps)
        self._publish(*self._get(self.learner.publish.remote()))

    def _enforce_deadlines(self) -> None:
        """Replace every actor with a call past its deadline (`deadlines.*`)."""
        now, d = time.monotonic(), self.deadlines
        late = [r for r, g in self.gens.items() if now - g.started > d.generate_s]
        unfinished = set(ray.wait(late, num_returns=len(late), timeout=0)[1]) if late else ()
        for member in {g.worker.name: g.worker for r, g in self.gens.items()
                       if r in unfinished}.values():
            self._replace(member, "rollout", "timeout")
        for member in self.rewards.overdue(now - d.score_s):
            self._replace(member, "reward", "timeout")
        for member, role in self.health.overdue(now - d.probe_s):
            self._replace(member, role, "timeout")
        for member in self.weights.overdue(now):  # no ack of new weights within publish_s
            if member.name in self.rollout.members:
                self._replace(member, "rollout", "timeout")
        if self.step is not None and now - self.step_started > d.step_s:
            self._replace(self.learner_member, "learner", "timeout")
        for k in self.rewards.unplaced(now - d.score_s):
            self._stop(f"reward member {k} has had no replica that answers for "
                       f"{d.score_s:g} s (deadlines.score_s): its node is gone, or no node "
                       "has its resources", checkpoint=True)

    def _stop(self, why: str, checkpoint: bool) -> None:
        """Give up: a checkpoint at the step boundary now (if the learner answers), then
        RunFailed naming the newest valid checkpoint (`--resume` continues from it)."""
        saved = self._final_checkpoint() if checkpoint else latest_valid(self.storage)
        raise RunFailed(f"{why}; the newest checkpoint is {saved}")

    def _publish(self, version: int, snap_ref: ray.ObjectRef, nbytes: int) -> None:
        """Hand the new version to every worker; their acks arrive in the loop."""
        self.weights.publish(self.rollout.active(), version, snap_ref, nbytes)

    def _get(self, ref: ray.ObjectRef):
        """A learner call's result, within the learner's deadline (deadlines.step_s)."""
        return ray.get(ref, timeout=self.deadlines.step_s)

    # -- checkpoints ----------------------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint.every
        if every and self.state.steps % every == 0:
            try:
                self._checkpoint()
            except CheckpointError as e:  # e.g. a full disk: the earlier ones are intact
                self.metrics.record_checkpoint_failure()
                tqdm.write(f"{e}; carrying on")

    def _checkpoint(self) -> Path | str:
        """Save at a step boundary; prompts in flight are saved as pending and re-issued.
        The learner writes its own files; the run's config and metrics rows go along."""
        log = self.run_dir / "metrics.jsonl"
        extra = {"config.json": (self.run_dir / "config.json").read_bytes(),
                 "metrics.jsonl": log.read_bytes() if log.is_file() else b""}
        state = self.state
        protect = ([] if self.cfg.alarm.action == "none" else
                   [s for s in (state.candidate, state.recommended) if s is not None])
        ckpt = save_checkpoint(
            self.storage, state.steps, self._driver_state(),
            lambda d: self._get(self.learner.save.remote(str(d))), self.cfg.checkpoint.keep,
            extra, protect)
        if state.alarm.state == OK:  # (never again once it fired: the alarm is latched)
            state.candidate = state.steps  # the newest checkpoint while the alarm is ok
        return ckpt

    def _driver_state(self) -> dict:
        """The driver's checkpointed state: steps, the flow's ledger and cursor, counts."""
        return self.state.to_json(self.flow.ledger, self.flow.cursor)

    def _restore(self) -> None:
        ckpt = latest_valid(self.storage)
        if ckpt is None:
            raise RunFailed(f"--resume: no valid checkpoint under {self.storage}/checkpoints")
        self.state.restarts.clear()  # counted again from the checkpoint's
        self._load_checkpoint(ckpt)
        log = self.run_dir / "metrics.jsonl"
        if not log.is_file():  # a fresh node: the rows come with the checkpoint
            log.write_bytes(read_file(ckpt, "metrics.jsonl") or b"")
        tqdm.write(f"resumed from {ckpt} at step {self.state.steps}")

    def _load_checkpoint(self, ckpt: Path | str) -> None:
        """The learner and the driver's state as of `ckpt`; its pending prompts are issued
        again. Restart and replacement counts carry on from the run's."""
        self._get(self.learner.load.remote(*learner_source(ckpt)))
        saved, ledger, cursor = DriverState.from_json(read_driver_state(ckpt))
        for mine, theirs in ((self.state.restarts, saved.restarts),
                             (self.state.replacements, saved.replacements)):
            for role, n in theirs.items():
                mine[role] = max(mine.get(role, 0), n)
        saved.restarts, saved.replacements = self.state.restarts, self.state.replacements
        saved.alarm = saved.alarm or Alarm(**self.cfg.alarm.params())  # saved without one
        self.state = saved
        self.flow.rewind(ledger, cursor)  # checked; its pending ids are queued again

    def _drain_learner(self) -> bool:
        """Finish the learner step in flight (within its deadline), so a checkpoint sees a
        step boundary; False if it hangs."""
        if self.step is None:
            return True
        left = self.deadlines.step_s - (time.monotonic() - self.step_started)
        if not ray.wait([self.step[0]], timeout=max(0.0, left))[0]:
            return False
        self._on_learner_step()
        return True

    def _final_checkpoint(self) -> Path | None:
        """A checkpoint at the step boundary now, if the learner answers within its deadline;
        else (or if it cannot be written) the newest valid one stays the run's last."""
        try:
            if self._drain_learner():
                return self._checkpoint()
            tqdm.write("the learner step in flight is past its deadline: no new checkpoint")
        except CheckpointError as e:
            self.metrics.record_checkpoint_failure()
            tqdm.write(str(e))
        return latest_valid(self.storage)
